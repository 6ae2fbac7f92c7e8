"""Adapt a BatchNorm model to a site's device without labels: re-estimate its normalisation statistics (AdaBN).

    model = ScreeningModel.load("model", **FAST)
    pixels, refused, unreadable, _, distances, _ = gather_pixels(model, paths)   # what the input check accepts, no label
    require_unfamiliar(model.config, distances)                    # NothingToAdapt for a training-like site
    network, rule, guard = adapt_to_site(model, pixels)            # ADAPTATION_RULE, or a fallback; else refused
    write_adapted_model("model", "model-site", model, network, pixels, adaptation_block(...))

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

import datetime
import hashlib
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .site_calibration import SiteCalibrationError, restamp_input_check, sha256_of, staged_output

# The rule calibrate_site.py applies, chosen by benchmarks/site_adaptation_rules.py on ham10000's acquisitions
# and the 10k test split (docs/site_calibration.md; derm7pt only reported): "layers" counts BatchNorm layers in
# forward order (None: all), "mix" is the share of the site's statistics in the result (1: the site's alone),
# "variances" False keeps the stored variances and moves the means only.
ADAPTATION_RULE = {"layers": None, "mix": 1.0, "variances": True}
# Pictures per batch when measuring statistics: the whole sample at the measured minimum, few batches above.
ESTIMATION_BATCH = 128
# The milder rules the guard falls back to, in turn, before refusing. Means only first: on ham10000's
# vidir_modern, where the variances re-rank the pictures, it kept the source's ROC AUC (0.689) and sensitivity
# 0.879 where the full rule gave 0.644 and 0.794; the half mix for a site whose means alone re-rank it (MoleMax).
FALLBACK_RULES = ({"layers": None, "mix": 1.0, "variances": False}, {"layers": None, "mix": 0.5, "variances": True})
# The smallest sample measured (benchmarks/site_calibration.py --mode unlabeled, docs/site_calibration.md):
# below it nothing shows that the statistics hold.
MIN_PICTURES = 30
# The guard, on the site's own pictures (Spearman rank correlation of P(malignant)): the adapted model must keep
# the source model's order this well ...
MIN_RANK_CORRELATION = 0.80
# ... and, when the rule moves the variances, the order the same rule gives with the means alone. Above every
# figure of vidir_modern measured (0.87 on its halves, 0.77-0.91 on samples of 30-300; there the variances cost
# 0.09 of sensitivity), below vienna_dias' halves (0.93, 0.96) and the 10k test split's (0.99), where they did
# not (benchmarks/site_adaptation_rules.py; derm7pt was not looked at to set it).
MIN_VARIANCE_RANK_CORRELATION = 0.92


# The familiarity gate: a site whose pictures lie no farther from the training pictures (the input check's
# feature-space distance, median over the site) than a sample of a training source's own validation pictures
# would, at this quantile of such samples' medians, shows no shift to undo, and adapting a model trained on
# several sources to one of them costs sensitivity without re-ranking anything (10k test as the site: 0.974 ->
# 0.946 with the model shipped on 2026-12-05), which the guard is built not to see. docs/site_calibration.md.
FAMILIAR_QUANTILE = 0.95
# The sample sizes the bound is stored for; a site uses the largest at or below its own count.
FAMILIAR_SAMPLE_SIZES = (30, 100, 300, 1000)
FAMILIARITY_KEY = "site_familiarity"

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CONFIG_KEY = "site_adaptation"
# config.json key of the operating points an adapted folder gets (fit_adapted_operating_points), when the source
# model carries them; without them an adapted folder keeps the source model's thresholds.
ADAPTED_POINTS_KEY = "adapted_operating_points"
CARD_SECTION = "site_adaptation"
# int8 graph against the PyTorch model it was exported from, largest difference in P(malignant) on the
# site's pictures; dynamic quantisation stays well under it (the figure is written into config.json).
PARITY_TOLERANCE = 0.05
# What the adapted folder rewrites (a stale fp32 graph would be rebuilt on load; it is not carried).
_REWRITTEN = {"config.json", "model.safetensors", "README.md", "model.int8.onnx", "model.fp32.onnx",
              "input_check_batchnorm.safetensors"}


class SitePictures(NamedTuple):
    """What gather_pixels keeps of a site's pictures: counts, the accepted pictures' inputs and distances."""

    pixels: np.ndarray  # (N, 3, H, W) float32, the pictures the input check accepts
    refused: dict  # {reason: n}
    unreadable: int
    accepted: np.ndarray  # bool mask over the paths given
    distances: np.ndarray  # (N,) the input check's feature-space distance of each accepted picture (NaN without one)
    probabilities: np.ndarray  # (N,) P(malignant) of each accepted picture, as the app scores it


class NothingToAdapt(SiteCalibrationError):
    """The site shows no device shift to undo: its pictures look like a training source's (require_unfamiliar), or
    its scores lie where the validation scores do (score_shift.require_shift)."""


class SiteAdaptationError(SiteCalibrationError):
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
            "to the site's pictures; move its thresholds with --method scores, or refit them on the site's diagnosed "
            "images with --data-dir.")


def estimate_site_statistics(model, pixels: np.ndarray, batch_size: int = ESTIMATION_BATCH, seed: int = 0) -> dict:
    """Each BatchNorm layer's mean and (unbiased) variance over the pictures: {name: (mean, var)}.

    All layers are measured in one pass with each of them normalising by the
    batch's statistics, as AdaBN does, so that a layer sees roughly what the
    layers before it will give once they are adapted; the statistics are
    averaged over the batches (momentum None). Because each batch normalises the
    next layers by its own statistics, a batch must look like the whole sample:
    the pictures are shuffled first (a folder sorted by diagnosis or by day
    would otherwise give batches of one kind, and other statistics).
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
        order = np.random.default_rng(seed).permutation(len(pixels))
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = pixels[np.sort(order[start:start + batch_size])]
                batch = torch.as_tensor(np.asarray(batch, dtype=np.float32))
                if len(batch) < 2 and seen:
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
    replace the model's (mixed with them by rule["mix"]); what calibrate_site.py
    does. With them (the same measurement on training pictures): only the
    difference between the site and the training pictures is applied, a shift of
    the mean and a ratio of the variance. benchmarks/site_adaptation_rules.py
    compares the two; the difference did no better (docs/site_calibration.md).
    rule["variances"] False moves the means only.
    A mix of variances, not of standard deviations: the mixed layer then
    normalises a mixture of the two domains' activations.
    """
    layers = batchnorm_layers(model)
    chosen = layers if rule.get("layers") is None else layers[: int(rule["layers"])]
    share = float(rule.get("mix", 1.0))
    variances = rule.get("variances", True)
    for name, module in chosen:
        mean, var = site_statistics[name]
        if reference_statistics is not None:
            reference_mean, reference_var = reference_statistics[name]
            mean = module.running_mean + (mean - reference_mean)
            var = module.running_var * (var / reference_var.clamp_min(module.eps))
        module.running_mean.copy_(share * mean + (1 - share) * module.running_mean)
        if variances:
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


def means_only(rule: dict) -> dict:
    """The same rule with the stored variances kept: what the guard compares a rule that moves them with."""
    return dict(rule, variances=False)


def sensitivity_guard(source_scores, adapted_scores, means_only_scores=None, minimum: float | None = None,
                      variance_minimum: float | None = None) -> str | None:
    """None when the adaptation kept the order of the site's pictures, else the sentence saying why it is unsafe.

    No label is available, so the guard cannot measure sensitivity. What it can
    measure is whether adaptation re-ranked the site's pictures: statistics that
    only re-centre the scores move them together and keep their order, and
    sensitivity then holds at the threshold the model was fitted for; where the
    model reads the site's pictures differently after adaptation, the order
    changes and melanomas can fall below lesions it used to rank under them.
    Two orders are checked: the source model's, and (means_only_scores, for a
    rule that moves the variances) the same rule's with the means moved alone.
    The second caught what the first missed: on a site the model ranks poorly
    (ham10000's vidir_modern), rescaling re-ranks it by as much as re-centring
    does on derm7pt, but it is the rescaling that costs the melanomas.
    docs/site_calibration.md has the measurements.
    """
    minimum = MIN_RANK_CORRELATION if minimum is None else minimum
    variance_minimum = MIN_VARIANCE_RANK_CORRELATION if variance_minimum is None else variance_minimum
    rho = rank_correlation(source_scores, adapted_scores)
    if rho < minimum:
        return (f"the adapted model orders the site's pictures differently from the source model (rank correlation "
                f"{rho:.2f}, below {minimum:.2f})")
    if means_only_scores is not None:
        rho = rank_correlation(means_only_scores, adapted_scores)
        if rho < variance_minimum:
            return (f"re-estimating the variances re-orders the site's pictures (rank correlation {rho:.2f} with the "
                    f"means moved alone, below {variance_minimum:.2f})")
    return None


def gather_pixels(screening_model, paths, batch_size: int = 32, progress: bool = True, desc: str = "Reading site pictures"):
    """The model inputs of the pictures the input check accepts, decoded and checked as the app does.

    Only counts, inputs, distances and scores leave this function: no name is kept.
    """
    from tqdm import tqdm

    from .images import ImageLoadError

    paths = list(paths)
    kept, distances, probabilities, refused, unreadable = [], [], [], {}, 0
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
                        distance = prediction.input_check.details.get("distance") if prediction.input_check else None
                        distances.append(np.nan if distance is None else distance)
                        probabilities.append(prediction.malignant_probability)
                        accepted[index] = True
            bar.update(min(batch_size, len(paths) - start))
    pixels = np.stack(kept).astype(np.float32) if kept else np.zeros((0, 3, 1, 1), dtype=np.float32)
    return SitePictures(pixels, refused, unreadable, accepted, np.asarray(distances, dtype=np.float64),
                        np.asarray(probabilities, dtype=np.float64))


def familiarity_bounds(distances_by_source: dict, draws: int = 2000, seed: int = 0) -> dict:
    """config.json's site_familiarity block: per sample size, the largest median distance a training source gives.

    distances_by_source: {source: the input check's distances of its accepted validation pictures}. For each
    size in FAMILIAR_SAMPLE_SIZES, samples of that many pictures are drawn from each source (with replacement),
    and the bound is the FAMILIAR_QUANTILE of their medians, the largest over the sources. Sources with fewer
    than MIN_PICTURES pictures are left out, as fit_adapted_operating_points leaves them out.
    """
    rng = np.random.default_rng(seed)
    usable = {name: np.asarray(values, dtype=np.float64) for name, values in distances_by_source.items()}
    usable = {name: values[np.isfinite(values)] for name, values in usable.items()}
    usable = {name: values for name, values in usable.items() if len(values) >= MIN_PICTURES}
    if not usable:
        raise SiteAdaptationError("No source has enough pictures with an input-check distance to bound familiarity.")
    bounds = {}
    for size in FAMILIAR_SAMPLE_SIZES:
        bounds[str(size)] = max(
            float(np.quantile(np.median(rng.choice(values, size=(draws, size)), axis=1), FAMILIAR_QUANTILE))
            for values in usable.values())
    return {"measure": "median of the input check's feature-space distance over the site's accepted pictures",
            "quantile": FAMILIAR_QUANTILE, "bounds_by_sample_size": bounds,
            "source_medians": {name: float(np.median(values)) for name, values in sorted(usable.items())}}


def familiarity(config, distances) -> dict | None:
    """The site's median distance against the stored bound for its size; None when the model stores no bound."""
    block = getattr(config, FAMILIARITY_KEY, None)
    distances = np.asarray(distances, dtype=np.float64)
    distances = distances[np.isfinite(distances)]
    if not block or len(distances) < MIN_PICTURES:
        return None
    size = max(int(key) for key in block["bounds_by_sample_size"] if int(key) <= len(distances))
    median, bound = float(np.median(distances)), float(block["bounds_by_sample_size"][str(size)])
    return {"median_distance": median, "bound": bound, "bound_sample_size": size, "familiar": median <= bound}


def require_unfamiliar(config, distances) -> dict | None:
    """The familiarity figures, or NothingToAdapt when the site looks like a training source."""
    figures = familiarity(config, distances)
    if figures and figures["familiar"]:
        raise NothingToAdapt(
            f"Not adapted: the site's pictures are as familiar to the model as its own training sources' (median "
            f"distance {figures['median_distance']:.2f}, at most {figures['bound']:.2f} for {figures['bound_sample_size']} "
            "pictures of a training source), so there is no device shift to undo; use the model as it is.")
    return figures


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


# ------------------------------------------------------------------ the adapted folder


def find_pictures(folder) -> list[Path]:
    """Every picture under folder, flat or nested, whatever its name; hidden files and folders are skipped."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SiteAdaptationError(f"{folder} is not a folder; give --unlabeled-dir a folder of the site's pictures.")
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def too_few(n: int, what: str, minimum: int = MIN_PICTURES) -> str | None:
    """The refusal when n pictures are fewer than minimum (each method's own measured minimum), else None."""
    if n >= minimum:
        return None
    return (f"Too few pictures to adapt to the site: {n} {what}, and adaptation needs at least {minimum} "
            f"(the smallest sample measured to hold); add {minimum - n} more.")


def adapt_to_site(screening_model, pictures: np.ndarray, rule: dict = ADAPTATION_RULE,
                  fallbacks: tuple = FALLBACK_RULES):
    """(adapted PyTorch model, the rule applied, guard figures) for the site's accepted pictures.

    The guard is tried on the rule, then on each fallback in turn; when all trip it is refused with a sentence.
    """
    import copy

    network = screening_model.model
    require_batchnorm(network, screening_model.model_id)

    done = {}  # the full rule's means-only comparison is also the first fallback: scored once

    def scored(candidate):
        key = tuple(sorted(candidate.items()))
        if key not in done:
            adapted = copy.deepcopy(network)
            adapt(adapted, statistics, candidate)
            done[key] = adapted, malignant_probabilities(adapted, pictures, screening_model.temperature,
                                                         screening_model.malignant_index)
        return done[key]

    source_scores = malignant_probabilities(network, pictures, screening_model.temperature,
                                            screening_model.malignant_index)
    statistics = estimate_site_statistics(network, pictures)
    tried = []
    for candidate in (rule, *fallbacks):
        adapted, scores = scored(candidate)
        moved_alone = scored(means_only(candidate))[1] if candidate.get("variances", True) else None
        problem = sensitivity_guard(source_scores, scores, moved_alone)
        tried.append({"rule": dict(candidate), "rank_correlation": rank_correlation(source_scores, scores),
                      "variance_rank_correlation": (None if moved_alone is None
                                                    else rank_correlation(moved_alone, scores)),
                      "guard_tripped": problem is not None})
        if problem is None:
            return adapted.eval(), candidate, {"tried": tried, "source_scores": source_scores, "scores": scores}
    raise SiteAdaptationError(
        f"Adaptation refused: {problem}, even with the milder rules, a sign that it could cost melanomas; use the "
        "model as it is, or refit its thresholds on the site's diagnosed images with --data-dir.")


def fit_adapted_operating_points(screening_model, sources: dict, min_sensitivity: float = 0.95,
                                 min_specificity: float = 0.95, progress: bool = True) -> dict:
    """Thresholds for the folders calibrate_site.py adapts, chosen on labelled pictures adapted as a site's are.

    sources: {acquisition: (pixels, labels)}, a validation split grouped by source. A model trained on
    several sources normalises with the statistics of their mix, and its thresholds are fitted on scores made
    with them. Adapted to one source alone, even one it trained on, its scores move (on the 10k test split:
    sensitivity 0.958 -> 0.882 for the candidate fine-tuned with ham10000) without re-ranking, which the guard
    is built not to see. So each source is adapted on its own pictures with the rule and guard a site gets,
    scored, and the thresholds are chosen on all of them pooled. A source with fewer than MIN_PICTURES
    pictures, or whose adaptation the guard refuses, is left out, as such a site would be.
    """
    from tqdm.auto import tqdm

    from .calibration import choose_operating_points

    scores, labels, by_source = [], [], {}
    for name, (pixels, source_labels) in tqdm(sources.items(), desc="Adapting per source", disable=not progress):
        source_labels = np.asarray(source_labels, dtype=int)
        entry = {"n": int(len(pixels)), "n_malignant": int(source_labels.sum())}
        if too_few(len(pixels), "pictures"):
            by_source[name] = dict(entry, left_out=f"fewer than {MIN_PICTURES} pictures")
            continue
        try:
            _, rule, guard = adapt_to_site(screening_model, pixels)
        except SiteAdaptationError:
            by_source[name] = dict(entry, left_out="the guard refused every rule")
            continue
        scores.append(guard["scores"])
        labels.append(source_labels)
        by_source[name] = dict(entry, rule={"mix": rule["mix"], "variances": rule.get("variances", True)})
    pooled = np.concatenate(labels) if labels else np.zeros(0, dtype=int)
    if not pooled.any() or pooled.all():
        raise SiteAdaptationError("No source with both classes could be adapted, so no threshold can be chosen "
                                  f"(per source: {by_source}).")
    points = choose_operating_points(pooled, np.concatenate(scores), min_sensitivity, min_specificity)
    return {"screening_threshold": float(points["screening_threshold"]),
            "high_risk_threshold": float(points["high_risk_threshold"]),
            "validation_sensitivity_at_screening": float(points["validation_sensitivity_at_screening"]),
            "validation_specificity_at_high_risk": float(points["validation_specificity_at_high_risk"]),
            "min_sensitivity": min_sensitivity, "min_specificity": min_specificity,
            "source_model_version": screening_model.version, "sources": by_source}


def parity(graph: bytes, network, pictures: np.ndarray, temperature: float, malignant_index: int) -> float:
    """Largest difference in P(malignant) between the ONNX graph and the PyTorch model on these pictures."""
    import onnxruntime

    from .calibration import softmax_probs

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    # One picture per run, as the app runs the int8 graph (its activation scales are per input tensor).
    logits = np.concatenate([session.run(["logits"], {"pixel_values": pictures[i:i + 1]})[0]
                             for i in range(len(pictures))])
    onnx_scores = softmax_probs(logits, temperature)[:, malignant_index]
    torch_scores = malignant_probabilities(network, pictures, temperature, malignant_index)
    return float(np.abs(onnx_scores - torch_scores).max())


def card_markdown(block: dict) -> str:
    rule = block["rule"]
    layers = "all its BatchNorm layers" if rule["layers"] is None else f"its first {rule['layers']} BatchNorm layers"
    fallback = (" The guard tripped on the full rule, so a milder one was applied." if block["fell_back"] else "")
    return "\n".join([
        "## Site adaptation",
        "",
        f"**This folder is adapted to one site's device.** On {block['date']}, `calibrate_site.py --unlabeled-dir` "
        f"re-estimated the BatchNorm statistics of `{block['source_model']}` (version `{block['source_model_version']}`) "
        f"on {block['n_adapted']} undiagnosed pictures of the site ({block['n_found']} found, "
        f"{block['n_unreadable']} unreadable, {sum(block['n_refused_by_input_check'].values())} refused by the input "
        f"check). Rule: {layers}, {share(rule)}.{fallback} No weight was trained and no label was used: every learned weight and the "
        "temperature are the source model's; only the normalisation statistics differ "
        f"(`config.json` names the source weights' sha256). Guard: the adapted model kept the order of the site's "
        f"pictures (rank correlation {block['guard']['rank_correlation']:.3f}, at least "
        f"{block['guard']['minimum']:.2f} required){variance_guard(block['guard'])}. Risk is **low** below "
        f"{block['screening_threshold']:.4f}, " + (
            "the threshold the source model carries for adapted folders: chosen on its validation pictures, each "
            "source adapted on its own (`adapted_operating_points` in `config.json`)."
            if block.get("thresholds") == "fitted under adaptation" else "as in the source model."),
        "",
        "Every figure elsewhere in this card is the source model's, measured before adaptation. Adaptation moves the "
        "scores back where the thresholds expect them; it cannot make the model rank a site's lesions better, and "
        "the site's own figures are unknown without diagnosed cases: refit the thresholds on them with `--data-dir` "
        "when the site has them. No picture and no file name was stored; only the counts above.",
    ] + ([] if not block.get("familiarity") else [
        "",
        f"Adapted because the site's pictures lie farther from the training pictures than a training source's own "
        f"(median input-check distance {block['familiarity']['median_distance']:.2f}, above "
        f"{block['familiarity']['bound']:.2f}, the bound for {block['familiarity']['bound_sample_size']} pictures)."]))


def variance_guard(guard: dict) -> str:
    rho = guard.get("variance_rank_correlation")
    return ("" if rho is None else f", and the order it gives with the means moved alone (rank correlation "
            f"{rho:.3f}, at least {guard['variance_minimum']:.2f} required)")


def share(rule: dict) -> str:
    which = "statistics" if rule.get("variances", True) else "means (the variances kept)"
    return (f"their {which} replaced by the site's" if rule["mix"] == 1 else
            f"their {which} moved {rule['mix']:.0%} of the way to the site's")


def write_adapted_model(source_dir, out_dir, screening_model, network, pictures: np.ndarray, block: dict,
                        overwrite: bool = False, name: str | None = None) -> Path:
    """A complete model folder: the adapted weights, a rebuilt and parity-checked int8 graph, the same input check."""
    import copy

    from safetensors.torch import save_file

    from .identity import stamp
    from .model_card import AT_END, UNDER_TITLE, upsert_card_section
    from .model_folder import SOURCE_STATISTICS_FILE
    from .onnx_engine import build_graph
    from .weights import weights_version

    source_dir, out_dir = Path(source_dir), Path(out_dir).expanduser()
    with staged_output(source_dir, out_dir, overwrite, rewritten=_REWRITTEN) as staging:
        if (source_dir / "README.md").is_file():
            shutil.copy2(source_dir / "README.md", staging / "README.md")
        config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        # An adapted source keeps its own source for the check: the statistics the check was fitted with.
        source_network = getattr(screening_model.model, "input_check_model", screening_model.model)
        network.save_pretrained(staging)  # safetensors; its config.json is replaced by the source's below
        # The graph's input-check tokens, as model_folder.attach_source_statistics gives them on load.
        object.__setattr__(network, "input_check_model", copy.deepcopy(source_network).eval().requires_grad_(False))
        version = weights_version(staging)
        graph = build_graph(network, "int8", version)
        difference = parity(graph, network, pictures[:64], screening_model.temperature, screening_model.malignant_index)
        if difference > PARITY_TOLERANCE:
            raise SiteAdaptationError(f"The rebuilt int8 graph differs from the adapted model by {difference:.3f} in "
                                      f"P(malignant) (at most {PARITY_TOLERANCE} allowed); nothing was written.")
        (staging / "model.int8.onnx").write_bytes(graph)
        adapted_points = config.get(ADAPTED_POINTS_KEY)
        if adapted_points:
            config.update(screening_threshold=adapted_points["screening_threshold"],
                          high_risk_threshold=adapted_points["high_risk_threshold"])
            block = dict(block, screening_threshold=adapted_points["screening_threshold"],
                         high_risk_threshold=adapted_points["high_risk_threshold"], thresholds="fitted under adaptation")
        config[CONFIG_KEY] = dict(block, source_weights_sha256=sha256_of(source_dir / "model.safetensors"),
                                  learned_weights_sha256=statistics_digest(network),
                                  onnx_int8_parity_max_difference=difference)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The input check was fitted on the source's tokens: the folder keeps the source's statistics for them
        # (model_folder.attach_source_statistics), and the graph above computes them beside the adapted ones.
        # Judged on the adapted tokens instead, it refused 97% of the 10k test split after adapting to derm7pt.
        save_file({key: tensor.contiguous() for key, tensor in source_network.state_dict().items()
                   if key in statistics_keys(source_network)}, str(staging / SOURCE_STATISTICS_FILE),
                  metadata={"source_model_version": screening_model.version})
        restamp_input_check(staging)
        if (staging / "README.md").is_file():
            upsert_card_section(staging / "README.md", CARD_SECTION, card_markdown(config[CONFIG_KEY]),
                                add_at=("identity", UNDER_TITLE, AT_END))
        stamp(staging, name or out_dir.name)
    return out_dir


def adaptation_block(screening_model, n_found: int, unreadable: int, refused: dict, n_adapted: int, rule: dict,
                     guard: dict) -> dict:
    """config.json's site_adaptation block: counts, provenance, the rule and the guard, never a name of a picture."""
    return {
        "date": datetime.date.today().isoformat(),
        "source_model": screening_model.model_id,
        "source_model_version": screening_model.version,
        "n_found": n_found, "n_unreadable": unreadable, "n_refused_by_input_check": refused, "n_adapted": n_adapted,
        "rule": {"layers": rule["layers"], "mix": rule["mix"], "variances": rule.get("variances", True)},
        "fell_back": len(guard["tried"]) > 1,
        "guard": {"measure": "Spearman rank correlation of P(malignant) on the site's pictures, before and after; "
                             "and, for a rule that moves the variances, with the same rule moving the means alone",
                  "minimum": MIN_RANK_CORRELATION, "variance_minimum": MIN_VARIANCE_RANK_CORRELATION,
                  "rank_correlation": guard["tried"][-1]["rank_correlation"],
                  "variance_rank_correlation": guard["tried"][-1]["variance_rank_correlation"],
                  "tried": [{"mix": item["rule"]["mix"], "variances": item["rule"].get("variances", True),
                             "rank_correlation": item["rank_correlation"],
                             "variance_rank_correlation": item["variance_rank_correlation"],
                             "tripped": item["guard_tripped"]} for item in guard["tried"]]},
        "screening_threshold": screening_model.screening_threshold,
        "high_risk_threshold": screening_model.high_risk_threshold,
    }


def measure_reference(screening_model, data_dir, n_pictures: int = 2000, seed: int = 0):
    """The reference statistics on up to n_pictures of a training split's benign/ and malignant/, half of each."""
    rng = np.random.default_rng(seed)
    paths, counts = [], {}
    for label in ("benign", "malignant"):
        found = find_pictures(Path(data_dir) / label)
        chosen = [found[i] for i in sorted(rng.permutation(len(found))[: n_pictures // 2])]
        paths += chosen
    pixels, _, _, accepted, _, _ = gather_pixels(screening_model, paths, desc="Reading training pictures")
    n_benign = int(accepted[: len(paths) - len(chosen)].sum())
    counts = {"benign": n_benign, "malignant": int(accepted.sum()) - n_benign}
    require_batchnorm(screening_model.model, screening_model.model_id)
    return estimate_site_statistics(screening_model.model, pixels), counts
