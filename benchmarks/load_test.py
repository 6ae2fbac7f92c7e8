"""Load test of the app: many concurrent users calling /predict over plain HTTP, on this machine only.

    python benchmarks/load_test.py --model model --clients 20 --requests 10
    python benchmarks/load_test.py --model model --competing-job     # beside another CPU-bound job

Starts `MODEL_ID=DIR GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT=FREE_PORT python app.py`
as a child process and waits until it answers (the app's time to its first answered
request is reported too). Then, for each route (--route, default both),
--clients asynchronous users, all in one event loop (httpx), each send
--requests calls with real images. The "gradio" route is /predict through
Gradio's REST API, as curl would: upload the file (POST /gradio_api/upload),
start the call (POST /gradio_api/call/predict), read its event stream
(GET /gradio_api/call/predict/EVENT_ID) until `complete`. The "lean" route is
the app's POST /api/screen with the image as the body. All start together. gradio_client is not used: its threads and polling cost about
eight times the app's CPU per request, so on a 2-core machine the figures
measured the load generator. Reports errors, p50/p95 latency per request
(upload + queue + prediction), throughput, the CPU time per request of the
app and of this load generator, and the app's CPU per request by stage (decode,
resize, statistics, model, feature space, from the app's /api/timings; the rest
is the web framework's: HTTP, upload, queue, event stream, JSON). --competing-job
runs one busy process per core beside the app meanwhile, as another job on the
machine would. Every request goes to 127.0.0.1, and the run is
bounded: clients x requests calls, --deadline seconds. Exit status 1 when any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from pathlib import Path

from common import (REPO_ROOT, competing_cpu_job, conditions, default_images_dir, list_images, summary_ms,  # noqa: F401
                    take, write_json)  # and the repository on sys.path

from melanoma_screen.inference import default_model_source  # noqa: E402

HOST = "127.0.0.1"  # loopback only, by design


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default=None, help="model folder (default: $MODEL_ID, else ./model)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default: 20)")
    parser.add_argument("--requests", type=int, default=10, help="/predict calls per client (default: 10)")
    parser.add_argument("--images", default=None, help="folder of images (default: the shared test split, else examples/)")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for the app to answer")
    parser.add_argument("--deadline", type=float, default=600, help="seconds after which clients stop sending")
    parser.add_argument("--route", choices=["both", "gradio", "lean"], default="both",
                        help="gradio: /predict through Gradio's REST API; lean: POST /api/screen (default: both)")
    parser.add_argument("--competing-job", action="store_true",
                        help="run one CPU-bound process per core beside the app during the test")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_app(model: str, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "MODEL_ID": model, "GRADIO_SERVER_NAME": HOST, "GRADIO_SERVER_PORT": str(port)}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py")], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _one_request(http, base: str, path: Path) -> str | None:
    """Upload, call and read the result of one /predict; None when it succeeded, else what went wrong."""
    with open(path, "rb") as handle:
        content = handle.read()
    upload = await http.post(f"{base}gradio_api/upload", files={"files": (path.name, content, "image/jpeg")})
    upload.raise_for_status()
    server_path = upload.json()[0]
    payload = {"data": [{"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}]}
    call = await http.post(f"{base}gradio_api/call/predict", json=payload)
    call.raise_for_status()
    event_id = call.json()["event_id"]
    event = None
    async with http.stream("GET", f"{base}gradio_api/call/predict/{event_id}") as stream:
        stream.raise_for_status()
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = line.partition(":")[2].strip()
                if event == "error":
                    return f"the app answered with an error event: {data}"
                result = json.loads(data)[0]
                if not isinstance(result, dict):
                    return f"unexpected answer {result!r}"
                # A refusal by the input check is an answer, not a failure of the app.
                return None if "label" in result or "reason" in result else result.get("error", repr(result))
    return "the event stream ended without a result"


async def _one_lean_request(http, base: str, path: Path) -> str | None:
    """One POST of the image to the lean route; None when it succeeded, else what went wrong."""
    response = await http.post(f"{base}api/screen", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
    response.raise_for_status()
    result = response.json()
    if not isinstance(result, dict):
        return f"unexpected answer {result!r}"
    return None if "label" in result or "reason" in result else result.get("error", repr(result))


REQUESTS = {"gradio": _one_request, "lean": _one_lean_request}


async def _run_clients(url: str, paths, clients: int, requests: int, deadline_s: float, route: str = "gradio") -> dict:
    import httpx

    latencies, errors = [], []
    start_together = asyncio.Event()
    stop_at = [float("inf")]
    timeout = httpx.Timeout(deadline_s + 60)

    async def client_loop(index: int):
        # One connection pool per user, as separate browsers or scripts would have.
        async with httpx.AsyncClient(timeout=timeout) as http:
            await start_together.wait()
            for k in range(requests):
                if time.monotonic() > stop_at[0]:
                    errors.append(f"client {index}: deadline reached before request {k + 1}")
                    return
                path = paths[(index * requests + k) % len(paths)]
                started = time.perf_counter()
                try:
                    problem = await REQUESTS[route](http, url, Path(path))
                except Exception as error:
                    problem = f"{type(error).__name__}: {error}"
                elapsed = time.perf_counter() - started
                if problem:
                    errors.append(f"client {index} request {k + 1}: {problem}")
                else:
                    latencies.append(elapsed)

    tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    await asyncio.sleep(0)  # every task reaches the start line before the gun
    start = time.perf_counter()
    stop_at[0] = time.monotonic() + deadline_s
    start_together.set()
    await asyncio.wait(tasks, timeout=deadline_s + 120)
    return {"latencies": latencies, "errors": errors, "wall_s": time.perf_counter() - start}


def run_clients(url: str, paths, clients: int, requests: int, deadline_s: float, route: str = "gradio") -> dict:
    return asyncio.run(_run_clients(url, paths, clients, requests, deadline_s, route))


def app_timings(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}api/timings", timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def first_answer_s(url: str, path: Path, started: float) -> float | None:
    """Seconds from the app's start to its first answered /api/screen request."""
    request = urllib.request.Request(f"{url}api/screen", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            json.loads(response.read())
        return time.perf_counter() - started
    except (OSError, ValueError):
        return None


def heatmap_ready_s(url: str, started: float, timeout: float = 180.0) -> float | None:
    """Seconds from the app's start until /healthz says the heat-map's PyTorch model is loaded; None on timeout.

    The app scores pictures before that (ScreeningModel.warm_up loads it in the
    background); the load is measured after it, so that the figures are the
    steady state and not the warm-up's CPU. An app without a model (503) has no
    heat-map to wait for.
    """
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(f"{url}healthz", timeout=10) as response:
                if json.loads(response.read()).get("heatmap_ready", True):
                    return time.perf_counter() - started
        except urllib.error.HTTPError:
            return time.perf_counter() - started
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return None


def measure_route(url: str, process, paths, args, route: str) -> dict:
    before_timings, server_cpu, clients_cpu = app_timings(url), cpu_seconds(process.pid), own_cpu_seconds()
    outcome = run_clients(url, paths, args.clients, args.requests, args.deadline, route)
    server_cpu_end, clients_cpu = cpu_seconds(process.pid), own_cpu_seconds() - clients_cpu
    after_timings = app_timings(url)
    server_cpu = None if server_cpu is None or server_cpu_end is None else server_cpu_end - server_cpu
    total = args.clients * args.requests
    latencies, errors = outcome["latencies"], outcome["errors"]
    stages = None
    if before_timings and after_timings and server_cpu is not None:
        stages = {name: 1000 * (after_timings["cpu_seconds"][name] - before_timings["cpu_seconds"].get(name, 0.0)) / total
                  for name in after_timings["cpu_seconds"]}
        stages["web framework and the rest"] = 1000 * server_cpu / total - sum(stages.values())
    return {
        "route": route, "requests": total, "ok": len(latencies), "errors": len(errors), "error_messages": errors[:20],
        "wall_s": outcome["wall_s"], "throughput_per_s": len(latencies) / outcome["wall_s"],
        "latency": summary_ms(latencies) if latencies else None,
        "server_cpu_ms_per_request": None if server_cpu is None else 1000 * server_cpu / total,
        "server_cpu_ms_per_request_by_stage": stages,
        "clients_cpu_ms_per_request": 1000 * clients_cpu / total,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    model = args.model or default_model_source()
    images_dir = args.images or default_images_dir()
    paths = take(list_images(images_dir), args.clients * args.requests)
    port = free_port()
    url = f"http://{HOST}:{port}/"

    routes = ["gradio", "lean"] if args.route == "both" else [args.route]
    with tempfile.TemporaryFile(mode="w+") as log, competing_cpu_job(args.competing_job):
        process = start_app(model, port, log)
        try:
            started = time.perf_counter()
            wait_until_up(url, process, args.startup_timeout)
            startup_s = time.perf_counter() - started
            first_s = first_answer_s(url, Path(paths[0]), started)
            heatmap_s = heatmap_ready_s(url, started)
            measured = [measure_route(url, process, paths, args, route) for route in routes]
        except RuntimeError as error:
            log.seek(0)
            print(f"load test aborted: {error}\n--- app log (end) ---\n{log.read()[-3000:]}", file=sys.stderr)
            return 2
        finally:
            stop(process)

    result = {
        "model": str(model), "clients": args.clients, "requests_per_client": args.requests,
        "requests": sum(row["requests"] for row in measured), "ok": sum(row["ok"] for row in measured),
        "errors": sum(row["errors"] for row in measured), "app_startup_s": startup_s,
        "app_first_answer_s": first_s, "app_heatmap_ready_s": heatmap_s, "competing_job": args.competing_job, "conditions": conditions(),
        "routes": {row["route"]: row for row in measured},
    }
    first = "?" if first_s is None else f"{first_s:.1f}"
    heatmap = "?" if heatmap_s is None else f"{heatmap_s:.1f}"
    print(f"app on {url} (model {model}) up in {startup_s:.1f} s, first request answered {first} s after start, "
          f"heat-map model ready after {heatmap} s (the load starts then); "
          f"{args.clients} clients x {args.requests} requests per route with images from {images_dir}"
          f"{', beside a competing CPU job' if args.competing_job else ''}; load average at start "
          f"{result['conditions']['load_average_1min_at_start']}")
    for row in measured:
        for message in row["error_messages"][:10]:
            print(f"  {row['route']} error:", message)
        if row["latency"]:
            print(f"{row['route']:7s} ok={row['ok']} errors={row['errors']} p50={row['latency']['p50_ms']:.0f}ms "
                  f"p95={row['latency']['p95_ms']:.0f}ms throughput={row['throughput_per_s']:.1f} req/s "
                  f"wall={row['wall_s']:.1f}s")
        else:
            print(f"{row['route']:7s} ok=0 errors={row['errors']}")
        server = row["server_cpu_ms_per_request"]
        print(f"        CPU per request: app {'?' if server is None else f'{server:.1f}'} ms, "
              f"load generator {row['clients_cpu_ms_per_request']:.1f} ms")
        if row["server_cpu_ms_per_request_by_stage"]:
            print("        app CPU by stage (ms/request): " + ", ".join(
                f"{name} {value:.1f}" for name, value in row["server_cpu_ms_per_request_by_stage"].items()))
    print(f"errors={result['errors']}")
    write_json(args.json, result)
    return 1 if result["errors"] or not result["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
