"""Core operations against literal references and a peer (OpenCV's Gaussian blur)."""

import numpy as np
import pytest
import torch

from faithmap.core import blur_baseline, gaussian_blur, phi, resolve_targets, tv, upsample
from faithmap.core.scores import needs_prediction
from faithmap.core.perturb import blur_params, make_baseline
from faithmap.errors import FaithmapError


def test_phi_literal():
    g = torch.Generator().manual_seed(0)
    img, base = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    m = torch.rand(2, 1, 5, 5, generator=g)
    expected = torch.empty_like(img)
    for b in range(2):
        for c in range(3):
            for i in range(5):
                for j in range(5):
                    expected[b, c, i, j] = img[b, c, i, j] * m[b, 0, i, j] + base[b, c, i, j] * (1 - m[b, 0, i, j])
    assert torch.allclose(phi(img, base, m), expected, atol=1e-6)


def test_blur_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    ref = cv2.GaussianBlur(img.astype(np.float32), (51, 51), sigmaX=50)
    ours = gaussian_blur(torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None], 51, 50.0)[0]
    assert np.allclose(ours.permute(1, 2, 0).numpy(), ref, atol=1e-2)


def test_blur_literal_small():
    # literal 2-D convolution with reflect-101 borders
    x = torch.arange(49, dtype=torch.float64).view(1, 1, 7, 7)
    k, s = 5, 2.0
    w1 = torch.exp(-((torch.arange(k) - 2.0) ** 2) / (2 * s * s))
    w1 = w1 / w1.sum()
    def refl(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
    out = torch.zeros(7, 7, dtype=torch.float64)
    for i in range(7):
        for j in range(7):
            out[i, j] = sum(w1[a] * w1[b] * x[0, 0, refl(i + a - 2, 7), refl(j + b - 2, 7)]
                            for a in range(k) for b in range(k))
    assert torch.allclose(gaussian_blur(x, k, s)[0, 0], out, atol=1e-9)


def test_blur_params_and_baseline_commutes_with_normalisation():
    assert blur_params(224) == (51, 50.0) and blur_params(600) == (151, 150.0) and blur_params(900) == (201, 200.0)
    g = torch.Generator().manual_seed(1)
    pix = torch.rand(1, 3, 64, 64, generator=g)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(blur_baseline((pix - mean) / std), (blur_baseline(pix) - mean) / std, atol=1e-5)


def test_tv_literal():
    g = torch.Generator().manual_seed(2)
    m = torch.rand(2, 1, 6, 5, generator=g)
    for b in range(2):
        v = sum((m[b, 0, i + 1, j] - m[b, 0, i, j]) ** 2 for i in range(5) for j in range(5)) / 25
        h = sum((m[b, 0, i, j + 1] - m[b, 0, i, j]) ** 2 for i in range(6) for j in range(4)) / 24
        assert torch.isclose(tv(m)[b], v + h, atol=1e-6)
    assert torch.equal(tv(torch.ones(1, 1, 4, 4)), torch.zeros(1))


def test_upsample_align_corners():
    m = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    up = upsample(m, 3)
    assert torch.allclose(up[0, 0], torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]))
    assert torch.equal(upsample(torch.ones(1, 1, 7, 7), 224), torch.ones(1, 1, 224, 224))


def test_baselines():
    x = torch.zeros(1, 3, 4, 4)
    mean = torch.full((1, 3, 1, 1), 0.5)
    std = torch.full((1, 3, 1, 1), 0.5)
    assert torch.allclose(make_baseline("black", x, mean, std), torch.full_like(x, -1.0))
    with pytest.raises(FaithmapError):
        make_baseline("purple", x)


def test_targets():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    names = ["cat", "dog", "hot dog"]
    assert resolve_targets(logits, None).tolist() == [1, 0]
    assert resolve_targets(logits, "top1").tolist() == [1, 0]
    assert [needs_prediction(t) for t in (None, " Top-1", "pred", 2, "cat", ["cat", "top1"], ["cat", 1])] == \
        [True, True, True, False, False, True, False]
    assert resolve_targets(logits, 2).tolist() == [2, 2]
    assert resolve_targets(logits, "Hot Dog", names).tolist() == [2, 2]
    assert resolve_targets(logits, ["cat", 1], names).tolist() == [0, 1]
    with pytest.raises(FaithmapError, match="out of range"):
        resolve_targets(logits, 3)
    assert resolve_targets(logits, "dog", names).tolist() == [1, 1]  # exact match wins
    with pytest.raises(FaithmapError, match="several classes"):
        resolve_targets(logits, "do", names)
    with pytest.raises(FaithmapError, match="unknown target"):
        resolve_targets(logits, "zebra", names)


def test_keep_freed_memory_keeps_large_blocks_in_the_heap():
    """After ``keep_freed_memory`` a 64 MiB tensor comes from glibc's heap (not a fresh mmap) and
    its memory stays there after it is freed, ready for the next allocation."""
    import ctypes
    import sys

    import faithmap

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc without mallinfo2")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    assert faithmap.keep_freed_memory() is True
    assert faithmap.keep_freed_memory() is True  # idempotent
    before = libc.mallinfo2()
    t = torch.ones(16 * 2**20)  # 64 MiB
    during = libc.mallinfo2()
    assert during.hblkhd - before.hblkhd < 2**20  # not an mmap'd block
    assert during.uordblks - before.uordblks >= 64 * 2**20
    del t
    after = libc.mallinfo2()
    assert after.arena >= 64 * 2**20  # the freed block stays in the heap for reuse
    assert after.fordblks - during.fordblks >= 60 * 2**20


def test_explain_spends_a_forward_pass_only_on_predicted_targets(patch_model, patch_input):
    """Explicit targets of a model with class names cost no model pass before the method; a top-1
    target costs exactly one image per input, and its logits are returned."""
    import faithmap
    from faithmap.models import wrap

    clf = wrap(patch_model.net, mean=(0.0,) * 3, std=(1.0,) * 3, input_size=32, class_names=["patch", "other"])
    x = patch_input.repeat(2, 1, 1, 1)
    start = clf.counter.images
    e = faithmap.explain(clf, x, "gradcam", target="patch")
    assert clf.counter.images - start == e.counts["images"] == 2
    assert "logits" not in e.extras and e.target.tolist() == [0, 0]
    start = clf.counter.images
    e2 = faithmap.explain(clf, x, "gradcam", target=None)
    assert clf.counter.images - start == e2.counts["images"] + 2
    torch.testing.assert_close(e2.extras["logits"], clf.net(x))
    torch.testing.assert_close(e2.saliency, e.saliency)  # the patch class is the top-1 class here
    with pytest.raises(FaithmapError, match="out of range"):
        faithmap.explain(clf, x, "gradcam", target=5)


def test_swap_gives_exactly_what_where_gives():
    """``swap`` (torch.lerp with 0/1 weights) returns the same bits as ``torch.where`` for finite
    values of any magnitude, with bool masks and with the 0/1 floats of ``below``."""
    from faithmap.core.perturb import below, swap

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        tiny = torch.finfo(dtype).tiny
        scale = torch.tensor([1e-30, tiny / 4, 1.0, 3e7, torch.finfo(dtype).max / 4], dtype=dtype)
        x = torch.randn(3, 9, 11, generator=g, dtype=dtype) * scale[torch.randint(0, 5, (3, 9, 11), generator=g)]
        base = torch.randn(3, 9, 11, generator=g, dtype=dtype) * scale[torch.randint(0, 5, (3, 9, 11), generator=g)]
        rank = torch.randperm(99, generator=g).view(1, 9, 11)
        count = torch.arange(0, 100, 7).view(-1, 1, 1, 1)
        expect = torch.where(rank < count, base, x)
        assert torch.equal(swap(x, base, rank < count), expect)
        weights = below(rank.to(dtype), count.to(dtype))
        assert set(weights.unique().tolist()) <= {0.0, 1.0}
        out = torch.empty_like(expect)
        swap(x, base, weights, out=out)
        assert torch.equal(out, expect)


def test_below_is_the_comparison_up_to_float32_exact_integers():
    from faithmap.core.perturb import below

    top = 2 ** 24
    rank = torch.tensor([0, 1, top - 2, top - 1, top], dtype=torch.long)
    count = torch.tensor([0, 1, 2, top - 1, top], dtype=torch.long).view(-1, 1)
    got = below(rank.float(), count.float())
    assert torch.equal(got, (rank < count).float())
