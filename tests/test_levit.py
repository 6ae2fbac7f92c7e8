"""A LeViT folder is served as a ViT one is: ONNX fast path, input check and heat-map from its feature tokens."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import pipeline

from melanoma_screen import architectures, onnx_engine
from melanoma_screen.explain import heatmap_grid, token_attribution
from melanoma_screen.inference import FAST, ScreeningModel
from melanoma_screen.labels import malignant_index
from melanoma_screen.model_folder import ModelFolder
from melanoma_screen.modeling import build_other_architecture
from melanoma_screen.modeling import ID2LABEL, LABEL2ID

from conftest import REPO_ROOT, real_images


def random_levit(image_size=64, seed=0):
    torch.manual_seed(seed)
    return build_other_architecture("levit", image_size, id2label=ID2LABEL, label2id=LABEL2ID).eval()


def lesion_pixels(image_size=64):
    from melanoma_screen.images import load_rgb_image

    image = load_rgb_image(str(real_images("test", "malignant", 1)[0])).resize((image_size, image_size))
    return torch.from_numpy((np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)[None].copy())


@pytest.fixture(scope="module")
def tiny_levit_dir(tiny_image_folder, tmp_path_factory):
    """The smoke-training command with --scratch-config levit: training ends with the input check fitted."""
    output_dir = tmp_path_factory.mktemp("tiny_levit") / "m"
    command = [sys.executable, str(REPO_ROOT / "train_vit.py"), "--data-dir", str(tiny_image_folder),
               "--scratch-config", "levit", "--image-size", "64", "--max-steps", "10", "--output-dir", str(output_dir)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


def test_tokens_come_from_the_same_pass_as_the_logits():
    model = random_levit()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        logits, tokens = architectures.logits_and_patch_tokens(model, pixels)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    # 64 px on a 16-px patch grid: 4 x 4 tokens of the first stage's width.
    assert tokens.shape == (3, 16, model.config.hidden_sizes[0])


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("int8", 0.05)])
def test_onnx_graph_gives_the_pytorch_logits_and_tokens(precision, tolerance):
    model = random_levit()
    pixels = lesion_pixels()
    with torch.no_grad():
        logits, tokens = architectures.logits_and_patch_tokens(model, pixels)
    classifier = onnx_engine.OnnxClassifier(model, precision)
    onnx_logits, onnx_tokens = classifier.with_patch_tokens(pixels.numpy())
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=tolerance * max(1.0, float(logits.abs().max())))
    assert onnx_tokens.shape == tokens.shape
    assert np.corrcoef(onnx_tokens.ravel(), tokens.numpy().ravel())[0, 1] > 0.99


def test_token_attribution_is_each_tokens_first_order_share_of_the_log_odds():
    """Shrinking one token by 1% moves the malignant log-odds by 1% of its share, token by token."""
    model = random_levit(seed=3).double()
    pixels = lesion_pixels().double()
    malignant = malignant_index(model.config)

    def log_odds(tokens):
        logits = architectures.levit_logits_from_tokens(model, tokens)[0]
        return float(logits[malignant] - logits[1 - malignant])

    with torch.no_grad():
        tokens = architectures.levit_full_resolution_tokens(model, pixels)
        base = log_odds(tokens)
        moved = []
        for i in range(tokens.shape[1]):
            shrunk = tokens.clone()
            shrunk[0, i] *= 0.99
            moved.append(abs(log_odds(shrunk) - base) / 0.01)
    moved = np.asarray(moved).reshape(4, 4)
    np.testing.assert_allclose(token_attribution(model, pixels), moved / moved.max(), atol=0.02)


def test_no_heatmap_for_an_architecture_without_feature_tokens():
    model = build_other_architecture("mobilevitv2", 64, id2label=ID2LABEL, label2id=LABEL2ID).eval()
    with pytest.raises(ValueError, match="only ViT and LeViT"):
        heatmap_grid(model, torch.zeros(1, 3, 64, 64))


def test_trained_levit_folder_is_served_on_the_fast_path_with_check_and_heatmap(tiny_levit_dir):
    assert (tiny_levit_dir / "input_check.safetensors").is_file()
    lesion = str(real_images("test", "malignant", 1)[0])
    screening = ScreeningModel.load(str(tiny_levit_dir), **FAST)
    try:
        assert screening._onnx is not None
        assert screening.input_check is not None
        ours = screening.predict(lesion)
        heatmap = screening.explain(lesion)
    finally:
        screening.close()
    theirs = {row["label"]: row["score"] for row in pipeline("image-classification", model=str(tiny_levit_dir))(lesion)}
    for label, probability in theirs.items():
        assert abs(ours.probabilities[label] - probability) < 0.02, (label, ours.probabilities, theirs)
    assert heatmap.shape == (300, 300) and heatmap.dtype == np.float32
    assert heatmap.min() == 0 and heatmap.max() == pytest.approx(1)
    # Reloaded, the graph stored beside the weights is found: no PyTorch export again.
    assert (tiny_levit_dir / "model.int8.onnx").is_file()
    stored = onnx_engine.OnnxClassifier.stored(ModelFolder(tiny_levit_dir).onnx_graphs("int8"), screening.version, "int8")
    assert stored is not None


def test_the_architecture_registry_decides_tokens_heatmap_and_what_is_served():
    levit = random_levit()
    mobile = build_other_architecture("mobilevitv2", 64, id2label=ID2LABEL, label2id=LABEL2ID).eval()
    assert architectures.adapter_for(levit).heatmap == "token_attribution"
    assert architectures.adapter_for(levit.config) is architectures.adapter_for("levit")
    assert [architectures.servable(name) for name in ("vit", "levit", "mobilevitv2", "resnet")] == [True, True, False, False]
    # Only a LeViT takes another input size (its attention biases are resized): train_vit.py --image-size asks this.
    assert [architectures.resizable(name) for name in ("vit", "levit", "mobilevitv2", "resnet")] == [False, True, False, False]
    assert architectures.resizable(levit) and not architectures.resizable(mobile.config)
    with torch.no_grad():
        logits, tokens = architectures.logits_and_patch_tokens(mobile, torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 2) and tokens.shape == (2, 0, 1)  # scored, but nothing for the input check
