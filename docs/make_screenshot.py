"""The README's picture of the app: the shipped model on the first malignant example, in headless Chromium.

    python docs/make_screenshot.py            # writes docs/app.png

Starts `python app.py` with the model in model/ on a free port, clicks the fifth
example (the first malignant one, examples/labels.csv order), waits for the risk
level and the heat-map, and saves the page. Uses the system Chromium
(/usr/bin/chromium, Debian package `chromium`), never a downloaded browser.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from load_test import free_port, wait_until_up  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
OUT = REPO_ROOT / "docs" / "app.png"


def main() -> int:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port),
           "MODEL_ID": str(REPO_ROOT / "model"), "FEEDBACK_DIR": tempfile.mkdtemp(prefix="screenshot_feedback_")}
    env.pop("FEEDBACK_DATASET", None)
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, app, timeout=600)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            page.locator('#examples [data-testid="dataset-cell-4-0"]').click()
            expect(page.locator("#risk [data-risk]")).to_be_visible()
            expect(page.locator("#heatmap img")).to_be_visible()
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUT), full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=60)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
