"""The classifier run by ONNX Runtime: the fast CPU path from pixels to logits.

The ONNX graph is exported from the PyTorch model and kept beside it, as
MODEL/model.int8.onnx (or model.fp32.onnx), stamped with the hash of the
model.safetensors it was exported from: exporting and quantising take seconds,
which every start-up paid before. A stamp that does not match the weights, or a
graph written by another version of this code, is rebuilt on load, and written
back when the folder is writable (else into ~/.cache/melanoma_screen), so the
file always holds exactly the weights of model.safetensors. Where these files are
is the model folder's to say (melanoma_screen.model_folder.onnx_graph_paths);
this module opens, checks and builds them. To rebuild it by hand:

    python -m melanoma_screen.onnx_engine --model model

For a model this small, ONNX Runtime's CPU kernels and the absence of Python
between operations make the forward pass about twice as fast as PyTorch's
(2.17x for the shipped LeViT, int8; benchmarks/README.md).

The graph computes what architectures.logits_and_patch_tokens computes: the
logits and the feature tokens of the input check, from one pass.

precision="int8" stores the weights of the encoder's matrix products in int8
and quantises their inputs on the fly (dynamic quantisation). The patch
embedding, the attention products, layer norms and the classifier, which
carries the folded calibration temperature, stay float.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .architectures import adapter_for, logits_and_patch_tokens

OPSET = 17
# Names the graph's inputs and outputs; a stored graph with another one is rebuilt.
GRAPH_FORMAT = "logits+patch_tokens/1"
logger = logging.getLogger(__name__)


def export_onnx(model) -> bytes:
    """The model as an ONNX graph with a dynamic batch axis: pixel_values -> logits, patch_tokens."""
    import torch

    class LogitsAndPatchTokens(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return logits_and_patch_tokens(self.model, pixel_values)

    model = copy.deepcopy(model).eval()
    adapter = adapter_for(model)
    if adapter is not None and adapter.export_attention:
        model.set_attn_implementation(adapter.export_attention)
    size = model.config.image_size
    dummy = torch.zeros(1, model.config.num_channels, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter notices, none of them about this graph
        torch.onnx.export(
            LogitsAndPatchTokens(model), (dummy,), buffer, dynamo=False, opset_version=OPSET,
            input_names=["pixel_values"], output_names=["logits", "patch_tokens"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}, "patch_tokens": {0: "batch"}},
        )
    return buffer.getvalue()


def quantize_int8(onnx_model: bytes) -> bytes:
    """int8 weights for the MatMuls with a weight: the encoder's linear layers.

    Only MatMul is quantised: the classifier is exported as Gemm and the patch
    embedding as Conv, so both stay float, and the attention products have no
    weight to quantise.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        source.write_bytes(onnx_model)
        logging.disable(logging.WARNING)  # a "consider pre-processing" notice on the root logger
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            logging.disable(logging.NOTSET)
        return target.read_bytes()


def _stamped(graph: bytes, weights_version: str, precision: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(graph)
    for key, value in (("weights_version", weights_version), ("precision", precision), ("graph_format", GRAPH_FORMAT)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def build_graph(model, precision: str, weights_version: str = "") -> bytes:
    """The exported (and, for int8, quantised) graph, stamped with the weights it holds."""
    graph = export_onnx(model)
    if precision == "int8":
        graph = quantize_int8(graph)
    return _stamped(graph, weights_version, precision)


def _session(graph, options):
    import onnxruntime

    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _matches(session, weights_version: str, precision: str) -> bool:
    stamp = session.get_modelmeta().custom_metadata_map
    return (stamp.get("weights_version") == weights_version and stamp.get("precision") == precision
            and stamp.get("graph_format") == GRAPH_FORMAT)


def _options():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One thread: run() works on the calling thread. A second thread does not make
    # one image of this small model faster (benchmarks/README.md); the callers use
    # the cores by running several images at once (ScreeningModel's pool, the
    # app's concurrent requests). run() is thread-safe.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def _find_stored(candidates, weights_version: str, precision: str, options):
    """(session, path) of the first stored graph that holds these weights, else None."""
    for path in candidates:
        if path.is_file():
            try:
                session = _session(str(path), options)
            except Exception as error:  # a truncated or foreign file: rebuilt by the caller
                logger.warning("%s cannot be read (%s); rebuilding it.", path, error)
                continue
            if _matches(session, weights_version, precision):
                return session, path
            logger.info("%s was built for other weights or by another version; rebuilding it.", path)
    return None


class OnnxClassifier:
    """Callable like the PyTorch model's forward: (N, 3, H, W) float32 tensor -> (N, 2) logits.

    `with_patch_tokens` also returns the (N, P, D) patch tokens of the input check, from the same run.
    model: the PyTorch model, or a callable returning it (loaded only when the graph must be built).
    graphs and weights_version: where a stored graph is looked for and written (the model folder says
    where: ModelFolder.onnx_graphs), and the weights it must hold.
    """

    def __init__(self, model, precision: str = "fp32", graphs=(), weights_version: str | None = None,
                 _stored=None):
        self.precision = precision
        self.session = self.source = None
        if _stored is not None:
            self.session, self.source = _stored
            return
        options = _options()
        candidates = [Path(path) for path in graphs] if weights_version else []
        stored = _find_stored(candidates, weights_version, precision, options)
        if stored is not None:
            self.session, self.source = stored
            return
        graph = build_graph(model() if callable(model) and not hasattr(model, "config") else model, precision,
                            weights_version or "")
        self.session = _session(graph, options)
        for path in candidates:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
                partial.write_bytes(graph)
                os.replace(partial, path)  # atomic: a concurrent reader never sees half a file
                self.source = path
                break
            except OSError:
                continue

    @classmethod
    def stored(cls, graphs, weights_version: str, precision: str) -> "OnnxClassifier | None":
        """The classifier from a graph stored for exactly these weights, or None: no PyTorch needed.

        graphs: where to look, in order (ModelFolder.onnx_graphs)."""
        found = _find_stored([Path(path) for path in graphs], weights_version, precision, _options())
        return None if found is None else cls(None, precision, _stored=found)

    def __call__(self, pixel_values):
        return self.with_patch_tokens(pixel_values)[0]

    def with_patch_tokens(self, pixel_values):
        """(N, 2) logits and (N, P, D) patch tokens, numpy float32."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        logits, tokens = self.session.run(["logits", "patch_tokens"], {"pixel_values": pixels})
        return logits, tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m melanoma_screen.onnx_engine",
                                     description="Build (export, and quantise for int8) the ONNX graph of a model "
                                                 "folder and store it there, stamped with the weights' hash.")
    parser.add_argument("--model", default="model", help="model folder (default: model)")
    parser.add_argument("--precision", choices=["int8", "fp32"], default="int8", help="default: int8, the app's")
    args = parser.parse_args(argv)
    from .model_folder import ModelFolder

    folder = ModelFolder(args.model)
    graph = build_graph(folder.network(), args.precision, folder.version)
    target = folder.onnx_graphs(args.precision)[0]  # the one in the folder
    target.write_bytes(graph)
    print(f"wrote {target} ({len(graph) / 1e6:.1f} MB) for weights {folder.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
