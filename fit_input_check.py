"""Fit the input check for a model folder, or print its verdict for pictures.

The check itself (bounds, the feature-space distance) lives in
melanoma_screen.input_check and its fitting in melanoma_screen.input_check_fitting;
fitting needs both the model (melanoma_screen.inference) and the training split
(data_prep), so its command line sits here, above both:

    python fit_input_check.py fit --model model     # the split stored in model/eval_results.json
    python fit_input_check.py check --model model photo.jpg more/   # the verdict per picture

train_vit.py calls fit_after_training as its last step.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import data_prep
from data_prep.settings import SplitSettings, add_split_arguments
from melanoma_screen.images import ImageLoadError
from melanoma_screen.inference import FAST, ScreeningModel
from melanoma_screen.input_check import REPORT_FILE, STATS_FILE
from melanoma_screen.input_check_fitting import DEFAULT_ALPHA, fit_screening_model
from melanoma_screen.architectures import servable

logger = logging.getLogger("fit_input_check")

FIT_COMMAND = "python fit_input_check.py fit --model {folder}"


def fit_after_training(output_dir, train_records, validation_records, **options) -> dict | None:
    """train_vit.py's last step: fit the check for the model just saved in output_dir.

    The model is read back from output_dir, not taken from the trainer (it may
    sit on a GPU): it is scored through the same fast path as the app (ONNX
    Runtime, int8), so the distances are fitted on what the app will compute. A failure here is logged with the
    command that redoes it; it never costs the trained model.
    """
    config = json.loads((Path(output_dir) / "config.json").read_text())
    if not servable(config.get("model_type")):
        logger.warning("no input check for a %s model: it measures the feature tokens of a ViT or LeViT, and so do "
                       "the heat-map and the ONNX fast path. The folder serves for comparing recipes, not for the "
                       "app.", config.get("model_type"))
        return None
    try:
        screening_model = ScreeningModel.load(str(output_dir), **FAST)
        try:
            return fit_screening_model(screening_model, train_records, validation_records, output_dir, **options)
        finally:
            screening_model.close()
    except Exception:
        logger.exception("fitting the input check failed; the model is saved without it. Fit it later with "
                         "`%s`.", FIT_COMMAND.format(folder=output_dir))
        return None


def training_split(folder: Path, args):
    """The training and validation records as train_vit.py made them for this model.

    Its settings come from the run's eval_results.json; --data-dir and the other
    flags override them (the stored paths are relative to where training ran).
    """
    results_path = folder / "eval_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    stored = SplitSettings.from_stored(results.get("settings", {}))
    overrides = {name: value for name, value in vars(SplitSettings.from_namespace(args)).items()
                 if getattr(args, name, None) is not None}
    if args.data_dir:
        overrides["dataset_name"] = None
    settings = SplitSettings(**{**vars(stored), **overrides})
    if not settings.data_dir and not settings.dataset_name:
        raise SystemExit(f"{results_path} does not say what the model was trained on: pass --data-dir.")
    split = data_prep.training_data(settings)
    return split["train"], split["validation"]


def fit_command(args) -> int:
    folder = Path(args.model)
    if not folder.is_dir():
        print(f"{folder} is not a model folder.", file=sys.stderr)
        return 2
    train_records, validation_records = training_split(folder, args)
    model = ScreeningModel.load(str(folder), **FAST)
    try:
        report = fit_screening_model(model, train_records, validation_records, folder, alpha=args.alpha,
                                     target_acceptance=args.target_acceptance)
    finally:
        model.close()
    print(json.dumps({key: report[key] for key in ("n_train", "n_validation", "validation_acceptance",
                                                   "validation_refusals", "distance_threshold", "spread_threshold")}, indent=2))
    print(f"wrote {folder / STATS_FILE} and {folder / REPORT_FILE}")
    return 0


def check_command(args) -> int:
    model = ScreeningModel.load(args.model, **FAST)
    files = []
    for name in args.images:
        path = Path(name)
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in files:
        try:
            prediction = model.predict(path)
        except ImageLoadError as error:
            print(f"{path}\tunreadable\t{error}")
            continue
        verdict = prediction.input_check
        print(f"{path}\t{verdict.reason or 'ok'}\t{json.dumps(verdict.details)}")
    model.close()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python fit_input_check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    fit_parser = commands.add_parser("fit", help="fit the check for a model folder on its training data",
                                     description="Measure the training and validation splits (split as train_vit.py "
                                                 "does) with the model, fit the bounds and the distance threshold, "
                                                 f"and write MODEL/{STATS_FILE} and MODEL/{REPORT_FILE}. The split "
                                                 "settings default to those stored in MODEL/eval_results.json.")
    fit_parser.add_argument("--model", default="model", help="model folder (default: model)")
    add_split_arguments(fit_parser, stored_defaults=True)
    fit_parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                            help=f"share of training pictures each statistic's bound may leave out (default: {DEFAULT_ALPHA})")
    fit_parser.add_argument("--target-acceptance", type=float, default=0.99,
                            help="share of validation pictures to accept, statistics and distance together "
                                 "(default: 0.99)")
    check_parser = commands.add_parser("check", help="print the verdict for pictures",
                                       description="Print ok or the refusal reason, with what tripped, per picture.")
    check_parser.add_argument("images", nargs="+", help="image files and/or folders")
    check_parser.add_argument("--model", default="model", help="model folder or Hub id (default: model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return fit_command(args) if args.command == "fit" else check_command(args)
    except (ValueError, data_prep.DataSourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
