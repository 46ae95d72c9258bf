"""``python -m bench cams``: the CAM engine against pytorch-grad-cam, in the same run.

On the default model (EfficientNet-Lite0, layer ``features.17``) and the sample photos: each
method of the Grad-CAM family on one photo and on a batch of 16 (the photos repeated), ours and
pytorch-grad-cam's, plus our batch against 16 single calls; Score-CAM and Ablation-CAM on one
photo each (pytorch-grad-cam spends minutes per photo on them). Seconds are wall-clock times of the
whole public call (``faithmap.explain``; pytorch-grad-cam's constructor and ``__call__``, which
also resizes its map); model images are the images sent through the network (counted by a hook on
it, for both; both are given the targets, so neither needs a pass to predict them; "of which
method s" is the method's own time, ``Explanation.seconds``). Both get the same network
and the same channels-last inputs; ours and the peer's calls alternate, and the best of ``--repeats``
runs (3 x ``--repeats`` for one photo) is kept. ``--param`` options:
``methods=gradcam,scorecam`` (a subset), ``batch=16``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np
import torch

import faithmap
from faithmap.errors import FaithmapError
from faithmap.models import get_layer

from .common import Options, bench, dump, gather_images, load_model, machine, table

GRAD_FAMILY = {  # our method: (pytorch-grad-cam class, our parameters for the peer's variant)
    "gradcam": ("GradCAM", {}),
    "gradcam++": ("GradCAMPlusPlus", {"variant": "pytorch-grad-cam"}),
    "xgradcam": ("XGradCAM", {"variant": "pytorch-grad-cam"}),
    "layercam": ("LayerCAM", {}),
    "hirescam": ("HiResCAM", {}),
    "wgradcam": ("GradCAM", {}),  # no peer: timed against the peer's Grad-CAM, agreement not checked
}
SCORING = {"scorecam": ("ScoreCAM", {"variant": "pytorch-grad-cam"}),
           "ablationcam": ("AblationCAM", {"variant": "pytorch-grad-cam"})}


@contextlib.contextmanager
def counting(net: torch.nn.Module):
    """Count the images sent through ``net`` (and those with autograd on) while the block runs."""
    counts = {"images": 0, "grad_images": 0}

    def pre(module, args):
        n = int(args[0].shape[0])
        counts["images"] += n
        if torch.is_grad_enabled():
            counts["grad_images"] += n

    handle = net.register_forward_pre_hook(pre)
    try:
        yield counts
    finally:
        handle.remove()


def run_peer(cls_name: str, net, layer, x: torch.Tensor, target: torch.Tensor) -> tuple[float, dict, np.ndarray]:
    """Seconds, model images and the output of one pytorch-grad-cam call."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in target]
    with counting(net) as counts:
        start = time.perf_counter()
        cam = getattr(pgc, cls_name)(model=net, target_layers=[layer])
        try:
            out = cam(x, targets)
        finally:
            cam.activations_and_grads.release()
        seconds = time.perf_counter() - start
    for p in net.parameters():  # the peer leaves parameter gradients behind
        p.grad = None
    return seconds, dict(counts), out


def run_ours(model, method: str, x: torch.Tensor, target: torch.Tensor, params: dict) -> tuple[float, dict, object]:
    """Seconds and model images of one ``faithmap.explain`` call, and its explanation."""
    with counting(model.net) as counts:
        start = time.perf_counter()
        e = faithmap.explain(model, x, method, target=target, **params)
        seconds = time.perf_counter() - start
    return seconds, dict(counts), e


def peer_style(e, size) -> np.ndarray:
    """Our layer-grid maps through pytorch-grad-cam's own post-processing (resize, min-max)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(e.saliency.detach().cpu().numpy(), (size[1], size[0])))


def best(fn, repeats: int):
    """The fastest of ``repeats`` runs of ``fn() -> (seconds, ...)``."""
    out = None
    for _ in range(max(1, repeats)):
        r = fn()
        if out is None or r[0] < out[0]:
            out = r
    return out


def network_batch_gain(net, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Seconds of the bare network's no-grad forward on ``batch`` at once and one image at a time
    (best of ``repeats``): their ratio bounds what any method gains from batching when both ways
    send the same images through the network."""
    def once(one_by_one: bool):
        t = time.perf_counter()
        with torch.no_grad():
            if one_by_one:
                for i in range(batch.shape[0]):
                    net(batch[i:i + 1])
            else:
                net(batch)
        return (time.perf_counter() - t,)

    with torch.no_grad():
        net(batch[:1])
    together = best(lambda: once(False), repeats)[0]
    apart = best(lambda: once(True), repeats)[0]
    return together, apart


COLUMNS = [("method", "method", ""), ("setting", "setting", ""), ("ours_s", "ours s", ".2f"),
           ("method_s", "of which method s", ".2f"),
           ("ours_images", "ours model images", ".0f"), ("peer_s", "pytorch-grad-cam s", ".2f"),
           ("peer_images", "peer model images", ".0f"), ("ratio", "time ratio ours/peer", ".2f"),
           ("agree", "max |diff| vs peer", ".1e")]


@bench("cams")
def bench_cams(opts: Options) -> int:
    """The CAM engine vs pytorch-grad-cam: seconds, model images, agreement of the maps."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise FaithmapError("bench cams needs the grad-cam package (pip install 'faithmap[test]')") from None
    load_start = os.getloadavg()[0]
    extra_opts = dict(opts.params)
    wanted = str(extra_opts.pop("methods", ",".join([*GRAD_FAMILY, *SCORING]))).split(",")
    n_batch = int(extra_opts.pop("batch", 16))
    unknown = [m for m in wanted if m not in GRAD_FAMILY and m not in SCORING]
    if unknown or extra_opts:
        raise FaithmapError(f"bench cams: unknown method or option {(unknown or list(extra_opts))[0]!r}")
    model = load_model(opts)
    net = model.net
    layer_name = model.cam_layer
    layer = get_layer(net, layer_name)
    images = gather_images(opts)
    photos = model.preprocess([arr for _, arr in images])
    reps = -(-n_batch // photos.shape[0])
    batch = photos.repeat(reps, 1, 1, 1)[:n_batch].contiguous(memory_format=torch.channels_last)
    one = batch[:1]
    with torch.no_grad():
        targets = model(batch).argmax(1)
    extra = {"batch_size": opts.batch_size} if opts.batch_size else {}
    size = tuple(batch.shape[-2:])
    rows = []

    def agree(e, out):
        return float(np.abs(peer_style(e, size) - out).max())

    for method in [m for m in wanted if m in GRAD_FAMILY]:
        peer_cls, variant = GRAD_FAMILY[method]
        params = {**variant, **extra}
        checked = method != "wgradcam"
        for label, x, t, reps in (("1 photo", one, targets[:1], 3 * opts.repeats),
                                  (f"batch of {n_batch}", batch, targets, opts.repeats)):
            ours, peer = None, None
            for _ in range(max(1, reps)):  # alternate, so that both meet the same machine load
                r = run_ours(model, method, x, t, params)
                ours = r if ours is None or r[0] < ours[0] else ours
                r = run_peer(peer_cls, net, layer, x, t)
                peer = r if peer is None or r[0] < peer[0] else peer
            (o_s, o_c, e), (p_s, p_c, out) = ours, peer
            rows.append({"method": method if checked else f"{method} (peer: GradCAM)", "setting": label,
                         "ours_s": o_s, "method_s": e.seconds, "ours_images": o_c["images"], "peer_s": p_s,
                         "peer_images": p_c["images"], "ratio": o_s / p_s, "agree": agree(e, out) if checked else ""})
            print(f"{method} {label}: ours {o_s:.2f} s, peer {p_s:.2f} s", file=sys.stderr, flush=True)

        def singles():
            total, imgs = 0.0, 0
            for i in range(n_batch):
                s, c, _ = run_ours(model, method, batch[i:i + 1], targets[i:i + 1], params)
                total += s
                imgs += c["images"]
            return total, imgs

        s16, imgs16 = best(singles, opts.repeats)
        batch_row = rows[-1]
        batch_row["singles_s"] = s16
        batch_row["throughput_gain"] = s16 / batch_row["ours_s"]
        print(f"{method}: {n_batch} single calls {s16:.2f} s ({imgs16} model images), one batch "
              f"{batch_row['ours_s']:.2f} s: {s16 / batch_row['ours_s']:.1f}x", file=sys.stderr, flush=True)

    for method in [m for m in wanted if m in SCORING]:
        peer_cls, variant = SCORING[method]
        params = {**variant, **extra}
        x, t = one, targets[:1]
        o_s, o_c, e = run_ours(model, method, x, t, params)
        print(f"{method} 1 photo: ours {o_s:.1f} s", file=sys.stderr, flush=True)
        p_s, p_c, out = run_peer(peer_cls, net, layer, x, t)
        print(f"{method} 1 photo: peer {p_s:.1f} s", file=sys.stderr, flush=True)
        rows.append({"method": method, "setting": "1 photo", "ours_s": o_s, "method_s": e.seconds,
                     "ours_images": o_c["images"],
                     "peer_s": p_s, "peer_images": p_c["images"], "ratio": o_s / p_s, "agree": agree(e, out)})

    load = os.getloadavg()
    print(f"1-minute load average of the machine: {load_start:.1f} at the start, {load[0]:.1f} at the end")
    print(f"model {model.name}, layer {layer_name}, photos: {', '.join(s for s, _ in images)} "
          f"(batch of {n_batch}: repeated), best of {opts.repeats} alternating runs ({3 * opts.repeats} for one "
          f"photo; Score-CAM and Ablation-CAM: one run)\n")
    print(table(rows, COLUMNS))
    gains = [r for r in rows if "throughput_gain" in r]
    ceiling = None
    if gains:
        print(f"\nbatch of {n_batch} vs {n_batch} single calls (ours): " + ", ".join(
            f"{r['method'].split()[0]} {r['throughput_gain']:.1f}x ({r['singles_s']:.2f} s vs {r['ours_s']:.2f} s)"
            for r in gains))
        together, apart = network_batch_gain(net, batch, max(3, opts.repeats))
        ceiling = {"batch_s": together, "singles_s": apart, "gain": apart / together}
        print(f"the network alone (no-grad forward, no method): {n_batch} images at once {together:.3f} s, "
              f"one at a time {apart:.3f} s: {apart / together:.2f}x, the ceiling of any batch gain above")
    print(f"\nmachine: {machine()}")
    dump(opts.json, {"machine": machine(), "rows": rows, "network_batch_gain": ceiling})
    return 0
