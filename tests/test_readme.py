"""The README's Python snippet runs as written and ends in a picture (headless, in a temporary folder)."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_snippet() -> str:
    text = README.read_text()
    m = re.search(r"^## Python\n\n```python\n(.*?)^```", text, re.S | re.M)
    assert m, "the README's Python section no longer starts with a ```python block"
    return m.group(1)


def test_the_snippet_is_short_and_ends_in_a_picture():
    lines = [ln for ln in python_snippet().splitlines() if ln.strip()]
    assert len(lines) <= 10
    assert "exp.show(" in python_snippet() and ".savefig(" in lines[-1]


@pytest.mark.slow
def test_the_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    exec(compile(python_snippet(), str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert printed.startswith("Explanation(gradcam on efficientnet_lite0: 1 image") and "'espresso'" in printed
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1
    arr = np.asarray(Image.open(pngs[0]))
    assert arr.shape[1] > 600 and arr.std() > 20  # photo, overlay and curves side by side, not blank
