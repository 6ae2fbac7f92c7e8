"""Adapt a BatchNorm model to a site's device without labels: re-estimate its normalisation statistics (AdaBN).

    model = AutoModelForImageClassification.from_pretrained("model", use_safetensors=True)
    stats = estimate_site_statistics(model, pixel_batches)       # the site's pictures, no label
    adapted = adapted_state(model, stats, ADAPTATION_RULE)       # the rule below, measured
    guard = sensitivity_guard(source_scores, adapted_scores)     # None, or why it is unsafe

On another dermatoscope every score moves up: the colours, contrast and
magnification of the pictures shift what each BatchNorm layer sees, and the
running statistics fixed on the training sources no longer centre it. Li et al.
(2016, "Revisiting batch normalization for practical domain adaptation") replace
those statistics with the ones measured on the target domain; no weight is
trained and no label is used. Only the BatchNorm running means and variances
change: every learned weight, the thresholds, the temperature and the input
check are the source model's.

Why this rule (ADAPTATION_RULE) and these limits: docs/site_calibration.md has
the measurements (benchmarks/site_adaptation_rules.py reruns them).
"""

from __future__ import annotations

import hashlib

import numpy as np

# The rule calibrate_site.py applies, chosen by benchmarks/site_adaptation_rules.py on derm7pt halves and
# ham10000's acquisitions (docs/site_calibration.md): "layers" counts BatchNorm layers in forward order
# (None: all), "mix" is the share of the site's statistics in the result (1: the site's alone).
ADAPTATION_RULE = {"layers": None, "mix": 1.0}
# The milder rule the guard falls back to before refusing.
FALLBACK_RULE = {"layers": None, "mix": 0.5}
# Below this many pictures the statistics of the first layers' channels vary too much between samples
# (docs/site_calibration.md): measured, not a convention.
MIN_PICTURES = 30
# The guard: the adapted model must keep the source model's order of the site's pictures this well
# (Spearman rank correlation of P(malignant) before and after, on the site's own pictures).
MIN_RANK_CORRELATION = 0.80


class SiteAdaptationError(ValueError):
    """Refused: the message is one sentence for people, and says what to do."""


def batchnorm_layers(model) -> list:
    """(name, module) of every BatchNorm layer, in the order the forward pass meets them (registration order)."""
    import torch

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]


def statistics_keys(model) -> set[str]:
    """The state-dict keys adaptation may change: BatchNorm running means, variances and batch counts."""
    return {f"{name}.{buffer}" for name, _ in batchnorm_layers(model)
            for buffer in ("running_mean", "running_var", "num_batches_tracked")}


def require_batchnorm(model, model_name: str) -> None:
    if not batchnorm_layers(model):
        raise SiteAdaptationError(
            f"{model_name} has no BatchNorm layer ({model.config.model_type}), so there are no statistics to adapt "
            "to the site's pictures; refit its thresholds on the site's diagnosed images instead with --data-dir.")


def estimate_site_statistics(model, pixel_batches) -> dict:
    """Each BatchNorm layer's mean and (unbiased) variance over the site's pictures: {name: (mean, var)}.

    All layers are measured in one pass with each of them normalising by the
    site's statistics, as AdaBN does, so that a layer sees what the layers
    before it will give once they are adapted. The statistics are averaged over
    every batch (momentum None), so the order and the batch size matter little.
    The model is left exactly as it was.
    """
    import torch

    layers = batchnorm_layers(model)
    saved = {name: (module.running_mean.clone(), module.running_var.clone(), module.num_batches_tracked.clone(),
                    module.momentum) for name, module in layers}
    was_training = model.training
    model.eval()
    try:
        for _, module in layers:
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
            module.train()
        seen = 0
        with torch.no_grad():
            for batch in pixel_batches:
                batch = torch.as_tensor(np.asarray(batch, dtype=np.float32))
                if len(batch) < 2:
                    continue  # BatchNorm1d cannot take one row per channel; never the whole sample
                model(pixel_values=batch)
                seen += len(batch)
        if not seen:
            raise SiteAdaptationError("No picture reached the model, so no statistic could be measured.")
        return {name: (module.running_mean.clone(), module.running_var.clone()) for name, module in layers}
    finally:
        for name, module in layers:
            mean, var, count, momentum = saved[name]
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(count)
            module.momentum = momentum
        model.train(was_training)


def adapt(model, site_statistics: dict, rule: dict, reference_statistics: dict | None = None) -> list[str]:
    """Puts the rule's statistics into the model, in place; returns the names of the layers changed.

    Without reference_statistics: AdaBN as published, the site's statistics
    replace the model's (mixed with them by rule["mix"]). With them (the same
    measurement on the training images): only the difference between the site
    and the training images is applied, a shift of the mean and a ratio of the
    variance, so a site like the training sources leaves the model as it is.
    The plain replacement does not: the stored statistics were gathered under
    training's augmentations, and replacing them with clean pictures' moved the
    10k test split's sensitivity from 0.953 to 0.889 (docs/site_calibration.md).
    A mix of variances, not of standard deviations: the mixed layer then
    normalises a mixture of the two domains' activations.
    """
    layers = batchnorm_layers(model)
    chosen = layers if rule.get("layers") is None else layers[: int(rule["layers"])]
    share = float(rule.get("mix", 1.0))
    for name, module in chosen:
        mean, var = site_statistics[name]
        if reference_statistics is not None:
            reference_mean, reference_var = reference_statistics[name]
            mean = module.running_mean + (mean - reference_mean)
            var = module.running_var * (var / reference_var.clamp_min(module.eps))
        module.running_mean.copy_(share * mean + (1 - share) * module.running_mean)
        module.running_var.copy_(share * var + (1 - share) * module.running_var)
    return [name for name, _ in chosen]


def statistics_digest(model) -> str:
    """sha256 over every tensor that is not a BatchNorm statistic: equal for a model and its adapted copy."""
    moving = statistics_keys(model)
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key in moving:
            continue
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def rank_correlation(before, after) -> float:
    """Spearman's correlation of two score vectors over the same pictures."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)).statistic)


def sensitivity_guard(source_scores, adapted_scores, minimum: float = MIN_RANK_CORRELATION) -> str | None:
    """None when the adaptation kept the order of the site's pictures, else the sentence saying why it is unsafe.

    No label is available, so the guard cannot measure sensitivity. What it can
    measure is whether adaptation re-ranked the site's pictures: statistics that
    only re-centre the scores move them together and keep their order, and
    sensitivity then holds at the threshold the model was fitted for; where the
    model reads the site's pictures differently after adaptation, the order
    changes and melanomas can fall below lesions it used to rank under them.
    That is how the failures measured in docs/site_calibration.md looked.
    """
    rho = rank_correlation(source_scores, adapted_scores)
    if rho >= minimum:
        return None
    return (f"the adapted model orders the site's pictures differently from the source model (rank correlation "
            f"{rho:.2f}, below {minimum:.2f})")


def gather_pixels(screening_model, paths, batch_size: int = 32, progress: bool = True, desc: str = "Reading site pictures"):
    """The model inputs of the pictures the input check accepts, decoded and checked as the app does.

    Returns (pixels (N, 3, H, W) float32, refused {reason: n}, unreadable n, accepted mask over paths).
    Only counts leave this function besides the pixels: no name is kept.
    """
    from tqdm import tqdm

    from .images import ImageLoadError

    paths = list(paths)
    kept, refused, unreadable = [], {}, 0
    accepted = np.zeros(len(paths), dtype=bool)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            images, where = [], []
            for offset, path in enumerate(paths[start:start + batch_size]):
                try:
                    images.append(screening_model.decode(path))
                    where.append(start + offset)
                except (ImageLoadError, OSError):
                    unreadable += 1
            if images:
                pixels = screening_model.preprocess(images).numpy()
                for index, row, prediction in zip(where, pixels, screening_model.predict_decoded(images)):
                    if prediction.refused:
                        reason = prediction.input_check.reason
                        refused[reason] = refused.get(reason, 0) + 1
                    else:
                        kept.append(row)
                        accepted[index] = True
            bar.update(min(batch_size, len(paths) - start))
    pixels = np.stack(kept).astype(np.float32) if kept else np.zeros((0, 3, 1, 1), dtype=np.float32)
    return pixels, refused, unreadable, accepted


def batches(pixels: np.ndarray, batch_size: int = 64):
    for start in range(0, len(pixels), batch_size):
        yield pixels[start:start + batch_size]


def malignant_probabilities(model, pixels: np.ndarray, temperature: float = 1.0, malignant_index: int = 1,
                            batch_size: int = 64) -> np.ndarray:
    """P(malignant) of a PyTorch classifier on model inputs, in eval mode (running statistics)."""
    import torch

    from .calibration import softmax_probs

    model.eval()
    logits = []
    with torch.inference_mode():
        for batch in batches(pixels, batch_size):
            logits.append(model(pixel_values=torch.as_tensor(np.ascontiguousarray(batch, dtype=np.float32))).logits.numpy())
    logits = np.concatenate(logits) if logits else np.zeros((0, 2), dtype=np.float32)
    return softmax_probs(logits, temperature)[:, malignant_index]
