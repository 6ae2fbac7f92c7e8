"""Reports of wrong predictions, kept only when a person explicitly sends one.

Nothing here runs on an ordinary prediction: constructing a FeedbackStore
writes nothing, and `report` is meant for the "report a wrong prediction"
action alone. A report is a folder:

    FEEDBACK_DIR/<id>/image.png     pixels only: no EXIF (camera, GPS, time), no text chunks
    FEEDBACK_DIR/<id>/report.json   {id, time, prediction, true_label, comment, model_id, version}

With a Hub dataset id the same two files are also uploaded; the local copy
is written first and kept whatever the Hub does, so a report is never lost.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import HfApi
from PIL import Image

from . import hub
from .images import load_rgb_image

logger = logging.getLogger(__name__)

TRUE_LABELS = ("benign", "malignant", "other", "unknown")
MAX_COMMENT_CHARS = 2000


def strip_metadata(image: Image.Image) -> Image.Image:
    """A fresh image built from the pixels alone: no EXIF, ICC profile, text or other info."""
    if image.mode == "P":  # the palette is pixel data, not metadata; keep the colours
        image = image.convert("RGBA")
    return Image.frombytes(image.mode, image.size, image.tobytes())


def default_folder() -> Path:
    return Path(os.environ.get("FEEDBACK_DIR") or "feedback")


class FeedbackStore:
    def __init__(self, folder: str | Path | None = None, hub_dataset_id: str | None = None, token=None):
        self.folder = Path(folder) if folder is not None else default_folder()
        self.hub_dataset_id = hub_dataset_id
        self.token = token
        self.last_warning: str | None = None  # set when the Hub upload of the last report failed

    def report(self, image, prediction, true_label: str | None, comment: str = "", *, version: str | None = None) -> str:
        """Store one report of a wrong prediction and return its id.

        prediction: Prediction.to_json() (a Prediction works too). version:
        ScreeningModel.version, the weights hash; also read from
        prediction["version"] when given there. Raises ValueError for an
        unknown true_label and ImageLoadError for an unreadable image; Hub
        problems only log a warning and set `last_warning`.
        """
        true_label = true_label or "unknown"
        if true_label not in TRUE_LABELS:
            raise ValueError(f"true_label must be one of {', '.join(TRUE_LABELS)}; got {true_label!r}.")
        if hasattr(prediction, "to_json"):
            prediction = prediction.to_json()
        prediction = dict(prediction or {})
        pixels = strip_metadata(load_rgb_image(image))  # before any write: a bad image leaves nothing behind

        now = datetime.now(timezone.utc)
        record_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        record = {
            "id": record_id,
            "time": now.isoformat(timespec="seconds"),
            "prediction": prediction,
            "true_label": true_label,
            "comment": str(comment or "")[:MAX_COMMENT_CHARS],
            "model_id": prediction.get("model_id"),
            "version": version or prediction.get("version"),
        }
        record_dir = self.folder / record_id
        record_dir.mkdir(parents=True)
        pixels.save(record_dir / "image.png", format="PNG")
        # report.json last: a folder with it is a complete report.
        (record_dir / "report.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")

        self.last_warning = self._upload(record_dir) if self.hub_dataset_id else None
        return record_id

    def _upload(self, record_dir: Path) -> str | None:
        """Upload one report folder; returns a warning sentence on failure, None on success."""
        if hub.hub_offline():
            reason = "offline: HF_HUB_OFFLINE is set"
        else:
            try:
                api = HfApi(token=hub.resolve_token(self.token))
                # Private: these are medical photos sent in by people.
                api.create_repo(self.hub_dataset_id, repo_type="dataset", private=True, exist_ok=True)
                api.upload_folder(folder_path=str(record_dir), path_in_repo=record_dir.name, repo_id=self.hub_dataset_id,
                                  repo_type="dataset", commit_message=f"Feedback report {record_dir.name}")
                return None
            except Exception as error:  # whatever the Hub does, the local report stands
                reason = hub.failure_reason(error)
        warning = f"The report was saved in {record_dir} but not uploaded to {self.hub_dataset_id} ({reason})."
        logger.warning(warning)
        return warning

    def count(self) -> int:
        """Complete reports in the folder."""
        if not self.folder.is_dir():
            return 0
        return sum(1 for path in self.folder.glob("*/report.json"))
