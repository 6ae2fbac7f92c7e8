"""Where the model looked: heat-maps over the patch grid, and their overlay on the photo.

`heatmap_grid` picks the method the model's architecture allows. For a ViT, attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers") follows how much of the class token's final representation
flows from each image patch: per layer, average the heads, add the identity
for the residual connection, renormalise the rows, and multiply the layers
together. The class token's row, over the patch tokens, is the map.

LeViT subsamples its tokens with attention between stages, so no rollout
runs from its pooled output back to the patches. Its map is the token
attribution (gradient times activation, Simonyan et al. 2014 and Shrikumar et
al. 2017, at the token level): at the last tokens on the full patch grid, the
size of each token's first-order share of the malignant log-odds, that is, how
much the score would move if that token were removed.

Either map shows where the model looked, not why it decided, and it is not a
segmentation of the lesion; HOW_TO_READ says so to the people who see it.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

from .architectures import adapter_for

HOW_TO_READ = {
    "en": (
        "Warmer colours mark the regions the model relied on most for this image. "
        "It shows where the model looked, not why it decided, and it is not an outline of the lesion."
    ),
    "fr": (
        "Les couleurs chaudes indiquent les zones sur lesquelles le modèle s'est le plus appuyé pour cette image. "
        "Elles montrent où le modèle a regardé, pas pourquoi il a décidé, et ne délimitent pas la lésion."
    ),
}

HEAD_FUSIONS = {"mean": np.mean, "max": np.max, "min": np.min}

# The attention implementation is a setting of the shared model; the lock
# stops two explanations from switching it back under each other's feet.
_ATTENTION_LOCK = threading.Lock()


def patch_grid(config) -> tuple[int, int]:
    """(rows, columns) of patch tokens for a ViT config, or of LeViT's full-resolution tokens."""
    def pair(value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    (image_h, image_w), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return image_h // patch_h, image_w // patch_w


def vit_attentions(model, pixel_values: torch.Tensor) -> list[np.ndarray]:
    """Attention probabilities of each layer, (heads, tokens, tokens), for one image.

    SDPA, the default and fastest attention, does not return its weights, so
    the model runs with eager attention for this one call only; predictions
    stay on SDPA. A prediction running meanwhile on another thread merely
    takes the eager path, which gives the same numbers.
    """
    if pixel_values.shape[0] != 1:
        raise ValueError(f"explain one image at a time, got a batch of {pixel_values.shape[0]}.")
    with _ATTENTION_LOCK:
        previous = model.config._attn_implementation
        try:
            if previous != "eager":
                model.set_attn_implementation("eager")
            with torch.inference_mode():
                attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
        finally:
            if previous != "eager":
                model.set_attn_implementation(previous)
    if not attentions:
        raise RuntimeError(f"{type(model).__name__} returned no attention weights.")
    return [layer[0].float().cpu().numpy() for layer in attentions]


def rollout(attentions, grid_shape: tuple[int, int], discard_ratio: float = 0.0, head_fusion: str = "mean") -> np.ndarray:
    """Attention rollout from per-layer (heads, tokens, tokens) attentions, CLS token first.

    Returns the CLS row over the patch tokens as a (rows, columns) grid scaled
    so its maximum is 1. discard_ratio zeroes that share of the weakest
    attention weights per layer, which sharpens the map (Gildenblat's variant).
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {sorted(HEAD_FUSIONS)}, got {head_fusion!r}.")
    if not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}.")
    rows, columns = grid_shape
    n_tokens = np.asarray(attentions[0]).shape[-1]
    if n_tokens != 1 + rows * columns:
        raise ValueError(f"{n_tokens} tokens do not make a CLS token plus a {rows}x{columns} patch grid.")

    identity = np.eye(n_tokens)
    joint = identity
    for layer in attentions:
        fused = HEAD_FUSIONS[head_fusion](np.asarray(layer, dtype=np.float64), axis=0)
        if discard_ratio > 0:
            flat = fused.reshape(-1)  # a view: zeroing it zeroes `fused`
            weakest = np.argpartition(flat, int(flat.size * discard_ratio))[: int(flat.size * discard_ratio)]
            flat[weakest[weakest != 0]] = 0  # keep CLS->CLS so the class token keeps its own path
        # The residual connection carries half of each token's representation past attention.
        fused = fused + identity
        fused /= fused.sum(axis=-1, keepdims=True)
        joint = fused @ joint
    # Patch tokens follow CLS in row-major order (Conv2d output flattened over rows, then columns).
    grid = joint[0, 1:].reshape(rows, columns)
    peak = grid.max()
    return (grid / peak if peak > 0 else grid).astype(np.float32)


def attention_rollout(model, pixel_values: torch.Tensor, discard_ratio: float = 0.0, head_fusion: str = "mean") -> np.ndarray:
    """(grid_h, grid_w) map in [0, 1] of how much each patch fed the class token, for one image."""
    return rollout(vit_attentions(model, pixel_values), patch_grid(model.config), discard_ratio, head_fusion)


def token_attribution(model, pixel_values: torch.Tensor) -> np.ndarray:
    """(rows, columns) map in [0, 1]: |gradient x activation| of the malignant log-odds per full-resolution token.

    For one image of a LeViT (architectures.levit_full_resolution_tokens). Only the
    tokens get a gradient, so nothing accumulates in the shared model's weights and
    predictions on other threads are not disturbed.
    """
    from .labels import malignant_index
    from .architectures import levit_full_resolution_tokens, levit_logits_from_tokens

    if pixel_values.shape[0] != 1:
        raise ValueError(f"explain one image at a time, got a batch of {pixel_values.shape[0]}.")
    malignant = malignant_index(model.config)
    with torch.enable_grad():
        with torch.no_grad():
            tokens = levit_full_resolution_tokens(model, pixel_values)
        tokens = tokens.detach().requires_grad_(True)
        logits = levit_logits_from_tokens(model, tokens)[0]
        # Log-odds of malignant against the other class: the quantity the risk level thresholds.
        log_odds = logits[malignant] - torch.logsumexp(torch.cat([logits[:malignant], logits[malignant + 1:]]), 0)
        (gradient,) = torch.autograd.grad(log_odds, tokens)
    return attribution_grid(tokens, gradient, patch_grid(model.config))


def attribution_grid(tokens: torch.Tensor, gradient: torch.Tensor, grid_shape: tuple[int, int]) -> np.ndarray:
    """|gradient x activation| summed over channels, per token of one image (1, P, D), as a grid scaled to peak 1."""
    share = (gradient * tokens).sum(dim=-1)[0].abs().detach().float().numpy()
    rows, columns = grid_shape
    if share.size != rows * columns:
        raise ValueError(f"{share.size} tokens do not make a {rows}x{columns} patch grid.")
    grid = share.reshape(rows, columns)
    peak = grid.max()
    return (grid / peak if peak > 0 else grid).astype(np.float32)


# By the name an architecture's adapter gives (architectures.Architecture.heatmap).
HEATMAP_METHODS = {"attention_rollout": attention_rollout, "token_attribution": token_attribution}


def heatmap_grid(model, pixel_values: torch.Tensor) -> np.ndarray:
    """The patch-grid map for one image, by the method its architecture's adapter names."""
    adapter = adapter_for(model)
    if adapter is None or adapter.heatmap is None:
        raise ValueError(f"no heat-map for a {model.config.model_type} model: only ViT and LeViT folders have one.")
    return HEATMAP_METHODS[adapter.heatmap](model, pixel_values)


def upsample_heatmap(grid, size: tuple[int, int]) -> np.ndarray:
    """Smoothly resize a grid to size = (height, width), then stretch it to [0, 1].

    A constant grid has no "more" or "less" to show and comes back as zeros.
    """
    height, width = size
    # Mode "F" keeps float precision through PIL's bilinear filter, which
    # aligns pixel centres so each patch lands over the pixels it came from.
    heat = Image.fromarray(np.asarray(grid, dtype=np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    heat = np.asarray(heat, dtype=np.float32)
    low, high = float(heat.min()), float(heat.max())
    if high - low < 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return ((heat - low) / (high - low)).astype(np.float32)


def jet(values: np.ndarray) -> np.ndarray:
    """Blue -> cyan -> yellow -> red colours, uint8 (..., 3), for values in [0, 1]."""
    x = np.clip(np.asarray(values, dtype=np.float32), 0, 1)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where red, green, blue peak
    return (np.clip(1.5 - np.abs(4 * (x - centres)), 0, 1) * 255).round().astype(np.uint8)


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The photo with the coloured heat-map blended over it (RGB, the photo's size)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != (image.height, image.width):
        heatmap = upsample_heatmap(heatmap, (image.height, image.width))
    return Image.blend(image, Image.fromarray(jet(heatmap)), alpha)
