"""The evaluation report: its numbers against the results, its arrows from the registry, and the HTML
page rendered by a real headless browser (Debian's chromium; skipped when it is not installed)."""

import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from faithmap.cli import main
from faithmap.evaluation.report import write_report
from faithmap.evaluation.stats import mean_curves
from faithmap.registry import METRICS, register_metric

import evalkit


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A finished tiny run with a test metric registered (lower is better) and its report."""
    @register_metric("test-spread", higher_is_better=False, category="complexity", summary="test: map spread")
    def spread(model, x, saliency, target, *, batch_size=None, seed=0):
        s = saliency.flatten(1)
        return (s / s.sum(1, keepdim=True).clamp_min(1e-12)).std(1)

    out = tmp_path_factory.mktemp("report") / "out"
    ann = tmp_path_factory.mktemp("ann") / "boxes.json"
    evalkit.boxes_json(ann)
    try:
        with evalkit.registered():
            res = evalkit.run_eval(out, methods="test-blob,test-random,test-gradient", resolutions="4,8",
                                   metrics="deletion,insertion,overall,pointing,test-spread", annotations=str(ann),
                                   report=True)
    finally:
        METRICS._specs.pop("test-spread")
    return res


def test_report_files_and_numbers(report_dir):
    out = report_dir.out
    md = open(os.path.join(out, "summary.md")).read()
    # arrows come from MetricSpec.higher_is_better (test-spread was registered as lower-is-better)
    assert "| grid | method | deletion ↓ | insertion ↑ | overall ↑ | pointing ↑ | test-spread ↓ | n |" in md
    assert "Student-t" in md and "## pointing: accuracy per category" in md
    for s in report_dir.summaries():
        if s.metric == "deletion" and s.method == "test-random" and s.grid == "8x8":
            vals = [float(r["value"]) for r in report_dir.rows if r["method"] == "test-random"
                    and r["resolution"] == "8" and r["metric"] == "deletion"]
            assert s.interval.mean == pytest.approx(np.mean(vals))
            assert f"{s.interval.mean:.3f} ± {s.interval.half:.3f}" in md
    # the mean curve's AUC is the mean AUC (one grid, the trapezoid is linear)
    mc = {(c.method, c.resolution): c for c in mean_curves(report_dir.curves, report_dir.run["methods"], ["4", "8", "native"])}
    for (method, res), c in mc.items():
        vals = [float(r["value"]) for r in report_dir.rows if r["method"] == method and r["resolution"] == res
                and r["metric"] == "deletion"]
        assert c.deletion_auc == pytest.approx(np.mean(vals), abs=1e-12) and c.n == 3
    for f in ("mean_curves_4x4.png", "mean_curves_8x8.png", "mean_curves_32x32.png", "heatmap_grid_all.png"):
        assert os.path.getsize(os.path.join(out, f)) > 5000
    page = open(os.path.join(out, "report.html")).read()
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert "http://" not in page and "https://" not in page


def test_report_only_rebuilds_the_same_summary(report_dir, capsys):
    before = open(os.path.join(report_dir.out, "summary.md")).read()
    os.remove(os.path.join(report_dir.out, "report.html"))
    assert main(["evaluate", "--report-only", "--out", report_dir.out]) == 0
    assert "report.html" in capsys.readouterr().out
    assert open(os.path.join(report_dir.out, "summary.md")).read().split("- **faithmap**")[0] == before.split("- **faithmap**")[0]


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; `make test` tries to install it)")
    return exe


def _browse(exe, url, *extra):
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *extra, url]
        return subprocess.run(cmd, capture_output=True, timeout=180)


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(report_dir, tmp_path):
    exe = _chromium()
    url = "file://" + os.path.abspath(os.path.join(report_dir.out, "report.html"))
    dom = _browse(exe, url, "--virtual-time-budget=5000", "--dump-dom")
    html = dom.stdout.decode("utf-8", "replace")
    assert dom.returncode == 0 and "<table class=\"summary\">" in html, dom.stderr.decode()[-800:]
    summary = html.split('<table class="summary">')[1].split("</table>")[0]
    assert summary.count("<tr>") == 1 + 5  # header + blob@8, random@8, blob@4, random@4, gradient
    assert "deletion ↓" in summary and "test-spread ↓" in summary
    loaded = re.search(r'data-images-loaded="(\d+)"', html)
    total = re.search(r'data-images-total="(\d+)"', html)
    assert loaded and total and int(total.group(1)) == 4 and loaded.group(1) == total.group(1)  # every PNG decoded
    shot = tmp_path / "shot.png"
    r = _browse(exe, url, f"--screenshot={shot}", "--window-size=1280,2000")
    assert r.returncode == 0 and shot.exists()
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (2000, 1280) and px.std() > 20  # text, tables and figures, not a blank page


def test_labels_target_and_the_correct_wrong_split(tmp_path):
    """--target label explains each image's label; rows keep label, prediction and agreement; the report
    pools correctly and wrongly predicted images apart (the tiny model predicts class 0 for every photo)."""
    photos = evalkit.photos(3)
    labelled = [(n, p, lab) for (n, p), lab in zip(photos, (0, 1, 0))]
    with evalkit.registered():
        res = evalkit.run_eval(tmp_path / "o", images=labelled, target="label", methods="test-blob",
                               resolutions="4", metrics="deletion", report=True)
    rows = {r["image"]: r for r in res.rows}
    assert [(rows[n]["label"], rows[n]["predicted"], rows[n]["correct"], rows[n]["target"]) for n in
            ("img0", "img1", "img2")] == [(0, 0, True, 0), (1, 0, False, 1), (0, 0, True, 0)]
    md = open(os.path.join(res.out, "summary.md")).read()
    ok = np.mean([rows["img0"]["value"], rows["img2"]["value"]])
    line = next(x for x in md.splitlines() if x.startswith("| 4x4 | test-blob | deletion |"))
    assert f"| {ok:.3f} ± " in line and f"| {rows['img1']['value']:.3f} | 1 |" in line
    assert "Correct and wrong predictions" in open(res.files["report"]).read()
