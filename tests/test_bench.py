"""The benchmarks live beside the package (``python -m bench NAME``), never in the wheel."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import bench
from bench import main
from bench.gpu import cam_methods, compare_counts
from faithmap.cli import main as faithmap_main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_listing_names_every_benchmark(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("igos", "igos++", "igospp-table7", "cams", "gradients", "metrics", "deletion", "evaluate", "xrai",
                 "aop", "excitation", "ties", "gather", "gpu"):
        assert f"\n{name} " in out
    assert set(bench.BENCHES) >= {"igos", "gpu", "ties"}


@pytest.mark.parametrize("argv,message", [
    (["nope"], "unknown benchmark 'nope'"),
    (["deletion", "--quick"], "--quick is an option of bench gpu only"),
    (["deletion", "--param", "peer"], "--param expects KEY=VALUE"),
    (["ties", "--repeats", "0"], "--repeats must be at least 1"),
    (["igos", "--resolution", "1"], "--resolution must be at least 2"),
    (["gpu", "--quick", "--compare-cpu", "/nonexistent/cpu.json"], "does not exist"),
    (["gpu", "--quick", "--iterations", "3"], "bench gpu has fixed settings"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and message in err and err.count("\n") == 1


def test_faithmap_bench_points_to_the_repository(capsys):
    assert faithmap_main(["bench", "igos", "--repeats", "2", "--json", "x.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m bench NAME" in err


def test_the_package_has_no_benchmarks():
    assert importlib.util.find_spec("faithmap.benchmarks") is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("faithmap.benchmarks")


def test_the_wheel_holds_no_benchmark_code(tmp_path):
    """Build the wheel offline (setuptools' own backend, no isolation) from a copy of the project
    with bench/ beside src/: only the faithmap package goes in."""
    pytest.importorskip("setuptools")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=ignore)
    shutil.copytree(ROOT / "bench", tmp_path / "bench", ignore=ignore)
    out = tmp_path / "dist"
    code = "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_wheel(sys.argv[1]))"
    p = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = out / p.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "faithmap/cli.py" in names and "faithmap/methods/igospp_objective.py" in names
    top = {n.split("/")[0] for n in names}
    assert top == {"faithmap", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert not [n for n in names if "bench" in n.split("/")[1:-1] or "benchmarks" in n]


def test_reference_figures_carry_their_source():
    from bench.aop import PAPER_TABLE1
    from bench.igos import REFERENCE_IGOS
    from bench.igospp import AUTHORS_FASTEST, REFERENCE_IGOSPP
    from bench.xrai import PAPER_TABLE2

    files = sorted((ROOT / "bench" / "data").glob("*.json"))
    assert len(files) == 4
    for f in files:
        doc = json.loads(f.read_text())
        assert {"what", "code", "command", "machine"} <= set(doc["source"]), f.name
        assert doc["figures"]
    # what the benchmarks print beside their rows: (seconds, model images, deletion, insertion) per photo
    assert set(REFERENCE_IGOS) == {"coffee", "chelsea", "astronaut", "rocket", "china", "flower"}
    assert all(len(v) == 4 and v[1] > 1000 for v in REFERENCE_IGOS.values())
    assert REFERENCE_IGOSPP["coffee"][1] == 8240 and AUTHORS_FASTEST == (380.0, 7800)
    assert PAPER_TABLE1["sigcam"][2] > PAPER_TABLE1["wgradcam"][2]  # the paper's claim the bench checks
    assert all(len(v) == 3 for v in PAPER_TABLE2.values())


def test_deletion_bench_counts_two_images_a_step(tmp_path):
    """A moved benchmark through the new entry point: a 4 x 4 map has 16 steps, 32 model images."""
    out = tmp_path / "d.json"
    assert main(["deletion", "sample:coffee", "--weights", "random", "--resolution", "4", "--param", "peer=false",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert (row["steps"], row["images"]) == (16, 32)


def test_compare_counts_lists_each_difference():
    rows = [{"section": "cam", "method": "gradcam", "setting": "batch 1", "model_images": 20},
            {"section": "mask", "method": "igos", "setting": "28x28", "model_images": 500}]
    assert compare_counts(rows, [dict(r) for r in rows]) == []
    cpu = [dict(rows[0], model_images=21), {"section": "evaluate", "method": "x", "setting": "y", "model_images": 1}]
    diff = compare_counts(rows, cpu)
    assert diff == [{"row": "cam / gradcam / batch 1", "ours": 20, "cpu": 21},
                    {"row": "mask / igos / 28x28", "ours": 500, "cpu": None},
                    {"row": "evaluate / x / y", "ours": None, "cpu": 1}]


@pytest.mark.slow
def test_gpu_bench_quick_on_cpu(tmp_path, capsys):
    """The GPU script's smoke run on CPU: every row, a batch costing what its photos cost one by one,
    and a CPU file with other settings refused before anything runs."""
    out = tmp_path / "cpu.json"
    assert main(["gpu", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    run = json.loads(out.read_text())
    assert run["device"] == "cpu" and run["settings"]["quick"] and len(run["settings"]["photos"]) == 2
    rows = {(r["section"], r["method"], r["setting"]): r for r in run["rows"]}
    for m in ("igos", "igos++"):
        for res in (28, 224):
            assert rows[("mask", m, f"{res}x{res}, batch of 2")]["model_images"] > 0
    cams = cam_methods()
    assert {"gradcam", "gradcam++", "scorecam", "expectedgradcam"} <= set(cams)
    for m in cams:
        one, both = rows[("cam", m, "batch 1")], rows[("cam", m, "batch of 2")]
        assert one["model_images"] == both["model_images"] > 0, m
    assert sum(r["section"] == "evaluate" for r in run["rows"]) == 1
    assert all(r["photos_per_s"] > 0 for r in run["rows"])
    other = dict(run, settings=dict(run["settings"], quick=False))
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(["gpu", "--quick", "--device", "cpu", "--compare-cpu", str(tmp_path / "other.json"),
                 "--json", str(tmp_path / "never.json")]) == 2
    assert "other settings (quick)" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


def test_truth_board_writes_the_pooled_tier_1_2_scores(tmp_path, capsys):
    """docs/data/truth_leaderboard.{json,md} from a truth.json: tiers 1-2 pooled scores with their
    intervals, the models behind them (passed gates only), the command and date; rows by tier-1 mass."""
    e = lambda m: {"mean": m, "low": m - 0.1, "high": m + 0.1, "n": 6}  # noqa: E731
    summary = {"notes": {"interval": "seeds then images"},
               "scenarios": [{"tier": 1, "scenario": "planted-cnn", "model_seed": s, "passed": True, "images": 2}
                             for s in (0, 1)] + [{"tier": 2, "scenario": "watermark-cnn-rho0.50", "model_seed": 0,
                                                  "passed": False, "images": 0}],
               "scores": {"1": {"all": {"edge": {"pointing": e(0.3), "mass": e(0.2), "auroc": e(0.6)},
                                        "occlusion": {"pointing": e(0.9), "mass": e(0.7), "auroc": e(0.9)}}}}}
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(summary))
    rc = main(["truth-board", "--param", f"truth={path}", "--param", "command=faithmap truth --quick",
               "--param", "date=2026-12-07", "--param", f"out={tmp_path / 'd'}"])
    assert rc == 0
    doc = json.loads((tmp_path / "d" / "truth_leaderboard.json").read_text())
    assert doc["command"] == "faithmap truth --quick" and doc["date"] == "2026-12-07"
    assert doc["methods"]["occlusion"]["family"] == "perturbation" and doc["methods"]["edge"]["family"] == "baseline"
    assert doc["methods"]["occlusion"]["tier1"]["mass"] == e(0.7) and "tier2" not in doc["methods"]["edge"]
    assert doc["tiers"]["1"] == {"scenarios": ["planted-cnn"], "model_seeds": [0, 1], "models": 2}
    assert doc["tiers"]["2"]["models"] == 0  # its only model failed a gate
    md = (tmp_path / "d" / "truth_leaderboard.md").read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| method")]
    assert rows[0].startswith("| occlusion |") and "0.70 [0.60, 0.80]" in rows[0] and rows[1].startswith("| edge |")
