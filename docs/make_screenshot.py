"""The README's pictures of the app: the shipped model on the first malignant example, in headless Chromium.

    python docs/make_screenshot.py            # writes docs/app.png
    python docs/make_screenshot.py --live     # writes docs/app-live.png: the live camera, on a phone

Starts `python app.py` with the model in model/ on a free port, clicks the fifth
example (the first malignant one, examples/labels.csv order), waits for the risk
level and the heat-map, and saves the page. With --live, a phone-sized page whose
fake camera films that example's lesion (blurred and dark, then sharp:
benchmarks/camera_clip.py) starts the live camera and is saved once the picture
is taken and scored. Uses the system Chromium
(/usr/bin/chromium, Debian package `chromium`), never a downloaded browser.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from camera_clip import lesion_clip  # noqa: E402
from live_load import start_live_camera  # noqa: E402
from load_test import free_port, wait_until_up  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
OUT = REPO_ROOT / "docs" / "app.png"
LIVE_OUT = REPO_ROOT / "docs" / "app-live.png"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/make_screenshot.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--live", action="store_true",
                        help=f"the live camera on a phone-sized page, into {LIVE_OUT.relative_to(REPO_ROOT)} "
                             f"(default: the upload on a desktop page, into {OUT.relative_to(REPO_ROOT)})")
    live = parser.parse_args(argv).live
    out = LIVE_OUT if live else OUT
    from playwright.sync_api import expect, sync_playwright  # after --help, which needs no browser

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port),
           "MODEL_ID": str(REPO_ROOT / "model"), "FEEDBACK_DIR": tempfile.mkdtemp(prefix="screenshot_feedback_")}
    env.pop("FEEDBACK_DATASET", None)
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, app, timeout=600)
        with sync_playwright() as playwright:
            args = CHROMIUM_ARGS
            if live:
                clip = lesion_clip(REPO_ROOT / "examples" / "malignant_1.jpg", Path(env["FEEDBACK_DIR"]) / "clip.y4m")
                args = [*args, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-video-capture={clip}"]
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
            viewport = {"width": 390, "height": 844} if live else {"width": 1280, "height": 900}
            page = browser.new_context(viewport=viewport, device_scale_factor=2 if live else 1).new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            if live:
                start_live_camera(page)
                expect(page.locator('#live-guidance [data-guidance="captured"]')).to_be_visible()
            else:
                page.locator('#examples [data-testid="dataset-cell-4-0"]').click()
            expect(page.locator("#risk [data-risk]")).to_be_visible()
            expect(page.locator("#heatmap img")).to_be_visible()
            page.wait_for_timeout(500)
            if live:  # the page down to the result's heat-map: what a phone shows of a capture
                bottom = page.locator("#heatmap").bounding_box()
                page.screenshot(path=str(out), full_page=True,
                                clip={"x": 0, "y": 0, "width": 390, "height": bottom["y"] + bottom["height"]})
            else:
                page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=60)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
