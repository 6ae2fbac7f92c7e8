"""The container image: the real Dockerfile, built with podman and started, answers as the app does outside it.

No container registry is reachable here, so the image is built on a local base:
.ci/container_base.sh debootstraps a Debian bookworm with its python3 (3.11) and
imports it (cached under /var/cache/melanoma-screen). The wheels come from this
machine's pip (benchmarks/container.py). The build takes minutes the first time
on a machine and reuses its layers after that.

This test is not skipped where podman is missing: it fails and says how to get
it (.ci/run installs it). Deselect it on a workstation with `-m "not container"`.
MELANOMA_TEST_IMAGE=TAG checks an image already built instead of building one; CI
never sets it. PODMAN sets the podman command and its store (benchmarks/container.py).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
import time
import urllib.request

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.container

EXAMPLES = REPO_ROOT / "examples"
LESION = EXAMPLES / "malignant_1.jpg"


@pytest.fixture(scope="module")
def container_tools():
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed, so the container image cannot be built and tested: "
                    "apt-get install podman debootstrap (as .ci/run does), or deselect with -m 'not container'")
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed, so the local base image cannot be made: apt-get install debootstrap")
    import container  # benchmarks/container.py, on the path through conftest

    return container


@pytest.fixture(scope="module")
def image(container_tools, tmp_path_factory):
    if os.environ.get("MELANOMA_TEST_IMAGE"):  # an image already built from this Dockerfile, to re-check it quickly
        return os.environ["MELANOMA_TEST_IMAGE"]
    log = tmp_path_factory.mktemp("container") / "build.log"
    try:
        container_tools.build_image(container_tools.IMAGE, log_path=log)
    except container_tools.ContainerError as error:
        pytest.fail(str(error), pytrace=False)
    return container_tools.IMAGE


@pytest.fixture(scope="module")
def running(container_tools, image):
    """(base URL, container id) of the image started as a user would: its own CMD, settings and user."""
    container, port = container_tools.create_container(image)
    try:
        container_tools.start_container(container)  # at the test's priority (nice), like the app outside
        url = f"http://127.0.0.1:{port}/"
        try:
            container_tools.wait_for_prediction(url, LESION, lambda: container_tools.container_running(container))
        except container_tools.ContainerError as error:
            pytest.fail(f"{error}\n--- container log ---\n{container_tools.container_logs(container)}", pytrace=False)
        yield url, container
    finally:
        container_tools.remove_container(container)


@pytest.fixture(scope="module")
def app_outside():
    """`import app` with the bundled model/, the app the image serves, run here outside the container."""
    previous = os.environ.pop("MODEL_ID", None)
    try:
        sys.modules.pop("app", None)
        module = importlib.import_module("app")
    finally:
        if previous is not None:
            os.environ["MODEL_ID"] = previous
    assert module.MODEL is not None, module.MODEL_ERROR
    return module


def exec_in(container_tools, container: str, *command: str) -> str:
    return container_tools.podman("exec", container, *command).stdout.strip()


def test_real_lesion_gets_the_same_prediction_as_outside(container_tools, running, app_outside):
    url, _ = running
    inside = container_tools.predict_once(url, LESION)
    outside = app_outside.analyse(str(LESION)).answer
    assert "label" in inside, inside
    # Label, risk level, thresholds, model name and version (the weights' hash): identical.
    assert {k: v for k, v in inside.items() if k != "probabilities"} == \
        {k: v for k, v in outside.items() if k != "probabilities"}
    assert inside["probabilities"].keys() == outside["probabilities"].keys()
    for name, probability in outside["probabilities"].items():
        assert math.isclose(inside["probabilities"][name], probability, abs_tol=1e-4), (name, inside, outside)


def test_non_image_gets_its_clear_error(container_tools, running, app_outside, tmp_path):
    url, _ = running
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello, this is not an image\n")
    inside = container_tools.predict_once(url, text_file)
    assert inside == app_outside.analyse(str(text_file)).answer
    assert "not an image" in inside["error"], inside
    assert "Traceback" not in json.dumps(inside)


def test_the_app_runs_as_a_non_root_user(container_tools, running):
    _, container = running
    # The app's own process (PID 1 of the container), not merely the user `exec` gets.
    status = exec_in(container_tools, container, "cat", "/proc/1/status")
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert "app.py" in exec_in(container_tools, container, "cat", "/proc/1/cmdline")
    # It cannot write next to its code or model.
    probe = exec_in(container_tools, container, "sh", "-c", "touch /app/model/x 2>/dev/null && echo writable || echo read-only")
    assert probe == "read-only"


def test_health_endpoint_and_healthcheck_say_the_model_is_loaded(container_tools, running, image):
    url, container = running
    with urllib.request.urlopen(f"{url}healthz", timeout=10) as response:
        assert response.status == 200
        assert json.load(response)["status"] == "ok"
    healthcheck = json.loads(container_tools.podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                                                    image).stdout)
    assert "/healthz" in " ".join(healthcheck["Test"])
    # The image's own HEALTHCHECK command, run inside the container, passes.
    assert container_tools.podman("healthcheck", "run", container, check=False).returncode == 0


def test_predictions_store_nothing_and_the_image_holds_only_the_app(container_tools, running):
    _, container = running
    # Feedback is written only when a person presses "Send report"; the predictions above did not.
    assert exec_in(container_tools, container, "ls", "-A", "/data/feedback") == ""
    settings = exec_in(container_tools, container, "env")
    for setting in ("HF_HUB_OFFLINE=1", "GRADIO_ANALYTICS_ENABLED=False", "FEEDBACK_DIR=/data/feedback"):
        assert setting in settings.splitlines()
    shipped = set(exec_in(container_tools, container, "ls", "-A", "/app").split())
    assert shipped == {"app.py", "predict.py", "melanoma_screen", "examples", "model"}
    # No compiler, no pip cache, no pip.
    assert exec_in(container_tools, container, "sh", "-c", "command -v gcc cc pip || true") == ""


def test_health_endpoint_outside_answers_503_without_a_model(app_outside, monkeypatch):
    monkeypatch.setattr(app_outside, "MODEL", None)
    monkeypatch.setattr(app_outside, "MODEL_ERROR", "no model was given")
    payload, status = app_outside.health()
    assert status == 503 and payload["status"] == "no_model"


def test_build_housekeeping_removes_stale_scratch_and_refuses_a_full_disk(tmp_path, monkeypatch):
    """Without podman: what the build does so that a day of CI builds cannot fill the disk."""
    import container

    monkeypatch.setattr(container, "PODMAN", ["podman", "--root", str(tmp_path / "store" / "containers")])
    scratch = container.build_scratch_parent()
    assert scratch == tmp_path / "store" / "build-tmp"
    stale, live = scratch / "tmp-killed-build", scratch / "tmp-running-build"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "layer.blob").write_bytes(b"x" * 1024)
    three_hours_ago = time.time() - 3 * 3600
    os.utime(stale, (three_hours_ago, three_hours_ago))
    container.remove_stale_build_scratch()
    assert not stale.exists() and (live / "layer.blob").is_file()

    free = shutil.disk_usage(tmp_path).free
    container.check_free_space(needed=1)
    with pytest.raises(container.ContainerError, match=r"GB free under .*needs about"):
        container.check_free_space(needed=free * 10)
