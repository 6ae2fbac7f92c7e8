import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

from melanoma_screen.explain import attention_rollout, overlay_heatmap, rollout, upsample_heatmap
from melanoma_screen.images import load_rgb_image
from melanoma_screen.inference import ScreeningModel
from melanoma_screen.modeling import ID2LABEL, LABEL2ID
from melanoma_screen.transforms import build_image_processor

from conftest import REPO_ROOT, real_images


# ------------------------------------------------------------------ rollout math on hand-made attentions


def cls_attends_to(n_tokens, patch, heads=2, noise=0.0):
    """Every token attends to itself, except CLS, which attends to patch token `patch` (0-based)."""
    layer = np.eye(n_tokens)
    layer[0] = 0
    layer[0, 1 + patch] = 1
    layer = (1 - noise) * layer + noise / n_tokens
    return np.repeat(layer[None], heads, axis=0)


@pytest.mark.parametrize("patch", range(6))
def test_rollout_peaks_at_the_attended_patch_in_row_major_order(patch):
    # A 2x3 grid: a transposed reshape or an off-by-one token would land elsewhere.
    grid = rollout([cls_attends_to(7, patch)] * 3, (2, 3))
    expected = np.zeros((2, 3), dtype=np.float32)
    expected[divmod(patch, 3)] = 1
    np.testing.assert_allclose(grid, expected, atol=1e-6)
    assert grid.dtype == np.float32


def test_rollout_multiplies_layers_in_order():
    # Layer 1: patch 1 gathers from patch 4. Layer 2: CLS reads patch 1.
    # Rollout = A2 @ A1, so CLS reaches patch 4 through patch 1; A1 @ A2 would not.
    first = np.eye(7)
    first[2] = 0
    first[2, 5] = 1
    second = np.eye(7)
    second[0] = 0
    second[0, 2] = 1
    grid = rollout([first[None], second[None]], (2, 3))
    assert grid[0, 1] == pytest.approx(1) and grid[1, 1] == pytest.approx(1)
    assert grid.sum() == pytest.approx(2)


def test_head_fusion():
    heads = np.stack([cls_attends_to(7, 0, heads=1)[0]] * 2 + [cls_attends_to(7, 4, heads=1)[0]])
    mean = rollout([heads], (2, 3), head_fusion="mean")
    assert mean[0, 0] == pytest.approx(1) and mean[1, 1] == pytest.approx(0.5)
    top = rollout([heads], (2, 3), head_fusion="max")
    assert top[0, 0] == pytest.approx(1) and top[1, 1] == pytest.approx(1)
    with pytest.raises(ValueError, match="head_fusion"):
        rollout([heads], (2, 3), head_fusion="median")


def test_discard_ratio_removes_weak_attention_but_keeps_the_peak():
    layers = [cls_attends_to(10, 7, noise=0.2)] * 4
    plain = rollout(layers, (3, 3))
    sharp = rollout(layers, (3, 3), discard_ratio=0.8)
    assert np.unravel_index(plain.argmax(), plain.shape) == np.unravel_index(sharp.argmax(), sharp.shape) == (2, 1)
    assert sharp.sum() < plain.sum()
    with pytest.raises(ValueError):
        rollout(layers, (3, 3), discard_ratio=1.0)


def test_rollout_rejects_a_grid_that_does_not_fit_the_tokens():
    with pytest.raises(ValueError, match="tokens"):
        rollout([cls_attends_to(7, 0)], (3, 3))


def test_upsample_keeps_orientation_and_stretches_to_unit_range():
    grid = np.zeros((2, 3), dtype=np.float32)
    grid[0, 2] = 1  # top-right
    heat = upsample_heatmap(grid, (40, 90))
    assert heat.shape == (40, 90) and heat.dtype == np.float32
    assert heat.min() == 0 and heat.max() == pytest.approx(1)
    row, column = np.unravel_index(heat.argmax(), heat.shape)
    assert row < 20 and column > 60
    assert not upsample_heatmap(np.full((2, 3), 0.3), (40, 90)).any()  # nothing to show, no NaN


def test_overlay_colours_hot_regions_warm():
    photo = Image.new("RGB", (90, 40), (128, 128, 128))
    heat = np.zeros((40, 90), dtype=np.float32)
    heat[:, 60:] = 1
    overlay = overlay_heatmap(photo, heat)
    assert overlay.mode == "RGB" and overlay.size == photo.size
    red, _, blue = overlay.getpixel((80, 20))
    assert red - blue > 50  # jet ends in dark red
    red, _, blue = overlay.getpixel((10, 20))
    assert blue - red > 50  # and starts in dark blue
    assert overlay_heatmap(photo, np.eye(2)).size == photo.size  # a grid is upsampled first


# ------------------------------------------------------------------ a ViT whose attention is known


def dark_patch_vit() -> ViTForImageClassification:
    """A 2-layer ViT (4x4 patches of 16 px) whose every token attends to the darkest patches.

    The patch embedding's first channel is the patch's darkness d; the key is
    LayerNorm(token)[0] - LayerNorm(token)[2], which rises with d, and the
    query is a constant. Attention outputs and MLPs are zero, so both layers
    see the same tokens. A lesion is darker than the skin around it, so the
    heat-map must follow wherever the lesion is pasted.
    """
    config = ViTConfig(hidden_size=4, num_hidden_layers=2, num_attention_heads=1, intermediate_size=4,
                       image_size=64, patch_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
                       screening_threshold=0.3, high_risk_threshold=0.7)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1)
        embeddings = model.vit.embeddings
        embeddings.patch_embeddings.projection.weight[0] = -1 / (3 * 16 * 16)
        embeddings.position_embeddings[0, 1:, 1] = 1
        embeddings.cls_token[0, 0, 1] = 1
        for layer in model.vit.layers:
            layer.attention.q_proj.bias[0] = 20
            layer.attention.k_proj.weight[0] = torch.tensor([1.0, 0.0, -1.0, 0.0])
    return model.eval()


@pytest.fixture(scope="module")
def dark_patch_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dark_patch_vit")
    dark_patch_vit().save_pretrained(folder)
    build_image_processor(64).save_pretrained(folder)
    return ScreeningModel.load(str(folder))


@pytest.fixture(scope="module")
def lesion_and_skin():
    """A dark central lesion crop and the skin colour around it, from a real image."""
    for path in real_images("test", "malignant", 10):
        photo = np.asarray(load_rgb_image(path), dtype=np.float32)
        border = np.concatenate([photo[:15].reshape(-1, 3), photo[-15:].reshape(-1, 3)])
        centre = photo[100:200, 100:200]
        if centre.mean() < border.mean() - 30:
            skin = tuple(int(v) for v in np.median(border, axis=0))
            return Image.fromarray(centre.astype(np.uint8)), skin
    pytest.skip("no real image with a lesion clearly darker than its border")


def canvas_with_lesion(lesion, skin, corner):
    canvas = Image.new("RGB", (320, 240), skin)  # wider than tall: a swapped axis changes the shape
    small = lesion.resize((70, 50))
    canvas.paste(small, {"top-right": (245, 5), "bottom-left": (5, 185)}[corner])
    return canvas


def centre_of_mass(heat):
    rows, columns = np.indices(heat.shape)
    return float((columns * heat).sum() / heat.sum()), float((rows * heat).sum() / heat.sum())


def test_rollout_of_a_known_vit_finds_the_dark_patch(dark_patch_model, lesion_and_skin):
    lesion, skin = lesion_and_skin
    canvas = canvas_with_lesion(lesion, skin, "top-right")
    grid = attention_rollout(dark_patch_model.model, dark_patch_model.preprocess([canvas]))
    assert grid.shape == (4, 4)
    assert np.unravel_index(grid.argmax(), grid.shape) == (0, 3)


def test_heatmap_moves_with_the_lesion(dark_patch_model, lesion_and_skin):
    lesion, skin = lesion_and_skin
    maps = {corner: dark_patch_model.explain(canvas_with_lesion(lesion, skin, corner))
            for corner in ("top-right", "bottom-left")}
    for heat in maps.values():
        assert heat.shape == (240, 320)
    (x_tr, y_tr), (x_bl, y_bl) = centre_of_mass(maps["top-right"]), centre_of_mass(maps["bottom-left"])
    assert x_tr > 160 > x_bl and y_tr < 120 < y_bl
    assert x_tr - x_bl > 80 and y_bl - y_tr > 60
    row, column = np.unravel_index(maps["top-right"].argmax(), (240, 320))
    assert row < 60 and column > 240  # inside the top-right patch, where the lesion is


# ------------------------------------------------------------------ the trained tiny model, end to end


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return ScreeningModel.load(str(tiny_model_dir))


def test_explain_on_a_real_image(tiny):
    photo = load_rgb_image(real_images("test", "malignant", 1)[0]).crop((0, 0, 300, 220))
    before = tiny.predict(photo)
    heat = tiny.explain(photo)
    assert heat.shape == (220, 300) and heat.dtype == np.float32
    assert heat.min() == 0 and heat.max() == pytest.approx(1) and heat.std() > 0.01
    # The eager switch is for the explanation only; predictions stay on SDPA and unchanged.
    assert tiny.config._attn_implementation == "sdpa"
    assert tiny.predict(photo).probabilities == before.probabilities
    grid = attention_rollout(tiny.model, tiny.preprocess([photo]), discard_ratio=0.5, head_fusion="max")
    assert grid.shape == (4, 4) and 0 <= grid.min() and grid.max() == pytest.approx(1)


def test_concurrent_explanations_all_succeed(tiny):
    photo = load_rgb_image(real_images("test", "benign", 1)[0])
    expected = tiny.explain(photo)
    results, errors = [], []

    def work():
        try:
            results.append(tiny.explain(photo))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    for heat in results:
        np.testing.assert_allclose(heat, expected, atol=1e-5)
    assert tiny.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------ the shipped model


def test_the_shipped_models_heatmap_falls_on_the_lesion_more_than_on_the_skin():
    """Per unit of area, the heat-map is warmer on the lesion (skin.lesion_and_skin_masks) than elsewhere,
    and its hottest point lies on the lesion in most pictures (experiments/heatmap_on_lesion.py measures more)."""
    from melanoma_screen.skin import lesion_and_skin_masks

    shipped = ScreeningModel.load(str(REPO_ROOT / "model"))
    concentrations, hottest_on_lesion, threads = [], [], []
    for path in real_images("test", "benign", 6) + real_images("test", "malignant", 6):
        image = load_rgb_image(path)
        masks = lesion_and_skin_masks(image)
        if masks.method != "outside lesion":
            continue
        heat = shipped.explain(image)
        concentrations.append(heat[masks.lesion].sum() / heat.sum() / masks.lesion.mean())
        hottest_on_lesion.append(bool(masks.lesion[np.unravel_index(int(heat.argmax()), heat.shape)]))
    shipped.close()
    assert len(concentrations) >= 8
    assert np.mean(concentrations) > 1.3, concentrations
    assert np.mean(hottest_on_lesion) >= 0.5, hottest_on_lesion


def test_concurrent_heatmaps_and_scores_of_the_shipped_model_stay_exact():
    """Token attribution takes gradients of the shared model: concurrent heat-maps and scores stay exact."""
    shipped = ScreeningModel.load(str(REPO_ROOT / "model"))
    photo = load_rgb_image(real_images("test", "malignant", 1)[0])
    expected_heat, expected_score = shipped.explain(photo), shipped.predict(photo).malignant_probability
    heats, scores, errors = [], [], []

    def work(i):
        try:
            heats.append(shipped.explain(photo)) if i % 2 else scores.append(shipped.predict(photo).malignant_probability)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    shipped.close()
    assert not errors and len(heats) == 3 and len(scores) == 3
    for heat in heats:
        np.testing.assert_allclose(heat, expected_heat, atol=1e-5)
    assert scores == [expected_score] * 3
    assert all(parameter.grad is None for parameter in shipped.model.parameters())
