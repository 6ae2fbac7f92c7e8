"""The app's doors besides the page: an upload opened into its file and picture, and the plain Starlette routes.

`POST /api/screen` gives /predict's JSON for an image sent as the body (or a multipart file
field) without Gradio's upload, queue and event stream, which cost most of the CPU of a
/predict call (benchmarks/README.md). `GET /api/timings` and `GET /healthz` answer outside
the queue: a container's health check costs no analysis slot.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from starlette.responses import JSONResponse
from starlette.routing import Route

from .images import ImageLoadError
from .input_check import REASONS as REFUSALS
from .messages import render

if TYPE_CHECKING:
    from PIL import Image

SCREEN_ROUTE = "/api/screen"
TIMINGS_ROUTE = "/api/timings"
HEALTH_ROUTE = "/healthz"
MAX_UPLOAD_BYTES = 30 * 1024 * 1024  # also launch()'s max_file_size for the page's uploads
API_DESCRIPTION = ("Screen one dermoscopic image. Returns {label, probabilities: {benign, malignant}, risk_level: "
                   "low|moderate|high, screening_threshold, high_risk_threshold, model_id, model_version}, or "
                   "{error: message, reason: code} when the image cannot be used or the input check refuses it "
                   f"({', '.join(REFUSALS)}).")


class Upload(NamedTuple):
    """An upload opened: the file behind it (what a report stores, what a live capture keeps) and its picture."""
    file: str | bytes
    picture: Image.Image


def open_upload(payload, decode: Callable[[str | bytes], Image.Image], *, uploads_only: bool = False) -> Upload | None:
    """What the browser sent, decoded once by `decode` (ScreeningModel.decode); None when it holds no image.

    The events take raw payloads (preprocess=False) so that Gradio never decodes the
    file itself: a non-image, truncated file or decompression bomb reaches
    load_rgb_image, which turns it into a sentence for people.
    uploads_only: a path is taken only from a file Gradio received (its FileData meta
    says so, and Gradio checked the path is an upload): an HTTP caller cannot make the
    app read a file of the server's by naming it.
    """
    if payload is None or payload == "":
        return None
    if isinstance(payload, (str, os.PathLike)) and not uploads_only:
        file = str(payload)
    elif isinstance(payload, (bytes, bytearray)):  # the lean route's request body
        file = bytes(payload) or None
    elif isinstance(payload, dict) and payload.get("path"):
        if uploads_only and (payload.get("meta") or {}).get("_type") != "gradio.FileData":
            raise ImageLoadError("bad_upload")
        file = str(payload["path"])
    elif isinstance(payload, dict):
        url = payload.get("url") or ""
        if not url.startswith("data:"):
            return None
        try:  # a live camera frame
            file = base64.b64decode(url.partition(",")[2], validate=False)
        except (binascii.Error, ValueError) as error:
            raise ImageLoadError("bad_data_url") from error
    else:
        raise ImageLoadError("bad_upload")
    return None if file is None else Upload(file, decode(file))


def server_routes(predict: Callable[[bytes], dict], timings: Callable[[], dict],
                  health: Callable[[], tuple[dict, int]], concurrency: int) -> list[Route]:
    """SCREEN_ROUTE (answered by `predict`, `concurrency` at once), TIMINGS_ROUTE and HEALTH_ROUTE."""
    import anyio

    # As many analyses at once as the Gradio queue runs; the others wait for a slot.
    limiter = anyio.CapacityLimiter(concurrency)

    # Plain Starlette routes: they get the request itself, with no FastAPI parameter
    # parsing (which, under postponed annotations, read `request` as a query field).
    async def screen(request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return JSONResponse({"error": render("too_large_upload"), "reason": "too_large"}, status_code=413)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = next((value for value in form.values() if hasattr(value, "read")), None)
            body = await upload.read() if upload is not None else b""
        else:
            body = await request.body()
        if len(body) > MAX_UPLOAD_BYTES:
            return JSONResponse({"error": render("too_large_upload"), "reason": "too_large"}, status_code=413)
        return JSONResponse(await anyio.to_thread.run_sync(predict, body, limiter=limiter))

    async def answer_timings(request):
        return JSONResponse(timings())

    async def answer_health(request):
        payload, status = health()
        return JSONResponse(payload, status_code=status)

    return [Route(SCREEN_ROUTE, screen, methods=["POST"], include_in_schema=False),
            Route(TIMINGS_ROUTE, answer_timings, methods=["GET"], include_in_schema=False),
            Route(HEALTH_ROUTE, answer_health, methods=["GET"], include_in_schema=False)]
