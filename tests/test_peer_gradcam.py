"""Parity with pytorch-grad-cam (test-only peer): the CAM methods on tiny models, EfficientNet-Lite0 and a ViT token grid.

Skipped as a whole when pytorch-grad-cam is missing; the CAM engine's own tests are in test_cam.py."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

import faithmap
from faithmap.models import get_layer

from test_invariants import tiny_inputs, tiny_model
from test_cam import small_vit, vit_reshape

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


PEERS = {
    "gradcam": ("GradCAM", {}),
    "gradcam++": ("GradCAMPlusPlus", {"variant": "pytorch-grad-cam"}),
    "xgradcam": ("XGradCAM", {"variant": "pytorch-grad-cam"}),
    "layercam": ("LayerCAM", {}),
    "hirescam": ("HiResCAM", {}),
    "scorecam": ("ScoreCAM", {"variant": "pytorch-grad-cam"}),
    "ablationcam": ("AblationCAM", {"variant": "pytorch-grad-cam"}),
}


def peer_cam(method: str, net: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor,
             reshape=None, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """pytorch-grad-cam's map on the layer grid (after its ReLU, before its resizing), its final
    output at input size, and its channel weights (None for per-position methods)."""
    cls = getattr(pgc, PEERS[method][0])
    cam = cls(model=net, target_layers=[layer], reshape_transform=reshape)
    if batch_size:
        cam.batch_size = batch_size
    targets = [ClassifierOutputTarget(int(c)) for c in target]
    seen = {}
    weights_of = cam.get_cam_weights

    def record(*args, **kwargs):  # keep the weights the peer computes during its call
        seen["weights"] = weights_of(*args, **kwargs)
        return seen["weights"]

    cam.get_cam_weights = record
    try:
        out = cam(x, targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients else None
        weights = seen.get("weights")
        if weights is not None:  # BaseCAM.get_cam_image: weighted sum over channels
            raw = (weights[:, :, None, None] * acts).sum(1)
        else:
            raw = cam.get_cam_image(x, layer, targets, acts, grads, False)
    finally:
        cam.activations_and_grads.release()
    return np.maximum(raw, 0), out, weights


def assert_matches_peer(e: faithmap.Explanation, method: str, net, layer, x, target, reshape=None, atol=1e-4,
                        batch_size=None):
    ref, out, weights = peer_cam(method, net, layer, x, target, reshape, batch_size)
    ours = e.saliency.detach().cpu().numpy()
    assert ours.shape == ref.shape
    # same min-max normalisation as the peer's scale_cam_image, on the layer grid
    np.testing.assert_allclose(scale_cam_image(ours), scale_cam_image(ref), atol=atol, rtol=0)
    # and the peer's whole post-processing (OpenCV resize + normalisation) applied to our map
    full = scale_cam_image(scale_cam_image(ours, (x.shape[-1], x.shape[-2])))
    np.testing.assert_allclose(full, out, atol=atol, rtol=0)
    if weights is not None:
        w = e.extras["weights"].cpu().numpy()
        w, weights = w / np.abs(w).max(1, keepdims=True), weights / np.abs(weights).max(1, keepdims=True)
        if method == "scorecam":
            # a (nearly) constant non-zero activation map (ReLU6 saturated at 6: 6, 6, 6, 5.99997) has
            # (almost) no min-max normalisation: float rounding in the upsampling decides its mask
            flat = e.extras["activations"].flatten(2)
            span = flat.max(2).values - flat.min(2).values
            noise = (span <= 1e-4 * flat.abs().amax(2)) & (flat.abs().amax(2) > 0)
            noise = noise.cpu().numpy()
            w, weights = np.where(noise, 0, w), np.where(noise, 0, weights)
        np.testing.assert_allclose(w, weights, atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------
# agreement with pytorch-grad-cam
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["features.4", "features.3"])  # after the ReLU, and before it (negative values)
@pytest.mark.parametrize("method", list(PEERS))
def test_tiny_model_matches_pytorch_grad_cam(method, layer):
    model, x = tiny_model(), tiny_inputs(3)
    target = torch.tensor([0, 1, 3])
    e = faithmap.explain(model, x, method, target=target, layer=layer, **PEERS[method][1])
    assert e.extras["layer"] == layer and e.saliency.shape == (3, 16, 16)
    assert_matches_peer(e, method, model.net, get_layer(model.net, layer), x, target)


@pytest.mark.slow
def test_lite0_gradient_family_matches_pytorch_grad_cam(lite0):
    from faithmap.data import load_sample

    x = lite0.preprocess([load_sample("coffee"), load_sample("chelsea")])
    target = torch.tensor([967, 285])  # espresso, Egyptian cat
    layer = get_layer(lite0.net, "features.17")
    for method in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
        e = faithmap.explain(lite0, x, method, target=target, **PEERS[method][1])
        assert e.extras["layer"] == "features.17" and e.saliency.shape == (2, 7, 7)
        assert_matches_peer(e, method, lite0.net, layer, x, target)


@pytest.mark.slow
def test_lite0_scoring_methods_match_pytorch_grad_cam(lite0, coffee):
    # 1280 masked or ablated forwards per image: at 64 x 64 input (a 2 x 2 grid) to stay quick
    x = torch.nn.functional.interpolate(coffee, size=(64, 64), mode="bilinear", align_corners=False)
    target = torch.tensor([967])
    layer = get_layer(lite0.net, "features.17")
    for method in ("scorecam", "ablationcam"):
        e = faithmap.explain(lite0, x, method, target=target, batch_size=64, **PEERS[method][1])
        assert e.saliency.shape == (1, 2, 2)
        assert_matches_peer(e, method, lite0.net, layer, x, target, batch_size=64)
        # dead channels share one forward pass (Score-CAM) or need none (Ablation-CAM)
        assert e.counts["images"] < 1 + 1280


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_vit_tokens_reshaped_to_grid_match_peer(method):
    model = small_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([1, 4])
    e = faithmap.explain(model, x, method, target=target, **PEERS[method][1])
    assert e.extras["layer"] == "encoder.layers.encoder_layer_1.ln_1" and e.saliency.shape == (2, 4, 4)
    layer = get_layer(model.net, e.extras["layer"])
    assert_matches_peer(e, method, model.net, layer, x, target, reshape=vit_reshape)
