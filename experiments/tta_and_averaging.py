"""Do test-time flips, checkpoint averaging or weight interpolation move the external result? Inference-only levers, tried on one trained run.

    python experiments/tta_and_averaging.py runs/vit-tiny-vig-isic-scale \
        --data-dir ../shared/data/melanoma_cancer_dataset --extra-train-dir ../shared/data/isic2017 \
        --audit-file runs/audit_joint.json --external-dir ../shared/data/derm7pt
    python experiments/tta_and_averaging.py model --external-dir ../shared/data/derm7pt \
        --interpolate-with runs/compare/shipped-8f561268f2b5 --alphas 0.8 1.2 1.5   # the split the run stored

Variants: the run's model as saved; the mean P(malignant) over the horizontal
flip, or over all four flips; the weights averaged over the run's saved
checkpoints (with and without the four flips); with --interpolate-with BASE,
the weights alpha * run + (1 - alpha) * BASE for each --alphas (WiSE-FT,
Wortsman et al., CVPR 2022: a fine-tuned model interpolated with the model it
was fine-tuned from often keeps the in-distribution ranking of one and the
robustness of the other; an alpha above 1 goes past the run, along what
fine-tuning changed, "task arithmetic", Ilharco et al., ICLR 2023; a LeViT base
at another input size is first resized to the run's); with --soup RUN..., the
weights averaged over this run and other runs fine-tuned from the same base (a
uniform "model soup", Wortsman et al., ICML 2022), and for comparison the mean
of their probabilities (the ensemble a distilled student would copy). Each
variant gets its own screening and high-risk thresholds fitted on the run's
validation split (the split training made, rebuilt by data_prep.training_data
with the same seed and audit, or without --data-dir from the settings the run
stored), and is then scored on the 10k test split and the external set at those
thresholds. The external set fits nothing; choosing a variant by it makes its
figures slightly optimistic.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python experiments/x.py` puts experiments/ on the path
from data_prep import DataSourceError, SplitSettings, training_data  # noqa: E402
from melanoma_screen import calibration, metrics  # noqa: E402
from melanoma_screen.architectures import resizable  # noqa: E402
from melanoma_screen.images import load_rgb_image  # noqa: E402
from melanoma_screen.inference import ScreeningModel  # noqa: E402
from melanoma_screen.labels import malignant_index  # noqa: E402
from melanoma_screen.model_folder import load_network  # noqa: E402
from melanoma_screen.modeling import averaged_state_dict, levit_at_resolution  # noqa: E402

FLIPS = {"none": [()], "hflip": [(), (3,)], "4 flips": [(), (3,), (2,), (2, 3)]}


def pixel_batches(model: ScreeningModel, paths: list[str], batch_size: int, desc: str) -> list[torch.Tensor]:
    """Decode and preprocess once; every variant reuses the same tensors."""
    return [model.preprocess([load_rgb_image(path) for path in paths[start:start + batch_size]])
            for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", leave=False)]


@torch.no_grad()
def p_malignant(network, batches: list[torch.Tensor], flips: list[tuple]) -> np.ndarray:
    malignant = malignant_index(network.config)
    out = []
    for pixels in batches:
        probs = [torch.softmax(network(pixel_values=torch.flip(pixels, dims) if dims else pixels).logits, -1)[:, malignant]
                 for dims in flips]
        out.append(torch.stack(probs).mean(0).numpy())
    return np.concatenate(out)


def averaged_network(checkpoints: list[Path]):
    network = load_network(checkpoints[0])
    network.load_state_dict(averaged_state_dict(type(network), checkpoints))
    return network.eval()


def interpolated_network(run_network, base_folder: Path, alpha: float):
    base = load_network(base_folder).eval()
    if base.config.to_diff_dict().get("hidden_size") != run_network.config.to_diff_dict().get("hidden_size"):
        raise SystemExit(f"{base_folder} is not the run's architecture; weights cannot be interpolated")
    if resizable(base) and int(base.config.image_size) != int(run_network.config.image_size):
        # A run fine-tuned at another resolution started from the base with its bias tables resized the same way.
        base = levit_at_resolution(base, int(run_network.config.image_size)).eval()
    run_state, base_state = run_network.state_dict(), base.state_dict()
    mixed = {}
    for key, run_value in run_state.items():
        if not run_value.is_floating_point():
            mixed[key] = run_value
        elif alpha > 1 and key.endswith(("running_mean", "running_var")):
            # Past the run (task-vector extrapolation), running variances can turn negative; keep the run's.
            mixed[key] = run_value
        else:
            mixed[key] = alpha * run_value.float() + (1 - alpha) * base_state[key].float()
    base.load_state_dict(mixed)
    base.config = copy.deepcopy(run_network.config)
    return base


def save_variant(network, run: Path, folder: Path, points: dict) -> None:
    """A model folder of the variant (its thresholds from validation), for evaluate_model.py's probes."""
    network.config.update(calibration.operating_point_config(points))
    network.save_pretrained(str(folder))
    shutil.copy(run / "preprocessor_config.json", folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="train_vit.py output folder, with its checkpoints/ kept")
    parser.add_argument("--data-dir", help="the run's data; without it, the split settings the run stored in eval_results.json")
    parser.add_argument("--extra-train-dir", action="append", default=[])
    parser.add_argument("--audit-file", help="the audit the run was trained with (its split depends on it); with --data-dir")
    parser.add_argument("--external-dir", action="append", default=[])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--interpolate-with", help="a model folder of the same architecture (the one the run was fine-tuned from)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="the run's weight in each interpolation")
    parser.add_argument("--soup", nargs="+", default=[], help="other runs fine-tuned from the same base as RUN, to average with it")
    parser.add_argument("--save-variants", help="save each interpolated model here, one folder per alpha, and the soup as soup/")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args(argv)

    run = Path(args.run)
    if args.data_dir:
        settings = SplitSettings.from_namespace(args, drop_duplicates=True)
    else:
        # The stored settings carry what the flags cannot, such as the kept split of the base a fine-tune started from.
        stored = json.loads((run / "eval_results.json").read_text()) if (run / "eval_results.json").is_file() else {}
        if "settings" not in stored:
            raise SystemExit(f"{run} has no split settings in eval_results.json: give --data-dir and --audit-file")
        settings = SplitSettings.from_stored(stored["settings"])
    try:
        data = training_data(settings, external_dirs=args.external_dir)
    except (ValueError, DataSourceError) as error:
        raise SystemExit(f"error: {error}") from error
    sets = {"validation": data["validation"], "test": data["test"], **data["external"]}
    model = ScreeningModel.load(str(run))
    pixels = {name: pixel_batches(model, [r.path for r in records], args.batch_size, name) for name, records in sets.items()}
    labels = {name: np.array([r.label for r in records]) for name, records in sets.items()}

    saved = model.model
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    networks = {"saved model": saved}
    if len(checkpoints) > 1:
        networks[f"mean of {len(checkpoints)} checkpoints"] = averaged_network(checkpoints)
    interpolated = {}
    if args.interpolate_with:
        for alpha in args.alphas:
            name = f"{alpha:g} run + {1 - alpha:g} base"
            networks[name] = interpolated_network(saved, Path(args.interpolate_with), alpha)
            interpolated[name] = alpha

    soup_name = None
    if args.soup:
        members = [run, *map(Path, args.soup)]
        soup_name = f"soup of {len(members)} runs"
        networks[soup_name] = averaged_network(members)
        networks[soup_name].config = copy.deepcopy(saved.config)
        networks["ensemble"] = [ScreeningModel.load(str(member)).model for member in members]

    rows = []
    for network_name, network in networks.items():
        for flip_name, flips in FLIPS.items():
            if network is not saved and flip_name == "hflip" or network_name in interpolated and flip_name != "none":
                continue
            if network_name == "ensemble" and flip_name != "none":
                continue
            members = network if isinstance(network, list) else [network]
            probs = {name: np.mean([p_malignant(member, batches, flips) for member in members], axis=0)
                     for name, batches in pixels.items()}
            points = calibration.choose_operating_points(labels["validation"], probs["validation"])
            row = {"weights": network_name, "flips": flip_name, "validation_auc": metrics.binary_metrics(labels["validation"], probs["validation"])["roc_auc"]}
            for name in sets:
                if name == "validation":
                    continue
                result = metrics.at_operating_points(labels[name], probs[name], points["screening_threshold"], points["high_risk_threshold"])
                row[name] = {"auc": result["at_0_5"]["roc_auc"],
                             "sens_scr": result["at_screening_threshold"]["sensitivity"],
                             "spec_scr": result["at_screening_threshold"]["specificity"]}
            rows.append(row)
            print(json.dumps(row))
            if network_name in interpolated and args.save_variants:
                save_variant(network, run, Path(args.save_variants) / f"alpha-{interpolated[network_name]:g}", points)
            if network_name == soup_name and flip_name == "none" and args.save_variants:
                save_variant(network, run, Path(args.save_variants) / "soup", points)

    external = [name for name in sets if name not in ("validation", "test")]
    header = f"{'weights':<24} {'flips':<8} {'val AUC':>7} {'test AUC':>8} {'sens/spec@scr':>13}" + "".join(
        f" {name[:10] + ' AUC':>14} {'sens/spec@scr':>13}" for name in external)
    print(header)
    for row in rows:
        line = f"{row['weights']:<24} {row['flips']:<8} {row['validation_auc']:>7.3f} {row['test']['auc']:>8.3f} " \
               f"{row['test']['sens_scr']:>6.3f}/{row['test']['spec_scr']:.3f}"
        for name in external:
            line += f" {row[name]['auc']:>14.3f} {row[name]['sens_scr']:>6.3f}/{row[name]['spec_scr']:.3f}"
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
