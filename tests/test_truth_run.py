"""``faithmap.truth.run`` and ``faithmap truth``: scoring, skipping, gates, outputs, reproducibility and
bad input. Tiers 1-2 are stood in for by a hand-made tier-1-like scenario whose evidence is known by
construction (a model whose class-0 logit reads one patch only), so nothing here waits for the
trained tiers."""

import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import faithmap
from faithmap.models import wrap
from faithmap.registry import METHODS
from faithmap.truth import Gate, Scenario, TruthConfig, run
from faithmap.truth.run import COLUMNS

from conftest import PatchModel, patch_image
from conftest import run as cli

FEW = ("saliency", "gradcam", "occlusion", "edge", "random", "centre")


def planted(seed: int, *, passing: bool = True, mlp: bool = False) -> Scenario:
    """A tier-1-like scenario: PatchModel's class 0 reads the patch rows 8-16, columns 16-24 only."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)) if mlp else PatchModel()
    model = wrap(net.eval(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32, cam_layer=None if mlp else "conv",
                 name="mlp" if mlp else "patch")
    x = torch.cat([patch_image(seed=10 * seed + i) for i in range(3)])
    evidence = torch.zeros(3, 32, 32, dtype=torch.bool)
    evidence[:, 8:16, 16:24] = True
    gates = [Gate.check("test accuracy", 1.0 if passing else 0.5, 0.98, detail="hand-made")]
    return Scenario(1, "planted-test", seed, model, x, torch.zeros(3, dtype=torch.long), {"evidence": evidence},
                    uses={"pattern": 0.9}, gates=gates)


@pytest.fixture
def tier1(monkeypatch):
    """A stand-in ``faithmap.truth.tier1`` whose build returns :func:`planted` scenarios."""
    mod = types.ModuleType("faithmap.truth.tier1")
    mod.options = {}
    mod.build = lambda seed, *, arch="cnn", **kw: planted(seed, **mod.options)
    monkeypatch.setitem(sys.modules, "faithmap.truth.tier1", mod)
    monkeypatch.setitem(sys.modules, "faithmap.truth.tier2", None)  # this build has no tier 2
    return mod


@pytest.fixture
def few_methods(monkeypatch):
    """'all' means these few registered methods (keeps the runs short)."""
    monkeypatch.setattr(METHODS, "_specs", {k: v for k, v in METHODS._specs.items() if k in FEW})


def test_planted_scenario_scored_and_written(tmp_path, tier1, few_methods):
    res = run(tiers="1,2", seeds=2, images_per_scenario=3, out=str(tmp_path / "t"), n_boot=200, quick=True)
    assert res.unavailable == {2: "tier 2 is not available in this build (faithmap.truth.tier2 is missing)"}
    board = res.leaderboard(1)
    assert set(board) == set(FEW)  # the model-blind baselines are reported beside the methods
    # the gradient reads the patch only: all its mass is on the evidence; the floor is far below
    assert board["saliency"]["mass"]["mean"] == pytest.approx(1.0)
    assert board["saliency"]["pointing"]["mean"] == 1.0
    assert board["random"]["mass"]["mean"] == pytest.approx(64 / 1024, abs=0.01)
    for m in FEW:
        e = board[m]["mass"]
        assert e["low"] <= e["mean"] <= e["high"] and e["n"] == 6
    summary = json.loads((tmp_path / "t" / "truth.json").read_text())
    assert [s["passed"] for s in summary["scenarios"]] == [True, True]
    assert summary["scenarios"][0]["gates"][0] == {"name": "test accuracy", "value": 1.0, "threshold": 0.98, "op": ">=",
                                                   "passed": True, "detail": "hand-made"}
    assert set(summary["scores"]["1"]["planted-test"]["edge"]) >= {"pointing", "mass", "auroc", "deletion", "irof"}
    pairs = {(a["proxy"], a["truth"]) for a in summary["agreement"]["1"]["all"]}
    assert ("insertion", "mass") in pairs and ("rise_deletion", "auroc") in pairs
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "t" / "parts")
    assert table.column_names == list(COLUMNS)
    rows = table.to_pylist()
    assert {r["kind"] for r in rows} == {"truth", "proxy", "cost"}
    assert len([r for r in rows if r["method"] == "edge" and r["metric"] == "mass"]) == 6
    page = (tmp_path / "t" / "truth.html").read_text()
    assert "data:image/png;base64," in page and "planted-test" in page and "tier 2 is not available" in page


def test_a_rerun_into_the_same_folder_replaces_its_parts(tmp_path, tier1, few_methods):
    """Rows go through the evaluation store: a second run into the folder leaves one part per
    scenario and seed, not two."""
    import pyarrow.parquet as pq

    args = dict(tiers=1, seeds=1, images_per_scenario=2, out=str(tmp_path / "r"), n_boot=100, proxies=False, archs="cnn",
                methods="saliency,edge")
    run(**args)
    first = sorted(os.listdir(tmp_path / "r" / "parts"))
    run(**args)
    again = sorted(os.listdir(tmp_path / "r" / "parts"))
    assert len(first) == len(again) == 1 and first != again  # a new part, the old one gone
    keys = pq.read_table(tmp_path / "r" / "parts").column("key").to_pylist()
    assert len(keys) == len(set(keys)) and keys[0].startswith("t1/planted-test/s0/0|")


def test_failed_gate_ends_the_scenario_with_one_line(tmp_path, tier1, few_methods, capsys):
    tier1.options = {"passing": False}
    rc, out, err = cli(["truth", "--tier", "1", "--seeds", "1", "--arch", "cnn", "--out", str(tmp_path / "g"),
                       "--no-proxies"], capsys)
    assert rc == 0
    notes = [ln for ln in err.splitlines() if "gate" in ln]
    assert notes == ["faithmap: note: tier 1 planted-test seed 0: gate 'test accuracy' failed (0.5, needs >= 0.98); "
                     "not scored"]
    summary = json.loads((tmp_path / "g" / "truth.json").read_text())
    assert summary["scenarios"][0]["passed"] is False and summary["scores"] == {}
    assert not os.path.exists(tmp_path / "g" / "parts") or not os.listdir(tmp_path / "g" / "parts")


def test_a_method_that_cannot_run_is_skipped_or_refused(tmp_path, tier1, few_methods, capsys):
    """On a model without a spatial layer, Grad-CAM cannot run: skipped with its reason when the
    methods are 'all'; one line and exit status 2, nothing written, when the user named it."""
    tier1.options = {"mlp": True}
    res = run(tiers=1, seeds=1, proxies=False, n_boot=100, archs="cnn")
    rec = res.records[0]
    assert "gradcam" in rec.skipped and "convolutional layer" in rec.skipped["gradcam"]
    assert "gradcam" not in res.leaderboard(1) and "saliency" in res.leaderboard(1)
    out = tmp_path / "named"
    rc, _, err = cli(["truth", "--tier", "1", "--seeds", "1", "--methods", "saliency,gradcam", "--arch", "cnn",
                        "--out", str(out)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("faithmap: error: method gradcam cannot run on scenario planted-test (model mlp)")
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--tier", "3"], "unknown tier 3"),
    (["--tier", "zero"], "tiers must be integers"),
    (["--seeds", "0"], "seeds must be at least 1"),
    (["--methods", "nosuch"], "unknown method 'nosuch'"),
    (["--images-per-scenario", "0"], "images_per_scenario must be an integer of at least 1"),
    (["--trunk", "vgg"], "unknown tier-0 trunk 'vgg'"),
    (["--rho", "2"], "rhos must be rates in [0, 1]"),
    (["--seeds", "-1"], "seeds must be at least 1"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "bad"
    rc, _, err = cli(["truth", *argv, "--out", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1 and needle in err and err.startswith("faithmap: error:")
    assert not out.exists()


def test_config_is_checked_once_and_defaults_follow_quick():
    cfg = TruthConfig()
    assert cfg.images == 8 and cfg.trunk_names == ("cnn", "lite0") and cfg.seed_list == (0, 1, 2)
    import dataclasses

    quick = dataclasses.replace(cfg, quick=True)
    assert quick.images == 2 and quick.trunk_names == ("cnn",) and quick.arch_names == ("cnn",)
    assert quick.seed_list == (0,) and quick.rho_list == (0.5, 1.0) and cfg.rho_list == (0.5, 0.75, 0.9, 1.0)
    assert TruthConfig(rhos="0.9, 1").rhos == (0.9, 1.0) and dataclasses.replace(quick, seeds=3).seed_list == (0, 1, 2)
    assert TruthConfig(methods="Saliency,gradient").methods == ("saliency",)  # canonical names, aliases merged
    assert TruthConfig(fast=None).fast_for("igos") is False and TruthConfig(quick=True).fast_for("igos") is True
    with pytest.raises(faithmap.FaithmapError, match="unknown truth setting 'tier'"):
        run(tier=0)
    with pytest.raises(faithmap.FaithmapError, match="model seeds must be distinct"):
        TruthConfig(seeds=(1, 1))


def test_same_seed_same_rows_and_the_cli_writes_the_page(tmp_path, capsys):
    """Tier 0 twice with the same seeds gives the same rows (timings aside) on one machine."""
    args = dict(tiers=0, trunks="cnn", methods="saliency,layercam,occlusion,random", seeds=1, images_per_scenario=2,
                quick=True, n_boot=100)

    def rows():
        cols = run(**args).rows()
        keep = [i for i, k in enumerate(cols["kind"]) if k != "cost"]
        return [tuple(cols[c][i] for c in COLUMNS) for i in keep]

    a, b = rows(), rows()
    assert a == b and len(a) > 0
    metric, method = COLUMNS.index("metric"), COLUMNS.index("method")
    vals = np.array([r[-1] for r in a if r[metric] == "outside" and r[method] == "saliency"])
    np.testing.assert_allclose(vals, 0.0, atol=1e-7)
    out = tmp_path / "cli"
    rc, stdout, _ = cli(["truth", "--tier", "0", "--trunk", "cnn", "--methods", "saliency,edge", "--seeds", "1",
                         "--images-per-scenario", "2", "--quick", "--out", str(out)], capsys)
    assert rc == 0 and "tier 0 (all scenarios" in stdout and "edge" in stdout
    assert {"truth.json", "truth.html", "parts"} <= set(os.listdir(out))
