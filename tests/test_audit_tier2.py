"""The audit on the ground truth's tier-2 models (faithmap.truth.tier2: an object and a corner tag that
agrees with the label at rate rho; what the trained model uses is measured). With no hint: on a model
measured to use the watermark the first finding is the watermark; at rho = 0.5 nothing is found there."""

import pytest
import torch

import faithmap
from faithmap.core.batching import torch_threads

import auditkit

tier2 = pytest.importorskip("faithmap.truth.tier2")

pytestmark = pytest.mark.slow  # trains two small CNNs


def _audit(scenario, out):
    pixels = scenario.model.to_pixels(scenario.x).cpu()
    images = [(f"w{i:03d}", pixels[i], int(t)) for i, t in enumerate(scenario.target.tolist())]
    with torch_threads(1):
        return faithmap.audit(images=images, model=scenario.model, out=str(out), progress=False)


def _watermark_box(scenario) -> list[float]:
    """The box of every image's watermark (the tag stands at one place), in fractions of the image."""
    m = scenario.regions["watermark"].any(0)
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    h, w = m.shape
    return [cols.min().item() / w, rows.min().item() / h, (cols.max().item() + 1) / w, (rows.max().item() + 1) / h]


def test_a_model_that_uses_the_watermark_has_it_as_first_finding(tmp_path):
    scenario = tier2.build(0, rho=1.0, quick=True, n_test=64)
    if scenario.uses.get("watermark", 0.0) < 0.10:
        pytest.skip(f"this model was measured not to use the watermark ({scenario.uses})")
    res = _audit(scenario, tmp_path / "a")
    assert res.findings, res.candidates
    assert auditkit.overlaps(res.region(res.findings[0]), _watermark_box(scenario))


def test_a_model_trained_at_rho_one_half_has_no_finding_at_the_watermark(tmp_path):
    scenario = tier2.build(0, rho=0.5, quick=True, n_test=64)
    res = _audit(scenario, tmp_path / "a")
    box = _watermark_box(scenario)
    assert not [c for c in res.findings if auditkit.iou(res.region(c), box) > 0.1]
