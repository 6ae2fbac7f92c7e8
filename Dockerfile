# The melanoma screening aid as a self-hosted web app (CPU only).
#
#   docker build -t melanoma-screen .
#   docker run --rm -p 7860:7860 -v melanoma-feedback:/data/feedback melanoma-screen
#
# README.md, "Self-hosting", has the settings, the podman commands and what leaves the machine.

# Any image with Python 3.11 and its venv module (CI passes a debootstrapped Debian bookworm).
ARG BASE=python:3.11-slim

# ---- build: a virtual environment with the runtime requirements, nothing else
FROM ${BASE} AS build
# requirements.txt pins torch==2.13.0; the CPU build of it lives on PyTorch's index
# (PyPI's build of that version pulls several GB of CUDA libraries). A mirror or a
# wheel folder replaces the indexes here, e.g. "--no-index --find-links http://host/wheels/".
ARG PIP_OPTIONS="--extra-index-url https://download.pytorch.org/whl/cpu"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Wheels only: the image has no compiler, and nothing here should need one. pip itself
# goes afterwards: the running app installs nothing.
RUN /opt/venv/bin/pip install --only-binary=:all: ${PIP_OPTIONS} -r /tmp/requirements.txt \
 && /opt/venv/bin/python -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch was installed'" \
 && /opt/venv/bin/pip uninstall -y -q pip
# The packages' own test suites, C/C++ headers and test binaries (~300 MB) are not run or
# compiled against here; the compiled bytecode (__pycache__) stays, it shortens every start.
RUN cd /opt/venv/lib/python3*/site-packages \
 && find . -depth -type d -name tests -exec rm -rf {} + \
 && rm -rf torch/test torch/include pyarrow/include onnx/backend/test

# ---- runtime: the environment, the app and the bundled model
FROM ${BASE}
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
 && mkdir -p /data/feedback && chown app:app /data/feedback
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root and read-only for the app's user: the app never writes next to its code.
COPY app.py predict.py ./
COPY melanoma_screen ./melanoma_screen
COPY examples ./examples
COPY model ./model

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODEL_ID=/app/model \
    FEEDBACK_DIR=/data/feedback \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/home/app/.cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib
# Reports are written here only when a person presses "Send report".
VOLUME /data/feedback
USER app
EXPOSE 7860
# The app runs as PID 1, which ignores SIGTERM without a handler; Python turns SIGINT into
# KeyboardInterrupt, on which Gradio closes its server, so `docker stop` ends it at once.
STOPSIGNAL SIGINT
# /healthz answers 200 only once the model is loaded (503 when the app runs without one).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=4)"]
CMD ["python", "app.py"]
