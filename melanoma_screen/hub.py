"""Push a saved model folder to the Hugging Face Hub, failing with one clear sentence.

Training must never lose its result because the Hub is unreachable, so every
failure becomes a HubPushError that says where the model is saved locally and
how to upload it later. The local folder is only ever read.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi

_TRUE_VALUES = {"1", "on", "yes", "true"}


class HubPushError(RuntimeError):
    """Pushing to the Hub failed; the message is one sentence for people."""


def resolve_token(token: str | None = None) -> str | None:
    """The explicit token, else HF_TOKEN / the saved login; None when there is none."""
    if token:
        return token
    try:
        return huggingface_hub.get_token()
    except Exception:  # e.g. a failed OIDC exchange: treat as "no token"
        return None


def hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; an environment
    # change made after that (e.g. by a test or a launcher) is only in os.environ.
    from_environment = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES
    return from_environment or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def failure_reason(error: Exception) -> str:
    if isinstance(error, huggingface_hub.errors.OfflineModeIsEnabled):
        return "offline: HF_HUB_OFFLINE is set"
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return f"HTTP {status}: the token is invalid or lacks write access to this repository"
    if status is not None:
        return f"HTTP {status}"
    # Keep the first sentence only so the whole message stays one sentence.
    text = str(error).strip()
    detail = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def push_folder_to_hub(folder, repo_id: str, token: str | None = None, private: bool = False,
                       commit_message: str = "Upload melanoma screening model") -> str:
    """Create the model repo if needed, upload `folder` to it and return the repo URL.

    Raises HubPushError (one sentence, naming the folder) on any failure:
    missing folder, offline mode, no token, network or HTTP errors.
    """
    folder = Path(folder)

    def failure(reason: str) -> HubPushError:
        return HubPushError(
            f"Could not push {folder} to the Hugging Face Hub as {repo_id} ({reason}); "
            f"the model is saved locally in {folder} — run `hf upload {repo_id} {folder}` when online."
        )

    if not folder.is_dir():
        raise HubPushError(f"Could not push {folder} to the Hugging Face Hub as {repo_id}: the folder does not exist.")
    if hub_offline():
        raise failure("offline: HF_HUB_OFFLINE is set")
    token = resolve_token(token)
    if token is None:
        raise failure("no token: set HF_TOKEN or run `hf auth login`")
    try:
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        # Trainer checkpoints hold optimizer state for resuming, not the model to publish.
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=commit_message, ignore_patterns=["checkpoints/**"])
    except Exception as error:
        raise failure(failure_reason(error)) from error
    return str(repo_url)
