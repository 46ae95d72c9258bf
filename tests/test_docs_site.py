"""The built documentation site in a real headless browser: the quick start page renders with its
pictures decoded (``make docs`` builds the site into site/ and runs this file; without a built site,
playwright or a chromium, it skips and says which is missing)."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SITE = pathlib.Path(os.environ.get("FAITHMAP_SITE", ROOT / "site"))

pytestmark = pytest.mark.browser


def _browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium on PATH (`make chromium` installs Debian's; playwright's own browser "
                    "download is not from a package registry, so none is fetched)")
    return exe


def _page(name: str) -> pathlib.Path:
    page = SITE / name / "index.html"
    if not page.is_file():
        pytest.skip(f"the site is not built ({page} missing): `make docs` builds it, then runs this test")
    return page


def _images(page: pathlib.Path) -> tuple[str, list[dict]]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the docs extra: pip install -e '.[docs]'")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_browser(), args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page()
            tab.goto(page.as_uri(), wait_until="load")
            title = tab.locator("article h1").first.inner_text()
            images = tab.evaluate("""Array.from(document.querySelectorAll('article img')).map(i => (
                {src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))""")
        finally:
            browser.close()
    return title, images


def test_the_quick_start_renders_with_its_pictures():
    title, images = _images(_page("quickstart"))
    assert title.startswith("Quick start")
    sources = {pathlib.PurePosixPath(i["src"]).name: i for i in images}
    assert {"quickstart.png", "report.png"} <= set(sources), sources
    for name in ("quickstart.png", "report.png"):
        img = sources[name]
        assert img["complete"] and img["width"] > 300 and img["height"] > 100, img  # decoded, not a broken icon


def test_the_executed_tutorial_shows_its_figure():
    """The figure a tutorial's code drew while the site was built is in the page, decoded."""
    _, images = _images(_page("tutorials/own-model"))
    drawn = [i for i in images if (i["src"] or "").startswith("data:image/png;base64,")]
    assert drawn and all(i["complete"] and i["width"] > 100 for i in drawn), images
