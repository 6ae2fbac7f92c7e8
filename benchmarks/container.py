"""The container image against the app outside it: size, cold start and memory, idle and under load.

    python benchmarks/container.py                       # build the image, then measure both
    python benchmarks/container.py --image localhost/melanoma-screen:test --json container.json

Builds the repository's Dockerfile with podman (unless --image names one that
exists), on a local base image when no registry is reachable: .ci/container_base.sh
debootstraps a Debian bookworm with its python3 and imports it. The Python
wheels come from a local wheelhouse (pip download of requirements.txt, cached
under --cache) served to the build over 127.0.0.1, because the CPU torch on this
machine is not what PyPI serves under that version.

Then, for the app outside the container (`python app.py`) and inside it
(`podman start`), the same measurements:
  cold start   from starting the process / container to the first answered /predict;
  idle memory  resident set size (RSS, the process and its children) 5 s after that;
  load memory  peak RSS while benchmarks/load_test.py's 20 clients call /predict.
RSS is read from /proc on the host for both, so the two columns are the same
measurement, and the container gets this process's priority (its processes'
nice value, and the CPU weight of its cgroup), so a `nice -n 19` reaches both. The image size is what podman reports for it. Container creation
(`podman create`) is timed apart from the cold start. Everything stays on 127.0.0.1.

tests/test_container.py uses the same functions to build and start the image.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shlex
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from common import REPO_ROOT, conditions, default_images_dir, list_images, take, write_json  # and the repository on sys.path
from load_test import HOST, free_port, run_clients, start_app, stop

IMAGE = "localhost/melanoma-screen:test"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/melanoma-screen-base:bookworm")
CACHE = Path(os.environ.get("BASE_CACHE", "/var/cache/melanoma-screen"))
# A store of its own (so the driver cannot clash with the machine's default store), kept
# between runs for podman's layer cache; cgroupfs because CI has no systemd. Where the
# kernel refuses overlay mounts, PODMAN="podman --storage-driver vfs --cgroup-manager cgroupfs"
# works too, at several times the build time (every layer is a full copy).
PODMAN = shlex.split(os.environ.get("PODMAN", "podman --root /var/lib/melanoma-screen/containers "
                                    "--runroot /run/melanoma-screen/containers --storage-driver overlay "
                                    "--cgroup-manager cgroupfs"))
# Some sandboxes (this CI's among them) refuse to raise a container's rlimits to podman's
# defaults (setrlimit fails with EPERM in the OCI runtime); these fit under their ceiling
# and are plenty for the app. An ordinary Docker or podman host needs no --ulimit.
RUN_LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
CONTAINER_PORT = 7860


class ContainerError(RuntimeError):
    """A step of building or running the image failed; the message says which and why."""


def podman(*args: str, check: bool = True, timeout: float | None = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise ContainerError(f"`podman {' '.join(args[:3])} ...` failed ({result.returncode}):\n"
                             f"{(result.stdout + result.stderr)[-4000:]}")
    return result


def ensure_base(image: str = BASE_IMAGE) -> str:
    """The local base image (made and cached by .ci/container_base.sh on first use)."""
    env = {**os.environ, "BASE_IMAGE": image, "BASE_CACHE": str(CACHE), "PODMAN": shlex.join(PODMAN)}
    result = subprocess.run([str(REPO_ROOT / ".ci" / "container_base.sh")], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ContainerError(f"making the base image {image} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return image


def wheelhouse(folder: Path = CACHE / "wheels") -> Path:
    """Wheels for requirements.txt, downloaded once by this machine's pip (its indexes and wheel folders)."""
    folder.mkdir(parents=True, exist_ok=True)
    requirements = (REPO_ROOT / "requirements.txt").read_bytes()
    stamp = folder / "requirements.sha256"  # the requirements these wheels were downloaded for
    if stamp.is_file() and stamp.read_text() == hashlib.sha256(requirements).hexdigest():
        return folder
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(folder),
               "-r", str(REPO_ROOT / "requirements.txt")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerError(f"downloading the wheels failed:\n{(result.stdout + result.stderr)[-4000:]}")
    stamp.write_text(hashlib.sha256(requirements).hexdigest())
    return folder


@contextmanager
def serve_folder(folder: Path):
    """An HTTP listing of `folder` on 127.0.0.1 (pip --find-links reads it), for as long as the block runs."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    with socketserver.ThreadingTCPServer((HOST, 0), QuietHandler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{HOST}:{server.server_address[1]}/"
        finally:
            server.shutdown()


# A build whose requirements changed writes the environment's layer (~2 GB) three times at
# its peak: the container's file system, the layer blob in the build's temporary folder
# and the stored layer.
BUILD_FREE_BYTES = 8 * 1024**3


def store_root() -> Path:
    """The folder holding podman's layers: the --root in PODMAN, else podman's default."""
    if "--root" in PODMAN:
        return Path(PODMAN[PODMAN.index("--root") + 1])
    return Path("/var/lib/containers/storage")


def build_scratch_parent() -> Path:
    """Where builds keep their temporary layer blobs: beside the store rather than /var/tmp,
    so that a build killed midway (a timeout, a cancelled CI job) leaves them where the next
    build finds and removes them."""
    return store_root().parent / "build-tmp"


def remove_stale_build_scratch(older_than_s: float = 2 * 3600) -> None:
    """Folders of builds that ended without cleaning up. A live build is younger than its
    one-hour timeout, so builds running side by side never lose each other's files."""
    parent = build_scratch_parent()
    if not parent.is_dir():
        return
    for folder in parent.iterdir():
        if time.time() - folder.stat().st_mtime > older_than_s:
            shutil.rmtree(folder, ignore_errors=True)


def prune_unused_layers() -> None:
    """Remove the images no tag needs any more: each build with changed sources or
    requirements leaves the previous image's layers behind (about 2 GB a time), which
    filled the CI machine's disk over a day of builds. The tagged images and the layer
    cache under them stay."""
    podman("image", "prune", "--force", check=False, timeout=1800)


def check_free_space(needed: int = BUILD_FREE_BYTES) -> None:
    for folder in (store_root(), build_scratch_parent()):
        probe = next((parent for parent in (folder, *folder.parents) if parent.exists()), Path("/"))
        free = shutil.disk_usage(probe).free
        if free < needed:
            raise ContainerError(
                f"only {free / 1024**3:.1f} GB free under {probe}, and building the image needs about "
                f"{needed / 1024**3:.0f} GB there. Unused layers were pruned already; free space, "
                f"or point PODMAN's --root at a larger disk.")


def build_image(tag: str = IMAGE, base: str | None = None, log_path: Path | None = None) -> float:
    """Build the repository's Dockerfile on the local base with the local wheels; returns the seconds it took."""
    base = base or ensure_base()
    wheels = wheelhouse()
    remove_stale_build_scratch()
    prune_unused_layers()
    check_free_space()
    build_scratch_parent().mkdir(parents=True, exist_ok=True)
    with serve_folder(wheels) as url, tempfile.TemporaryDirectory(dir=build_scratch_parent()) as scratch:
        # chroot isolation: RUN steps work without the namespaces this sandbox lacks, and
        # share the host's network, so 127.0.0.1 reaches the wheel server. Docker format keeps HEALTHCHECK.
        command = [*PODMAN, "build", "--isolation", "chroot", "--format", "docker", "--tag", tag,
                   "--build-arg", f"BASE={base}", "--build-arg", f"PIP_OPTIONS=--no-index --find-links {url}",
                   str(REPO_ROOT)]
        started = time.perf_counter()
        with open(log_path or os.devnull, "w") as log:
            result = subprocess.run(command, stdout=log if log_path else subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, timeout=3600, env={**os.environ, "TMPDIR": scratch})
        seconds = time.perf_counter() - started
    prune_unused_layers()  # the previous image's layers, or this failed build's partial ones
    if result.returncode != 0:
        output = Path(log_path).read_text() if log_path else result.stdout
        raise ContainerError(f"podman build failed ({result.returncode}):\n{output[-6000:]}")
    return seconds


def image_size_bytes(tag: str = IMAGE) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


# The kernel's CPU weight of a task at nice 0..19 (sched_prio_to_weight).
NICE_WEIGHTS = [1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15]


def cpu_shares_like_this_process() -> int:
    """The container's CPU weight, equal to this process's: a container has a cgroup of its own,
    and the scheduler shares the CPU between cgroups before it looks at nice values inside them,
    so a niced test or benchmark would otherwise run the app inside at full priority."""
    return NICE_WEIGHTS[min(max(os.getpriority(os.PRIO_PROCESS, 0), 0), 19)]


def create_container(tag: str = IMAGE, port: int | None = None, extra: list[str] = ()) -> tuple[str, int]:
    """(container id, host port): created, not started, published on 127.0.0.1 only."""
    port = port or free_port()
    result = podman("create", *RUN_LIMITS, "--cpu-shares", str(cpu_shares_like_this_process()),
                    "--publish", f"{HOST}:{port}:{CONTAINER_PORT}", *extra, tag)
    return result.stdout.strip().splitlines()[-1], port


def remove_container(container: str) -> None:
    podman("rm", "--force", "--time", "5", container, check=False)


def container_logs(container: str) -> str:
    result = podman("logs", container, check=False)
    return (result.stdout + result.stderr)[-4000:]


def container_pid(container: str) -> int:
    """The host PID of the container's main process (the app)."""
    return int(podman("inspect", "--format", "{{.State.Pid}}", container).stdout.strip())


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def renice_like_this_process(pid: int) -> None:
    """Give the container's processes and threads this process's priority.

    The container is started by podman's monitor (conmon), not as a child of this
    process, so a `nice -n 19` around the benchmark or the tests would not reach the
    app inside (its CPU weight as a whole is create_container's --cpu-shares).
    """
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    for process in tree_pids(pid):
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                if os.getpriority(os.PRIO_PROCESS, int(task.name)) < niceness:
                    os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)
            except (OSError, ValueError):
                pass


def start_container(container: str) -> int:
    """Start a created container at this process's priority; returns the app's host PID."""
    podman("start", container)
    pid = container_pid(container)
    renice_like_this_process(pid)
    return pid


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of a process and all its descendants (Linux /proc), or None once it is gone."""
    total = 0
    for current in tree_pids(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            if current == pid:
                return None
    return total


def predict_once(base_url: str, image: Path, timeout: float = 30):
    """The /predict JSON for one image, over plain HTTP (upload, call, event stream), as curl would."""
    import httpx

    with httpx.Client(timeout=timeout) as http:
        upload = http.post(f"{base_url}gradio_api/upload", files={"files": (image.name, image.read_bytes())})
        upload.raise_for_status()
        payload = {"data": [{"path": upload.json()[0], "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}]}
        call = http.post(f"{base_url}gradio_api/call/predict", json=payload)
        call.raise_for_status()
        event = None
        with http.stream("GET", f"{base_url}gradio_api/call/predict/{call.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    if event == "error":
                        raise ContainerError(f"/predict answered with an error event: {line}")
                    return json.loads(line.partition(":")[2])[0]
    raise ContainerError("/predict's event stream ended without a result")


def wait_for_prediction(base_url: str, image: Path, alive, timeout: float = 300) -> dict:
    """Poll /predict until it answers; `alive()` is False once the server has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise ContainerError("the app stopped before answering /predict")
        try:
            return predict_once(base_url, image)
        except (OSError, ContainerError, ValueError) as error:  # not listening yet, or still starting
            if isinstance(error, ContainerError) and "error event" in str(error):
                raise
        except Exception:  # httpx's transport errors while the port is not open yet
            pass
        time.sleep(0.25)
    raise ContainerError(f"/predict did not answer at {base_url} within {timeout:.0f} s")


def container_running(container: str) -> bool:
    result = podman("inspect", "--format", "{{.State.Running}}", container, check=False)
    return result.stdout.strip() == "true"


class PeakSampler:
    """The highest RSS of a process tree, sampled every `interval` seconds while the block runs."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid) or 0)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(base_url: str, pid: int, alive, started: float, args, paths) -> dict:
    """Cold start (from `started`), idle RSS and peak RSS under the load test, for a server being started."""
    first = wait_for_prediction(base_url, paths[0], alive, timeout=args.startup_timeout)
    cold_start_s = time.perf_counter() - started
    if "label" not in first:
        raise ContainerError(f"the first /predict did not give a prediction: {first}")
    time.sleep(5)  # let start-up garbage and the first request's buffers settle
    idle = tree_rss_bytes(pid)
    with PeakSampler(pid) as sampler:
        outcome = run_clients(base_url, take(paths, args.clients * args.requests), args.clients, args.requests,
                              args.deadline)
    latencies = sorted(outcome["latencies"])
    return {"cold_start_s": cold_start_s, "idle_rss_mib": idle / 2**20, "load_peak_rss_mib": sampler.peak / 2**20,
            "load_ok": len(latencies), "load_errors": len(outcome["errors"]),
            "load_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "load_throughput_per_s": len(latencies) / outcome["wall_s"]}


def measure_outside(args, paths) -> dict:
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        started = time.perf_counter()
        process = start_app(str(REPO_ROOT / "model"), port, log)
        try:
            return measure(f"http://{HOST}:{port}/", process.pid, lambda: process.poll() is None, started, args, paths)
        except ContainerError as error:
            log.seek(0)
            raise ContainerError(f"outside the container: {error}\n--- app log (end) ---\n{log.read()[-3000:]}") from None
        finally:
            stop(process)


def measure_inside(args, paths) -> dict:
    started = time.perf_counter()
    container, port = create_container(args.image)
    create_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        pid = start_container(container)
        try:
            result = measure(f"http://{HOST}:{port}/", pid, lambda: container_running(container), started, args, paths)
        except ContainerError as error:
            raise ContainerError(f"{error}\n--- container log ---\n{container_logs(container)}") from None
        return {"create_s": create_s, **result}
    finally:
        remove_container(container)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--image", default=IMAGE, help=f"image to measure; built first unless it exists (default: {IMAGE})")
    parser.add_argument("--rebuild", action="store_true", help="build the image even when it exists")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients of the load test (default: 20)")
    parser.add_argument("--requests", type=int, default=10, help="/predict calls per client (default: 10)")
    parser.add_argument("--images", default=None, help="folder of images (default: the shared test split, else examples/)")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for the first /predict")
    parser.add_argument("--deadline", type=float, default=600, help="seconds after which load-test clients stop")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    paths = list_images(args.images or default_images_dir())
    steps = tqdm(total=3, desc="container benchmark", unit="step")
    try:
        build_s = None
        if args.rebuild or podman("image", "exists", args.image, check=False).returncode != 0:
            steps.set_postfix_str("building the image")
            build_s = build_image(args.image)
        steps.update()
        steps.set_postfix_str("outside the container")
        outside = measure_outside(args, paths)
        steps.update()
        steps.set_postfix_str("inside the container")
        inside = measure_inside(args, paths)
        steps.update()
    except ContainerError as error:
        steps.close()
        print(f"container benchmark failed: {error}", file=sys.stderr)
        return 2
    steps.close()
    size_mb = image_size_bytes(args.image) / 1e6
    result = {"image": args.image, "image_size_mb": size_mb, "build_s": build_s, "outside": outside,
              "inside": inside, "clients": args.clients, "requests_per_client": args.requests,
              "conditions": conditions()}
    print(f"image {args.image}: {size_mb:.0f} MB" + (f" (built in {build_s:.0f} s)" if build_s else ""))
    print(f"container creation (podman create): {inside['create_s']:.1f} s")
    print(f"{'':34}{'outside':>10}{'container':>11}{'ratio':>8}")
    rows = [("cold start to first /predict (s)", "cold_start_s", 1), ("idle RSS (MiB)", "idle_rss_mib", 0),
            (f"peak RSS, {args.clients} clients (MiB)", "load_peak_rss_mib", 0),
            ("load-test p50 latency (ms)", "load_p50_ms", 0), ("load-test throughput (req/s)", "load_throughput_per_s", 2)]
    for name, key, digits in rows:
        a, b = outside[key], inside[key]
        ratio = f"{b / a:.2f}" if a and b else "?"
        print(f"{name:34}{a:>10.{digits}f}{b:>11.{digits}f}{ratio:>8}")
    print(f"load-test errors: outside {outside['load_errors']}, container {inside['load_errors']}")
    write_json(args.json, result)
    return 1 if outside["load_errors"] or inside["load_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
