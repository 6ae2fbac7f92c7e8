"""Refit a model's operating points on one site's own diagnosed images.

    scan = scan_site_folder("clinic_images")                      # calibrate_site.py: {benign,malignant}/*
    model = ScreeningModel.load("model", **FAST)                  # what the app runs
    scores = score_site(model, scan.records)                      # through the app's path, input check included
    fit = fit_site(scores, min_sensitivity=0.95, min_specificity=0.95)
    report = site_report(scores, fit, model)                      # counts and figures, never a file name
    write_site_model("model", "model-site", model, fit, report)   # a complete model folder

The thresholds come from validation images of the sources the model was trained
on; on another device every score moves, and the shipped screening threshold no
longer gives the sensitivity it promises. A site that scores a few dozen of its
own diagnosed lesions can put the operating points back where the targets say,
with the same rules training uses (melanoma_screen.calibration). This cannot
improve the model's ranking (its ROC AUC on the site is what it is), and the
thresholds only hold for cases like the ones fitted on.

Why at least MIN_MALIGNANT melanomas and MIN_BENIGN benign lesions: each
threshold is set on one class, so its uncertainty is a binomial one on that
class's count. With 20 melanomas and 19 flagged, the 95% (Wilson) interval of
the sensitivity is 0.76-0.99: one melanoma is 5 points of sensitivity, and below
20 the lower bound drops towards 0.70 (15 melanomas) and 0.60 (10). With 50
benign lesions a specificity near 0.5 is known to +-0.13 (0.37-0.63); with 30 it
is +-0.17. Fewer images than that give thresholds whose intervals are too wide
to act on, so they are refused.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import calibration, metrics
from .images import ImageLoadError
from .inference import weights_version
from .labels import CLASS_NAMES
from .model_card import AT_END, UNDER_TITLE, upsert_card_section

MIN_MALIGNANT = 20
MIN_BENIGN = 50
N_BOOTSTRAP = 2000
CONFIG_KEY = "site_calibration"
CARD_SECTION = "site_calibration"
# Files of a model folder that the site folder rewrites or must not carry: the rest is copied as is.
_REWRITTEN = {"config.json", "model.safetensors", "README.md"}
_NOT_CARRIED = {"training_args.bin"}  # pickled; never part of a model folder we publish


class SiteCalibrationError(ValueError):
    """Refused: the message is one sentence for people, and says what to do."""


@dataclass
class SiteScores:
    """What the model made of each usable site image; refusals are counted, not kept."""

    labels: np.ndarray  # 0 benign, 1 malignant, for the images the input check accepted
    log_probabilities: np.ndarray  # (N, n_classes) log softmax: logits up to a per-row shift, for refitting T
    malignant_index: int
    n_found: dict = field(default_factory=dict)  # {label name: images found in the folder}
    unreadable: dict = field(default_factory=dict)  # {label name: files that are not usable images}
    refused: dict = field(default_factory=dict)  # {input check reason: {label name: n}}

    @property
    def probabilities(self) -> np.ndarray:
        return calibration.softmax_probs(self.log_probabilities)[:, self.malignant_index]

    def counts(self) -> dict:
        return {name: int(np.sum(self.labels == label)) for label, name in enumerate(CLASS_NAMES)}

    def subset(self, mask) -> "SiteScores":
        """The accepted images selected by a boolean mask (a cross-validation half); refusal counts are not split."""
        mask = np.asarray(mask, dtype=bool)
        return SiteScores(self.labels[mask], self.log_probabilities[mask], self.malignant_index)


def shortfall(counts: dict, min_malignant: int = MIN_MALIGNANT, min_benign: int = MIN_BENIGN) -> str | None:
    """None when there are enough images of each class, else the sentence saying how many more are needed."""
    needed = {"malignant": min_malignant, "benign": min_benign}
    missing = {name: needed[name] - counts.get(name, 0) for name in needed if counts.get(name, 0) < needed[name]}
    if not missing:
        return None
    words = {"malignant": ("melanoma", "melanomas"), "benign": ("benign lesion", "benign lesions")}

    def amount(name, n, more=""):
        return f"{n} {more}{words[name][0] if n == 1 else words[name][1]}"

    have = " and ".join(amount(name, counts.get(name, 0)) for name in ("malignant", "benign"))
    more = " and ".join(amount(name, n, "more ") for name, n in missing.items())
    return (f"Too few images to calibrate: {have} are usable, and calibration needs at least "
            f"{amount('malignant', min_malignant)} and {amount('benign', min_benign)} (fewer give intervals too wide "
            f"to act on). Add {more}.")


def score_site(model, records, skipped=(), batch_size: int = 32, progress: bool = True) -> SiteScores:
    """Every record decoded and scored as the app does (ScreeningModel.predict_decoded, input check included).

    skipped: the scan's files that were not usable images ({"label": name, ...}), counted as unreadable.
    """
    labels, log_probabilities = [], []
    # A stray file beside the class folders has no label: it is no site image, so it is not counted.
    unreadable = Counter(item["label"] for item in skipped if item.get("label") in CLASS_NAMES)
    refused = {}
    found = Counter(CLASS_NAMES[record.label] for record in records) + unreadable
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    records = list(records)
    with tqdm(total=len(records), desc="Scoring site images", unit="img", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            images, batch_labels = [], []
            for record in records[start:start + batch_size]:
                try:
                    images.append(model.decode(record.path))
                    batch_labels.append(record.label)
                except (ImageLoadError, OSError):
                    unreadable[CLASS_NAMES[record.label]] += 1
            for label, prediction in zip(batch_labels, model.predict_decoded(images)):
                if prediction.refused:
                    by_label = refused.setdefault(prediction.input_check.reason, {name: 0 for name in CLASS_NAMES})
                    by_label[CLASS_NAMES[label]] += 1
                    continue
                labels.append(label)
                # The log of a softmax is the logits shifted by a constant per row, and softmax ignores that
                # shift, even after dividing by a temperature: fit_temperature gets what it would from logits.
                row = np.array([prediction.probabilities[name] for name in names], dtype=np.float64)
                log_probabilities.append(np.log(np.clip(row, np.finfo(np.float64).tiny, None)))
            bar.update(len(records[start:start + batch_size]))
    return SiteScores(
        labels=np.asarray(labels, dtype=np.int64),
        log_probabilities=np.asarray(log_probabilities, dtype=np.float64).reshape(-1, len(names)),
        malignant_index=model.malignant_index,
        n_found={name: int(found[name]) for name in CLASS_NAMES},
        unreadable={name: int(unreadable[name]) for name in CLASS_NAMES},
        refused=refused,
    )


@dataclass
class SiteFit:
    temperature: float  # 1.0 unless refitted: a factor on top of the model's own calibration
    operating_points: dict  # calibration.choose_operating_points' dict
    probabilities: np.ndarray  # P(malignant) of the fitted images after the site temperature


def fit_site(scores: SiteScores, min_sensitivity: float, min_specificity: float, fit_temperature: bool = False) -> SiteFit:
    """The training rules on the site's images: optional temperature first, then both thresholds."""
    problem = shortfall(scores.counts())
    if problem:
        refused = sum(sum(by_label.values()) for by_label in scores.refused.values())
        unreadable = sum(scores.unreadable.values())
        if refused or unreadable:
            problem += (f" ({refused} images were refused by the input check and {unreadable} could not be read; "
                        "they are not counted.)")
        raise SiteCalibrationError(problem)
    temperature = calibration.fit_temperature(scores.log_probabilities, scores.labels) if fit_temperature else 1.0
    if not calibration.MIN_TEMPERATURE * 1.01 < temperature < calibration.MAX_TEMPERATURE * 0.99:
        # At the bound the NLL wanted T -> infinity (or 0): the site's scores are shifted, not merely over- or
        # under-confident, and dividing the logits by one number cannot undo a shift; it would flatten every
        # probability towards 0.5 (derm7pt does this). The thresholds alone can still move the operating points.
        raise SiteCalibrationError(
            f"The temperature that best fits the site's images is at its limit ({temperature:.3g}): the scores are "
            "shifted on this site, not just over- or under-confident, and one temperature would make every "
            "probability meaningless. Run without --fit-temperature; the refitted thresholds alone put the operating "
            "points back.")
    probabilities = calibration.softmax_probs(scores.log_probabilities, temperature)[:, scores.malignant_index]
    points = calibration.choose_operating_points(scores.labels, probabilities, min_sensitivity, min_specificity)
    return SiteFit(temperature, points, probabilities)


# ------------------------------------------------------------------ figures


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _class_resamples(n: int, rng: np.random.Generator, n_bootstrap: int) -> np.ndarray:
    return rng.integers(0, n, size=(n_bootstrap, n))


def operating_point_figures(labels, probabilities, screening: float, high_risk: float,
                            n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Sensitivity and specificity at both thresholds, each with a stratified bootstrap 95% interval.

    Melanomas and benign lesions are resampled separately, so every replicate
    keeps the site's counts: the interval is that of these thresholds on
    another sample of the same size from the same site.
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    rng = np.random.default_rng(seed)
    malignant, benign = probabilities[labels == 1], probabilities[labels == 0]
    malignant_draws = malignant[_class_resamples(malignant.size, rng, n_bootstrap)]
    benign_draws = benign[_class_resamples(benign.size, rng, n_bootstrap)]
    figures = {}
    for key, threshold in (("at_screening_threshold", screening), ("at_high_risk_threshold", high_risk)):
        point = metrics.binary_metrics(labels, probabilities, threshold)
        figures[key] = {
            "threshold": float(threshold),
            "sensitivity": point["sensitivity"], "sensitivity_95ci": _interval((malignant_draws >= threshold).mean(axis=1)),
            "specificity": point["specificity"], "specificity_95ci": _interval((benign_draws < threshold).mean(axis=1)),
        }
    return figures


def expected_on_new_images(labels, probabilities, min_sensitivity: float, min_specificity: float,
                           n_bootstrap: int = 500, seed: int = 0) -> dict:
    """What refitting on a sample like this one gives on images it was not fitted on (out-of-bag bootstrap).

    The figures on the fitted images meet the targets by construction; these do
    not: each replicate fits the thresholds on a stratified resample and measures
    them on the images that resample left out. Medians with 95% intervals.
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == label) for label in (0, 1)]
    results = {"sensitivity_at_screening": [], "specificity_at_screening": [],
               "sensitivity_at_high_risk": [], "specificity_at_high_risk": []}
    for _ in range(n_bootstrap):
        drawn = np.concatenate([rng.choice(indices, size=indices.size) for indices in by_class])
        left_out = np.setdiff1d(np.arange(labels.size), drawn)
        held_labels = labels[left_out]
        if held_labels.min(initial=1) == 1 or held_labels.max(initial=0) == 0:
            continue
        points = calibration.choose_operating_points(labels[drawn], probabilities[drawn], min_sensitivity, min_specificity)
        held = probabilities[left_out]
        for name, key in (("screening", "screening_threshold"), ("high_risk", "high_risk_threshold")):
            results[f"sensitivity_at_{name}"].append(np.mean(held[held_labels == 1] >= points[key]))
            results[f"specificity_at_{name}"].append(np.mean(held[held_labels == 0] < points[key]))
    return {key: {"median": float(np.median(values)), "95ci": _interval(np.asarray(values))}
            for key, values in results.items()}


def roc_auc_figure(labels, probabilities, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """ROC AUC with a stratified bootstrap 95% interval: the ranking, which no threshold changes."""
    from scipy.stats import rankdata

    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    rng = np.random.default_rng(seed)
    malignant, benign = probabilities[labels == 1], probabilities[labels == 0]
    # Every replicate at once, as the Mann-Whitney statistic (ties share their mean rank), the value sklearn's
    # roc_auc_score gives; calling that 2000 times takes minutes on a loaded CPU.
    draws = np.concatenate([malignant[_class_resamples(malignant.size, rng, n_bootstrap)],
                            benign[_class_resamples(benign.size, rng, n_bootstrap)]], axis=1)
    ranks = rankdata(draws, axis=1)[:, : malignant.size].sum(axis=1)
    n1, n0 = malignant.size, benign.size
    auc = (ranks - n1 * (n1 + 1) / 2) / (n1 * n0)
    return {"value": metrics.binary_metrics(labels, probabilities)["roc_auc"], "95ci": _interval(auc)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def site_report(scores: SiteScores, fit: SiteFit, model, site_name: str = "site", n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """config.json's site_calibration block: counts, provenance and figures, never a file or image name."""
    source_points = {"screening_threshold": model.screening_threshold, "high_risk_threshold": model.high_risk_threshold}
    points = fit.operating_points
    return {
        "site": site_name,
        "date": datetime.date.today().isoformat(),
        "source_model": model.model_id,
        "source_model_version": model.version,
        "scored_with": f"{model.engine} {model.precision}",
        "n_found": scores.n_found,
        "n_unreadable": scores.unreadable,
        "n_refused_by_input_check": scores.refused,
        "n_fitted": scores.counts(),
        "min_sensitivity": points["min_sensitivity"],
        "min_specificity": points["min_specificity"],
        "temperature_refitted": fit.temperature != 1.0,
        "site_temperature": fit.temperature,
        "screening_threshold": points["screening_threshold"],
        "high_risk_threshold": points["high_risk_threshold"],
        "source_screening_threshold": source_points["screening_threshold"],
        "source_high_risk_threshold": source_points["high_risk_threshold"],
        "roc_auc": roc_auc_figure(scores.labels, scores.probabilities, n_bootstrap),
        # On the images fitted on: the site thresholds meet their targets here by construction.
        "at_site_thresholds": operating_point_figures(scores.labels, fit.probabilities, points["screening_threshold"],
                                                      points["high_risk_threshold"], n_bootstrap),
        # What the input model, unchanged, gave on the same images.
        "at_source_thresholds": operating_point_figures(scores.labels, scores.probabilities,
                                                        source_points["screening_threshold"],
                                                        source_points["high_risk_threshold"], n_bootstrap),
        "expected_on_new_images": expected_on_new_images(scores.labels, fit.probabilities, points["min_sensitivity"],
                                                         points["min_specificity"]),
    }


# ------------------------------------------------------------------ writing


def check_output_folder(source: Path, out_dir: Path, overwrite: bool) -> None:
    """Refuses to write over the input model, into or around it, or over an existing folder without overwrite."""
    source, out_dir = source.resolve(), out_dir.expanduser().resolve()
    if out_dir == source or source in out_dir.parents or out_dir in source.parents:
        raise SiteCalibrationError(f"The output folder {out_dir} would overwrite the input model {source}: "
                                   "choose another --out-dir, e.g. model-site.")
    if out_dir.exists() and not out_dir.is_dir():
        raise SiteCalibrationError(f"{out_dir} exists and is not a folder; choose another --out-dir.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SiteCalibrationError(f"{out_dir} already exists; pass --overwrite to replace it, or choose another --out-dir.")


def card_markdown(report: dict) -> str:
    """The card section: what was fitted, on how many images, and what it changed."""
    def figure(block: dict, metric: str) -> str:
        low, high = block[f"{metric}_95ci"]
        return f"{block[metric]:.3f} ({low:.3f}-{high:.3f})"

    def expected(key: str) -> str:
        value = report["expected_on_new_images"][key]
        return f"{value['median']:.3f} ({value['95ci'][0]:.3f}-{value['95ci'][1]:.3f})"

    fitted, found = report["n_fitted"], report["n_found"]
    refused = sum(sum(by_label.values()) for by_label in report["n_refused_by_input_check"].values())
    unreadable = sum(report["n_unreadable"].values())
    reasons = ", ".join(f"{reason}: {sum(by_label.values())}" for reason, by_label in report["n_refused_by_input_check"].items())
    site, source = report["at_site_thresholds"], report["at_source_thresholds"]
    temperature = (f" The temperature was refitted too (a further factor of {report['site_temperature']:.3f}, folded "
                   "into the classifier)." if report["temperature_refitted"] else "")
    label_free, adaptation = report.get("label_free_adaptation"), ""
    if label_free and label_free["kept"]:
        adaptation = (" The thresholds were fitted through the model adapted to the site's undiagnosed pictures "
                      "(its section below).")
    elif label_free:
        adaptation = (f" Adapting the model to the site's undiagnosed pictures was tried and not kept: "
                      f"{label_free['because']}; the thresholds were fitted on the source model.")
    rows = [
        f"| screening, sensitivity | {figure(source['at_screening_threshold'], 'sensitivity')} | "
        f"{figure(site['at_screening_threshold'], 'sensitivity')} | {expected('sensitivity_at_screening')} |",
        f"| screening, specificity | {figure(source['at_screening_threshold'], 'specificity')} | "
        f"{figure(site['at_screening_threshold'], 'specificity')} | {expected('specificity_at_screening')} |",
        f"| high risk, sensitivity | {figure(source['at_high_risk_threshold'], 'sensitivity')} | "
        f"{figure(site['at_high_risk_threshold'], 'sensitivity')} | {expected('sensitivity_at_high_risk')} |",
        f"| high risk, specificity | {figure(source['at_high_risk_threshold'], 'specificity')} | "
        f"{figure(site['at_high_risk_threshold'], 'specificity')} | {expected('specificity_at_high_risk')} |",
    ]
    auc = report["roc_auc"]
    return "\n".join([
        "## Site calibration",
        "",
        f"**The thresholds of this folder are site-calibrated.** On {report['date']}, `calibrate_site.py` refitted the "
        f"screening and high-risk thresholds of `{report['source_model']}` (version `{report['source_model_version']}`) "
        f"on {fitted['malignant'] + fitted['benign']} diagnosed images of one site ({report['site']}): "
        f"{fitted['malignant']} melanomas and {fitted['benign']} benign lesions, scored with {report['scored_with']} as "
        f"the app scores them. {found['malignant'] + found['benign']} images were found; {unreadable} could not be read "
        f"and {refused} were refused by the input check ({reasons or 'none'}), and were not fitted on.{temperature}{adaptation}",
        "",
        f"Targets, as in training: sensitivity {report['min_sensitivity']:g} at the screening threshold, specificity "
        f"{report['min_specificity']:g} at the high-risk threshold. Screening threshold "
        f"{report['source_screening_threshold']:.4f} -> **{report['screening_threshold']:.4f}**, high-risk threshold "
        f"{report['source_high_risk_threshold']:.4f} -> **{report['high_risk_threshold']:.4f}**. Every figure, threshold "
        "and test metric elsewhere in this card is the source model's, measured before this step.",
        "",
        f"On the site's images (ROC AUC {auc['value']:.3f}, {auc['95ci'][0]:.3f}-{auc['95ci'][1]:.3f}), with stratified "
        "bootstrap 95% intervals:",
        "",
        "| at threshold | source thresholds, same images | site thresholds, fitted images | site thresholds, expected on "
        "new images of the site (out-of-bag) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "On the fitted images the site thresholds meet their targets by construction; the last column is what the "
        "same refit gives on images it did not see. Calibration moves the operating points, it does not improve the "
        "ranking (the ROC AUC above is the model's own on these images), and it holds for cases like the ones fitted on: a change of "
        "device, of case mix, or of who is photographed calls for a new calibration. No image and no file name was "
        "stored; only the counts and figures above.",
    ])


def restamp_input_check(folder: Path) -> None:
    """Names the folder's weights in its input check, which InputCheck.load otherwise ignores as another model's.

    Only for a change of weights that the caller knows leaves the check valid.
    """
    from .input_check import REPORT_FILE, InputCheck

    version = weights_version(folder)
    check = InputCheck.load(folder)
    if check is None or check.model_version == version:
        return
    check.model_version = version
    check.save(folder)
    report_path = folder / REPORT_FILE
    if report_path.is_file():
        check_report = json.loads(report_path.read_text(encoding="utf-8"))
        check_report["model_version"] = version
        report_path.write_text(json.dumps(check_report, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def staged_output(source_dir: Path, out_dir: Path, overwrite: bool, rewritten=frozenset()):
    """A temporary folder beside out_dir holding the source's files but `rewritten`; it becomes out_dir on success.

    Written beside out_dir first, so a failure leaves an existing out_dir as it was.
    """
    check_output_folder(source_dir, out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for path in sorted(source_dir.iterdir()):
            if path.is_file() and path.name not in set(rewritten) | _NOT_CARRIED and not path.name.startswith("."):
                shutil.copy2(path, staging / path.name)
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; a model folder is not
        for path in staging.iterdir():
            path.chmod(0o666 & ~umask)  # nor are the files safetensors writes
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_site_model(source_dir, out_dir, model, fit: SiteFit, report: dict, overwrite: bool = False,
                     name: str | None = None) -> Path:
    """A complete model folder: the source's files, the new thresholds, a card section, the same input check.

    Without a refitted temperature the weights are copied byte for byte, so
    the version (their hash) is the source's. With one, it is folded into the
    classifier as training does and only the classifier changes; the config
    names the source weights' sha256 either way. Written into a temporary
    folder beside out_dir first, so a failure leaves an existing out_dir as it was.
    """
    from .identity import stamp
    from .model_folder import load_network

    source_dir, out_dir = Path(source_dir), Path(out_dir).expanduser()
    with staged_output(source_dir, out_dir, overwrite, rewritten=_REWRITTEN) as staging:
        # The card is the source's, so it is copied too; the section below says what changed.
        if (source_dir / "README.md").is_file():
            shutil.copy2(source_dir / "README.md", staging / "README.md")
        config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        if fit.temperature == 1.0:
            shutil.copy2(source_dir / "model.safetensors", staging / "model.safetensors")
        else:
            network = load_network(source_dir)
            # The model's own temperature when it was stored unfolded, times the site's factor on top.
            calibration.fold_temperature_into_classifier(network, model.temperature * fit.temperature)
            network.save_pretrained(staging)
            previous = config.get("calibration_temperature") or 1.0
            config.update(calibration_temperature=previous * fit.temperature, temperature_folded_into_classifier=True)
        config.update(calibration.operating_point_config(fit.operating_points))
        config[CONFIG_KEY] = dict(report, source_weights_sha256=sha256_of(source_dir / "model.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        # The check measures the encoder's embeddings, which a refitted temperature leaves alone.
        restamp_input_check(staging)
        if (staging / "README.md").is_file():
            # After the card's identity line (or its title), where a reader starts.
            upsert_card_section(staging / "README.md", CARD_SECTION, card_markdown(report),
                                add_at=("identity", UNDER_TITLE, AT_END))
        stamp(staging, name or out_dir.name)
    return out_dir
