"""The generated parts of README.md and docs/: the method picker (costs, notes and the ground-truth
leaderboard of ``faithmap truth`` when it exists), the leaderboard table, ``faithmap docs --check``,
and no seed file names in the public text."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

import faithmap
from faithmap.cli import main
from faithmap.errors import FaithmapError
from faithmap.docs import PENDING, load_picker_data, picker_table, render, truth_results

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _board(tmp_path: pathlib.Path) -> pathlib.Path:
    """A tiny sample of faithmap truth's leaderboard (two methods) in a folder of picker data."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "truth_leaderboard.json").write_text(json.dumps({"methods": {
        "igos": {"family": "mask", "tier1": {"mean": 0.612, "ci95": [0.55, 0.68]},
                 "tier2": {"mean": 0.4, "low": 0.31, "high": 0.49}, "command": "faithmap truth", "date": "2026-12-08"},
        "grad-cam": {"family": "cam", "tier1": 0.25}}}))
    (data / "truth_leaderboard.md").write_text("| method | tier 1 |\n|---|---|\n| igos | 0.61 |\n")
    return data


def _row(table: str, method: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| `{method}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_picker_reads_the_truth_leaderboard(tmp_path):
    data = load_picker_data(str(_board(tmp_path)))
    table = picker_table(data)
    assert _row(table, "igos")[-1] == "tier 1: 0.61 [0.55, 0.68]; tier 2: 0.40 [0.31, 0.49]"
    assert _row(table, "gradcam")[-1] == "tier 1: 0.25"  # an alias in the file names the method
    assert _row(table, "rise")[-1] == "-"  # a method the leaderboard lacks
    assert len([ln for ln in table.splitlines() if ln.startswith("| `")]) == len(faithmap.METHODS)
    text = render("<!-- truth_leaderboard:start -->\nold\n<!-- truth_leaderboard:end -->", data)
    assert "| igos | 0.61 |" in text and "old" not in text


def test_the_picker_says_pending_without_the_leaderboard(tmp_path):
    data = load_picker_data(str(tmp_path))  # an empty folder: no costs, notes or leaderboard
    table = picker_table(data)
    assert all(_row(table, s.name)[-1] == PENDING for s in faithmap.METHODS)
    assert PENDING in render("<!-- truth_leaderboard:start -->\n<!-- truth_leaderboard:end -->", data)


def test_a_leaderboard_of_the_wrong_shape_is_one_error():
    with pytest.raises(FaithmapError, match="truth_leaderboard.json"):
        truth_results({"methods": 3})


def test_docs_check_fails_on_a_stale_page_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text("<!-- metrics:start -->\nstale\n<!-- metrics:end -->\n")
    assert main(["docs", "page.md", "--check", "--data", str(tmp_path)]) == 2
    assert "page.md out of date" in capsys.readouterr().err
    assert "stale" in page.read_text()
    assert main(["docs", "page.md", "--data", str(tmp_path)]) == 0
    assert "`deletion`" in page.read_text() and main(["docs", "page.md", "--check", "--data", str(tmp_path)]) == 0


def test_the_repository_pages_are_current():
    """README.md and every page of docs/ hold the tables `faithmap docs` would write now."""
    data = load_picker_data(str(ROOT / "docs" / "data"))
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        page_dir = str(path.parent.relative_to(ROOT)) if path.parent != ROOT else "."
        assert render(text, data, page_dir) == text, f"{path.relative_to(ROOT)}: run `faithmap docs`"


SEED_FILES = re.compile(r"\b(igos|igos_plus_plus|aop_sigcam|gad|expected_gradcam)\.txt\b")


def test_public_text_cites_papers_not_seed_files():
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").rglob("*.md")]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in pages for m in SEED_FILES.finditer(p.read_text())]
    assert not found, found
    for spec in faithmap.METHODS:
        assert not SEED_FILES.search(spec.paper or ""), spec.name
