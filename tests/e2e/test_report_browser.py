"""The HTML report in a real browser (Playwright driving Debian's headless Chromium): it renders
without console errors, every section is there, every embedded image decodes; a screenshot is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

from unit.test_report import make_fake_run  # noqa: E402

from llamaforge.report import SECTIONS, build_report  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_report_renders_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    html_path, _ = build_report(make_fake_run(tmp_path))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(html_path.as_uri())
            page.wait_for_load_state("load")

            for sid, title in SECTIONS.items():
                heading = page.locator(f"section#{sid} > h2")
                assert heading.count() == 1, sid
                assert heading.inner_text() == title
            assert "stage not run" in page.locator("section#distillation").inner_text()

            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
            assert len(images) >= 9
            assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
            # Each section's figures sit inside it (the PPO log's curves under ppo-curves).
            assert page.locator("section#ppo-curves img").count() == 2
            assert page.locator("section#rlhf-versions img").count() == 1

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
            assert problems == []
        finally:
            browser.close()
