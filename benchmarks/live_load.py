"""Load of the live camera: CPU per judged frame, and frames a second sustained with 1 and 5 live users.

    python benchmarks/live_load.py --model model                    # 1 and 5 users, 30 s each
    python benchmarks/live_load.py --model model --users 1 5 10 --seconds 60 --json live.json

Starts the app as load_test.py does (MODEL_ID=DIR python app.py on a free port of
127.0.0.1), then, for each number of users, opens that many pages in one headless
Chromium (the system's /usr/bin/chromium) whose fake camera films a real lesion
blurred and dark (benchmarks/camera_clip.py), so that every frame is judged, refused,
and none ends the stream with a capture. Each page starts the live camera as a
person would. After a warm-up, it counts over --seconds the frames the app judged
and dropped (GET /api/timings) and the app process's CPU time (/proc), and prints:
frames judged a second, in all and per user (the page offers at most one every
LIVE_STREAM_EVERY seconds, and only once the previous one is answered); the app's
CPU per judged frame (everything: Gradio's transport of the JPEG frame, decoding,
the model, the check) and the model's share of it; frames dropped by the server.
The browser runs on the same machine and its CPU (video decoding, a JPEG per frame)
competes with the app's, as it would not on a real server: the rates are a floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from camera_clip import lesion_clip
from common import REPO_ROOT, conditions, write_json  # and the repository on sys.path
from load_test import cpu_seconds, free_port, start_app, stop, wait_until_up

from melanoma_screen.inference import default_model_source  # noqa: E402
from melanoma_screen.live import LIVE_STREAM_EVERY  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def timings(base: str) -> dict:
    with urllib.request.urlopen(f"{base}api/timings", timeout=10) as response:
        return json.loads(response.read())


def start_live_camera(page) -> None:
    """The live tab, then the camera's two buttons (allow the webcam, record), found by position not by text."""
    page.locator("#modes [role=tab]").nth(1).click()
    buttons = page.locator("#live-camera button:visible")
    buttons.first.click()
    page.locator("#live-camera video").wait_for(state="visible")
    buttons.first.click()
    page.locator('#live-guidance [data-guidance]:not([data-guidance="start"])').wait_for()


def measure(browser, base: str, pid: int, users: int, warm_up: float, seconds: float) -> dict:
    pages = []
    try:
        for _ in range(users):
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(60_000)
            page.goto(base)
            start_live_camera(page)
            pages.append(page)
        time.sleep(warm_up)
        before, cpu_before, start = timings(base), cpu_seconds(pid), time.perf_counter()
        time.sleep(seconds)
        after, cpu_after, elapsed = timings(base), cpu_seconds(pid), time.perf_counter() - start
    finally:
        for page in pages:
            page.context.close()
    judged = after["live_frames"]["judged"] - before["live_frames"]["judged"]
    dropped = after["live_frames"]["dropped"] - before["live_frames"]["dropped"]
    model_cpu = sum(after["cpu_seconds"].values()) - sum(before["cpu_seconds"].values())
    return {
        "users": users, "seconds": round(elapsed, 1), "frames_judged": judged, "frames_dropped": dropped,
        "fps_total": round(judged / elapsed, 2), "fps_per_user": round(judged / elapsed / users, 2),
        "app_cpu_ms_per_frame": round(1000 * (cpu_after - cpu_before) / judged, 1) if judged else None,
        "model_cpu_ms_per_frame": round(1000 * model_cpu / judged, 1) if judged else None,
        "app_cpu_cores_busy": round((cpu_after - cpu_before) / elapsed, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default=None, help="model folder (default: $MODEL_ID, else ./model)")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 5], help="live users at once (default: 1 5)")
    parser.add_argument("--seconds", type=float, default=30, help="seconds measured per user count (default: 30)")
    parser.add_argument("--warm-up", type=float, default=5, help="seconds streamed before measuring (default: 5)")
    parser.add_argument("--lesion", default=str(REPO_ROOT / "examples" / "malignant_1.jpg"),
                        help="the lesion the fake camera films (default: examples/malignant_1.jpg)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing (apt-get install chromium).", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    model = args.model or default_model_source()
    results = {"model": model, "stream_every_s": LIVE_STREAM_EVERY, "conditions": conditions(), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        clip = lesion_clip(args.lesion, Path(folder) / "refused.y4m", bad_seconds=10, good_seconds=0)
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        with (Path(folder) / "app.log").open("w") as log:
            app = start_app(model, port, log)
        try:
            wait_until_up(base, app, 300)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={clip}"])
                try:
                    for users in args.users:
                        run = measure(browser, base, app.pid, users, args.warm_up, args.seconds)
                        results["runs"].append(run)
                        print(f"{users} live user(s): {run['fps_total']} frames judged/s ({run['fps_per_user']} per "
                              f"user; at most {1 / LIVE_STREAM_EVERY:.1f} offered), {run['frames_dropped']} dropped; "
                              f"app CPU {run['app_cpu_ms_per_frame']} ms per judged frame (model and check: "
                              f"{run['model_cpu_ms_per_frame']} ms), {run['app_cpu_cores_busy']} cores busy",
                              flush=True)
                finally:
                    browser.close()
        finally:
            stop(app)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
