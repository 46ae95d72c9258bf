"""Tiers 1 and 2 of the ground truth: the reliance gates can fail, use is measured (never read off
rho), and the same seed gives the same weights and the same scenario. Tiny training runs; the
quick-setting runs that must pass their gates are marked slow."""

from __future__ import annotations

import os

import pytest
import torch

from faithmap.api import explain
from faithmap.models import Classifier
from faithmap.truth import Scenario, tier1, tier2
from faithmap.truth.data import PATTERNS


def _gate(sc: Scenario, name: str):
    return next(g for g in sc.gates if g.name == name)


def test_a_model_that_reads_the_background_instead_of_the_pattern_fails_the_evidence_gates():
    # the label is in the background's tint, the pattern is drawn at random: accuracy is high, but
    # painting the pattern over leaves it high and a swapped pattern is not followed
    sc = tier1.build(0, cue="background", n_train=800, epochs=2, n_test=4, n_gate=300, quick=True)
    assert _gate(sc, "accuracy").value > 0.8, sc.gates  # it learned the label (from the tint), far above chance
    removed = _gate(sc, "evidence removed -> chance")
    assert not removed.passed and removed.value > 0.9
    assert not _gate(sc, "evidence swapped -> follows").passed
    assert not sc.passed and sc.uses["pattern"] < tier1.USED


def test_a_model_whose_pattern_carries_no_label_fails_accuracy():
    sc = tier1.build(1, cue="none", n_train=400, epochs=2, n_test=4, n_gate=200, quick=True)
    acc = _gate(sc, "accuracy")
    assert not acc.passed and acc.value < 0.5
    assert not sc.passed


def test_a_rho_half_model_is_not_reported_as_using_the_watermark():
    sc = tier2.build(0, rho=0.5, n_train=1200, epochs=3, n_test=8, n_gate=300, quick=True)
    assert "watermark" not in sc.info["used"] and sc.uses["watermark"] < tier2.USED
    assert sc.info["used"] == ["object"]
    assert torch.equal(sc.regions["evidence"], sc.regions["object"])
    assert not (sc.regions["evidence"] & sc.regions["watermark"]).any()
    follow = sc.info["measured"]["conflict_follow"]
    assert follow["object"] > 0.9 and abs(follow["object"] + follow["watermark"] - 1) < 1e-6


def _state(clf: Classifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in clf.net.state_dict().items()}


def _same_scenario(a: Scenario, b: Scenario) -> None:
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target)
    assert a.regions.keys() == b.regions.keys() and all(torch.equal(a.regions[k], b.regions[k]) for k in a.regions)
    assert a.gates == b.gates and a.uses == b.uses


def test_the_same_seed_gives_the_same_weights_and_scenario_and_the_cache_returns_them(tmp_path):
    kw = dict(n_train=200, epochs=1, n_test=6, n_gate=100, quick=True)
    a, b = tier1.build(3, **kw), tier1.build(3, **kw)
    sa, sb = _state(a.model), _state(b.model)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    _same_scenario(a, b)
    c = tier1.build(4, **kw)
    assert not torch.equal(_state(c.model)["fc.weight"], sa["fc.weight"])

    first = tier1.build(3, cache_dir=str(tmp_path), **kw)
    assert not first.info["cached"] and os.path.isfile(first.info["cache"])
    assert first.info["cache"].endswith(".safetensors")
    again = tier1.build(3, cache_dir=str(tmp_path), **kw)
    assert again.info["cached"] and again.info["train_seconds"] == first.info["train_seconds"]
    sg = _state(again.model)
    assert all(torch.equal(sg[k], sa[k]) for k in sa)
    _same_scenario(again, a)  # the gates ran again on the cached weights and measured the same
    other = tier1.build(3, cache_dir=str(tmp_path), **{**kw, "epochs": 2})  # other settings, other file
    assert not other.info["cached"] and other.info["cache"] != first.info["cache"]


def test_a_tier2_scenario_is_reproducible_and_its_evidence_is_the_union_of_used_cues():
    kw = dict(rho=0.9, n_train=200, epochs=1, n_test=6, n_gate=100, quick=True)
    a, b = tier2.build(2, **kw), tier2.build(2, **kw)
    _same_scenario(a, b)
    union = torch.zeros_like(a.regions["object"])
    for cue in a.info["used"]:
        union |= a.regions[cue]
    assert torch.equal(a.evidence, union)
    assert a.info["used"] == [c for c in ("object", "watermark") if a.uses[c] >= tier2.USED]


def test_the_scenario_model_runs_faithmap_methods_on_its_cam_layer():
    sc = tier1.build(0, n_train=100, epochs=1, n_test=2, n_gate=50, quick=True)
    assert isinstance(sc.model, Classifier) and sc.model.cam_layer == "features.11"
    assert sc.x.shape == (2, 3, 32, 32) and sc.regions["evidence"].shape == (2, 32, 32)
    cam = explain(sc.model, sc.x, "gradcam", target=sc.target)
    assert cam.resolution == (8, 8)  # the 8 x 8 grid after two 2 x 2 poolings
    grad = explain(sc.model, sc.x, "saliency", target=sc.target)
    assert grad.resolution == (32, 32) and torch.isfinite(grad.saliency).all()


@pytest.mark.parametrize("bad", [dict(arch="mlp"), dict(n_train=0), dict(epochs=-1), dict(n_test=0), dict(cue="x")])
def test_bad_settings_are_one_clear_error(bad):
    from faithmap.errors import FaithmapError

    with pytest.raises(FaithmapError):
        tier1.build(0, quick=True, **{"n_train": 50, "epochs": 1, **bad})


def test_rho_outside_the_unit_interval_is_refused():
    from faithmap.errors import FaithmapError

    for rho in (-0.1, 1.5, True, "0.9"):
        with pytest.raises(FaithmapError):
            tier2.build(0, rho=rho, n_train=50, epochs=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Trained quick weights shared by this file's slow tests (each model is trained once)."""
    return str(tmp_path_factory.mktemp("truth-weights"))


@pytest.mark.slow
def test_quick_tier1_cnn_passes_every_gate(cache):
    sc = tier1.build(0, quick=True, cache_dir=cache)
    assert sc.passed, [g for g in sc.gates if not g.passed]
    assert sc.info["test_accuracy"] >= tier1.ACCURACY and sc.uses["pattern"] >= 0.9
    assert sc.info["explained_correct"] == len(sc.target)
    with torch.no_grad():
        assert torch.equal(sc.model(sc.x).argmax(1), sc.target)  # the explained images are classified right
    assert sc.model.class_names == list(PATTERNS)


@pytest.mark.slow
def test_quick_tier2_rho_one_model_is_measured_not_assumed(cache):
    # a tag that always agreed: which cues the model uses is measured (here the tag at least)
    sc = tier2.build(0, rho=1.0, quick=True, cache_dir=cache)
    assert sc.passed, [g for g in sc.gates if not g.passed]
    assert "watermark" in sc.info["used"]
    assert (sc.evidence & sc.regions["watermark"]).any()


@pytest.mark.slow
def test_vit_scenario_reads_its_token_grid():
    sc = tier1.build(0, arch="vit", n_train=100, epochs=1, n_test=2, n_gate=50, quick=True)
    assert sc.model.cam_layer == "norm"
    cam = explain(sc.model, sc.x, "gradcam", target=sc.target)
    assert cam.resolution == (8, 8)  # 64 tokens, no class token: 8 x 8 patches of 4 px


@pytest.mark.slow
def test_resnet18_runs_on_the_cpu_at_a_small_size():
    sc = tier2.build(0, rho=1.0, arch="resnet18", size=64, n_train=64, epochs=1, n_test=2, n_gate=50)
    assert sc.model.cam_layer == "layer4" and sc.x.shape == (2, 3, 64, 64)
    assert explain(sc.model, sc.x, "gradcam", target=sc.target).resolution == (2, 2)


@pytest.mark.slow
def test_the_run_scores_trained_tiers_and_the_same_seed_gives_the_same_rows(cache, tmp_path):
    """Tiers 1 and 2 through faithmap.truth.run (weights from the cache the tests above filled, or
    trained here): gates reported, tier 2's measured use per model in truth.json, the same rows twice."""
    import json

    from faithmap.truth import run
    from faithmap.truth.run import COLUMNS

    args = dict(tiers="1,2", seeds=1, rhos=(1.0,), quick=True, methods="saliency,gradcam,edge,random",
                cache_dir=cache, images_per_scenario=2, n_boot=100, proxies=False)
    a = run(out=str(tmp_path / "a"), **args)
    b = run(**args)
    kind = COLUMNS.index("kind")

    def rows(res):
        cols = res.rows()
        return [tuple(cols[c][i] for c in COLUMNS) for i in range(len(cols["key"])) if cols["kind"][i] != "cost"]

    assert rows(a) == rows(b) and {r[kind] for r in rows(a)} == {"truth"}
    summary = json.loads((tmp_path / "a" / "truth.json").read_text())
    by_tier = {s["tier"]: s for s in summary["scenarios"]}
    assert set(by_tier) == {1, 2} and all(s["passed"] for s in summary["scenarios"]), summary["scenarios"]
    t2 = by_tier[2]["info"]
    assert set(t2["uses"]) == {"object", "watermark"} and t2["used"] == [c for c in ("object", "watermark")
                                                                         if t2["uses"][c] >= tier2.USED]
    assert {g["name"] for g in by_tier[1]["gates"]} >= {"accuracy", "evidence removed -> chance"}
    assert set(summary["seconds_by_part"]) >= {"generate", "train", "gates", "explain", "score", "proxies"}
    # the planted pattern is what the model reads: the gradient's mass in it beats the random floor
    board = a.leaderboard(1)
    assert board["saliency"]["mass"]["mean"] > board["random"]["mass"]["mean"]
