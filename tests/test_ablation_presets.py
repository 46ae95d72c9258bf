"""The ablation presets (Qi, Khorram & Li, AAAI 2020 Table 3; Khorram, Lawson & Li, ACM CHIL 2021 Tables 3, 5 and 7): method variants
under run names ``method:variant``, each row's parameters accepted by its method, I-GOS's fixed step,
iGOS++'s final-mask choice, and one end-to-end evaluation on a tiny model."""

import json
import os

import numpy as np
import pytest
import torch

import faithmap
from faithmap.api import check_params
from faithmap.cli import main
from faithmap.cli_evaluate import _params
from faithmap.errors import FaithmapError
from faithmap.evaluation.presets import TABLE7_LAMBDAS, base_method, resolve, run_name, split_run_name
from faithmap.registry import METHODS

import evalkit
from test_invariants import tiny_inputs, tiny_model

ABLATIONS = {  # preset: the paper's rows, in its order
    "igos-table3": ["I-GOS (ours)", "I-GOS, no TV term", "I-GOS, no noise", "I-GOS, fixed step size 1"],
    "igospp-table3": ["I-GOS", "Insertion", "I-GOS + Insertion (naive)", "iGOS++ (no noise)", "iGOS++ (fix step size)",
                      "iGOS++ (no BTV)", "iGOS++"],
    "igospp-table5": ["M_x (deletion mask)", "M_y (insertion mask)", "M_xy (iGOS++)"],
    "igospp-table7": [f"{m}, l1={a:g} l2={b:g}" for a, b in TABLE7_LAMBDAS
                      for m in ("I-GOS + Ins (naive)", "iGOS++")],
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_presets_resolve_to_registered_methods_with_valid_parameters(name):
    rp = resolve(name)
    assert rp.skipped_methods == [] and rp.skipped_metrics == []
    assert [rp.labels[m] for m in rp.methods] == ABLATIONS[name]
    assert len(set(rp.methods)) == len(rp.methods)  # one run name a row
    model, x = tiny_model(), tiny_inputs(1)
    for m in rp.methods:
        spec = METHODS.get(base_method(m))
        assert spec.resolution == "mask" and spec.name in ("igos", "igos++")
        params = rp.params.get(m, {})
        check_params(spec, params)  # names the method takes ...
        e = faithmap.explain(model, x, spec.name, target=0, resolution=4, iterations=0, **params)
        for k, v in params.items():  # ... and values its own checks accept and record
            assert e.params[k] == v, (m, k)


def test_each_row_changes_what_the_papers_row_changes():
    p = {n: resolve(n).params for n in ABLATIONS}
    assert p["igos-table3"] == {"igos:no-tv": {"l2": 0.0}, "igos:no-noise": {"noise_std": 0.0},
                                "igos:fixed-step": {"step_size": 1.0}}
    assert p["igospp-table3"] == {f"igos++:{a}": {"ablation": a}
                                  for a in ("insertion", "naive", "no-noise", "fixed-step", "no-btv")}
    assert p["igospp-table5"] == {"igos++:deletion-mask": {"final_mask": "deletion"},
                                  "igos++:insertion-mask": {"final_mask": "insertion"}}
    t7 = p["igospp-table7"]
    assert len(t7) == 8 and sorted({(v["l1"], v["l2"]) for v in t7.values()}) == sorted(TABLE7_LAMBDAS)
    assert sum(v.get("ablation") == "naive" for v in t7.values()) == 4
    assert resolve("igospp-table7").preset.resolutions == (28,)


def test_run_names():
    assert split_run_name("igospp:No-TV") == ("igos++", "no-tv") and run_name("IGOS") == "igos"
    assert run_name("igos_pp:naive-l1-1-l2-2") == "igos++:naive-l1-1-l2-2" and base_method("igos:x") == "igos"
    for bad, needle in (("igos:", "bad method variant"), ("igos:a.b", "bad method variant"),
                        ("nosuch:x", "unknown method 'nosuch'")):
        with pytest.raises(FaithmapError, match=needle):
            run_name(bad)
    # the command line's per-method parameters take run names too
    assert _params(["igospp:no-tv.l2=0", "iterations=3"], METHODS, "param") == {"igos++:no-tv": {"l2": 0},
                                                                                  "iterations": 3}


def test_igos_fixed_step_takes_step_one_and_no_line_search_images():
    model, x = tiny_model(), tiny_inputs(2)
    kw = dict(target=torch.tensor([0, 1]), resolution=4, iterations=3, ig_steps=4, seed=0)
    fixed = faithmap.explain(model, x, "igos", step_size=1.0, **kw)
    assert torch.equal(fixed.history["alpha"], torch.ones(2, 3))
    assert fixed.counts["images"] == 2 * 3 * 4 and fixed.counts["nograd_images"] == 0  # gradients only
    searched = faithmap.explain(model, x, "igos", **kw)
    assert searched.counts["nograd_images"] > 0 and not torch.equal(searched.history["alpha"], torch.ones(2, 3))
    with pytest.raises(FaithmapError, match="step_size must be in"):
        faithmap.explain(model, x, "igos", step_size=0.0, **kw)


def test_igospp_final_mask_reads_one_optimisation_three_ways(patch_model, patch_input):
    model, x = patch_model, torch.cat([patch_input, patch_input.flip(-1)])
    kw = dict(target=torch.tensor([0, 0]), resolution=4, iterations=2, ig_steps=3, seed=0)
    runs = {f: faithmap.explain(model, x, "igos++", final_mask=f, **kw) for f in ("product", "deletion", "insertion")}
    masks = runs["product"].extras["masks"]
    assert all(torch.equal(r.extras["masks"], masks) for r in runs.values())  # the same optimisation
    assert torch.allclose(runs["product"].saliency, 1 - masks[:, 0] * masks[:, 1])
    assert torch.allclose(runs["deletion"].saliency, 1 - masks[:, 0])
    assert torch.allclose(runs["insertion"].saliency, 1 - masks[:, 1])
    assert not torch.allclose(runs["deletion"].saliency, runs["insertion"].saliency)
    with pytest.raises(FaithmapError, match="unknown final_mask"):
        faithmap.explain(model, x, "igos++", final_mask="xy-ish", **kw)
    with pytest.raises(FaithmapError, match="needs iGOS\\+\\+'s two masks"):
        faithmap.explain(model, x, "igos++", final_mask="deletion", ablation="insertion", **kw)


def test_an_ablation_preset_end_to_end_on_a_tiny_model(tmp_path):
    """``igos-table3`` with --fast (and 2 iterations) on a tiny photo at 8 x 8: four rows of the same
    method, each with its parameters, label and own map; the fixed-step row sends no line-search images."""
    res = evalkit.run_eval(tmp_path / "o", methods=None, preset="igos-table3", resolutions="8", metrics=None,
                           fast=True, params={"iterations": 2}, images=evalkit.photos(1), report=True)
    names = ["igos", "igos:no-tv", "igos:no-noise", "igos:fixed-step"]
    assert res.run["methods"] == names and res.complete
    assert {r["method"] for r in res.rows} == set(names) and {r["metric"] for r in res.rows} == {"deletion", "insertion"}
    settings = res.run["settings"]["params"]
    assert settings["igos:no-tv"]["l2"] == 0.0 and settings["igos:fixed-step"]["step_size"] == 1.0
    assert settings["igos"]["iterations"] == settings["igos:fixed-step"]["iterations"] == 2  # shared --param
    assert settings["igos:no-noise"]["ig_steps"] == METHODS.get("igos").fast["ig_steps"]  # igos's fast settings
    fixed = [r for r in res.rows if r["method"] == "igos:fixed-step" and r["metric"] == "deletion"]
    assert {float(r["explain_images"]) for r in fixed} == {2 * METHODS.get("igos").fast["ig_steps"]}
    maps = {m: torch.from_numpy(np.load(os.path.join(res.out, "maps", "img0", f"{m.replace(':', '_')}@8.npy")))
            for m in names}
    assert not torch.allclose(maps["igos"], maps["igos:no-tv"])
    md = open(os.path.join(res.out, "summary.md")).read()
    assert "I-GOS, no TV term (`igos:no-tv`)" in md
    with open(os.path.join(res.out, "run.json")) as fh:
        assert json.load(fh)["labels"]["igos:fixed-step"] == "I-GOS, fixed step size 1"


def test_cli_lists_the_ablation_presets(capsys):
    assert main(["evaluate", "--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in ABLATIONS:
        assert f"{name}:" in out
    assert "I-GOS, no TV term (igos:no-tv)" in out and "M_y (insertion mask) (igos++:insertion-mask)" in out


def test_table7_objective_is_the_naive_objective_at_the_map(patch_model, patch_input):
    """``python -m bench igospp-table7``'s L(M) = f(phi(I, B, M)) - f(phi(B, I, M)) + l1 mean|1 - M| + l2 BTV(I, M):
    at M = 1 (saliency 0) it is f(I) - f(B); at M = 0 it is f(B) - f(I) + l1 (both masks constant)."""
    from faithmap.methods.igospp_objective import naive_objective
    from faithmap.core.perturb import blur_baseline

    x = patch_input
    t = torch.tensor([0])
    with torch.no_grad():
        f_img = torch.softmax(patch_model(x), 1)[0, 0]
        f_blur = torch.softmax(patch_model(blur_baseline(x)), 1)[0, 0]
    zero = torch.zeros(1, 4, 4)
    assert torch.allclose(naive_objective(patch_model, x, zero, t, 1.0, 20.0)[0], f_img - f_blur, atol=1e-5)
    assert torch.allclose(naive_objective(patch_model, x, 1 - zero, t, 10.0, 200.0)[0], f_blur - f_img + 10.0,
                          atol=1e-5)
    # a non-constant map adds its smoothness term: l2 scales it
    m = torch.zeros(1, 4, 4)
    m[0, 1:3, 1:3] = 1.0
    a, b = (naive_objective(patch_model, x, m, t, 1.0, l2)[0] for l2 in (0.0, 20.0))
    c = naive_objective(patch_model, x, m, t, 1.0, 40.0)[0]
    assert b > a and torch.allclose(c - a, 2 * (b - a), atol=1e-5)


def test_variants_of_one_method_draw_the_same_noise_in_evaluate(tmp_path):
    """Table 5's rows read one iGOS++ optimisation three ways: under evaluate the variants of a method
    get the same per-image seed, so the deletion-mask, insertion-mask and product rows come from the
    same run (the same model images)."""
    import faithmap

    res = faithmap.evaluate(preset="igospp-table5", images=evalkit.photos(2), model=evalkit.tiny_model(),
                            resolutions="4", fast=True, metrics="deletion", out=str(tmp_path / "o"),
                            progress=False, report=False)
    rows = res.rows
    by = {}
    for r in rows:
        by.setdefault(r["image"], {})[r["method"]] = r
    for img, per in by.items():
        assert set(per) == {"igos++:deletion-mask", "igos++:insertion-mask", "igos++"}
        assert len({r["image_seed"] for r in per.values()}) == 1
        assert len({r["explain_images"] for r in per.values()}) == 1  # one optimisation, read three ways
