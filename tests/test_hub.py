import hashlib
import time

import huggingface_hub
import pytest

from melanoma_screen.hub import HubPushError, push_folder_to_hub, resolve_token


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "vit-melanoma"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "vit"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "README.md").write_text("# card\n")
    return folder


def snapshot(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def assert_one_sentence(message, folder):
    assert str(folder) in message
    assert "\n" not in message
    assert message.endswith(".")
    assert ". " not in message  # no second sentence


@pytest.fixture
def online_without_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    # A closed local port: connections are refused at once, no network needed.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")


def test_offline_raises_clear_error_and_keeps_files(monkeypatch, model_folder):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    before = snapshot(model_folder)
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(model_folder, "someone/vit-melanoma", token="hf_not_a_real_token")
    message = str(caught.value)
    assert_one_sentence(message, model_folder)
    assert "offline" in message and "HF_HUB_OFFLINE" in message
    assert "someone/vit-melanoma" in message and "upload" in message
    assert snapshot(model_folder) == before


def test_offline_only_in_environment_is_noticed(monkeypatch, model_folder):
    # huggingface_hub read HF_HUB_OFFLINE at import; setting it later must still count.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubPushError, match="offline"):
        push_folder_to_hub(model_folder, "someone/vit-melanoma", token="hf_not_a_real_token")


def test_no_token_raises(online_without_token, model_folder):
    assert resolve_token() is None
    before = snapshot(model_folder)
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(model_folder, "someone/vit-melanoma")
    assert_one_sentence(str(caught.value), model_folder)
    assert "no token" in str(caught.value)
    assert snapshot(model_folder) == before


def test_unreachable_endpoint_raises_fast(online_without_token, model_folder):
    before = snapshot(model_folder)
    start = time.monotonic()
    with pytest.raises(HubPushError) as caught:
        push_folder_to_hub(model_folder, "someone/vit-melanoma", token="hf_not_a_real_token")
    assert time.monotonic() - start < 10
    assert_one_sentence(str(caught.value), model_folder)
    assert caught.value.__cause__ is not None  # the original error is chained for debugging
    assert snapshot(model_folder) == before


def test_missing_folder(tmp_path):
    with pytest.raises(HubPushError, match="does not exist"):
        push_folder_to_hub(tmp_path / "nope", "someone/vit-melanoma", token="hf_x")


def test_resolve_token_prefers_explicit(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert resolve_token("hf_explicit") == "hf_explicit"
    assert resolve_token() == "hf_from_env"
