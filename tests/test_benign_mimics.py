"""Training that must look at the lesion: diagnoses and acquisitions from labels.csv, source x class
balance, benign-diagnosis balance, the auxiliary diagnosis outputs, acquisition augmentation,
per-source model selection, group DRO, per-diagnosis figures, and fine-tuning a LeViT folder."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import train_vit
from conftest import REPO_ROOT, SHARED_DATA, experiment_script, real_images
from data_prep import ImageRecord, sample_weights, scan_label_folder, source_class_groups
from melanoma_screen import metrics
from melanoma_screen.labels import benign_diagnosis_group
from melanoma_screen.model_folder import load_network, load_processor
from melanoma_screen.modeling import add_diagnosis_outputs, build_other_architecture, strip_diagnosis_outputs
from melanoma_screen.transforms import DermoscopyAugmentation
from melanoma_screen.weights import weights_version


def _records(groups: dict) -> list[ImageRecord]:
    """{(source, label, dx): count} as records with made-up paths (sample_weights reads no image)."""
    records = []
    for (source, label, dx), count in groups.items():
        records += [ImageRecord(path=f"/{source}/{dx}/{i}.jpg", label=label, split="train", source=source, dx=dx)
                    for i in range(count)]
    return records


def _totals(records, weights) -> dict:
    totals = defaultdict(float)
    for record, weight in zip(records, weights):
        totals[(record.source, record.label)] += weight
        totals[("dx", record.dx)] += weight
    return totals


# The training mix in miniature: the 10k set (both classes, no diagnoses), isic2017 once its
# melanomas are dropped as copies (benign only), and HAM10000's MoleMax acquisition (almost no melanoma).
MIX = {("10k", 0, ""): 450, ("10k", 1, ""): 400, ("isic2017", 0, "nv"): 140, ("isic2017", 0, "bkl"): 30,
       ("ham/molemax", 0, "nv"): 300, ("ham/molemax", 0, "bkl"): 9, ("ham/molemax", 0, "df"): 3, ("ham/molemax", 1, "mel"): 2,
       ("ham/modern", 0, "nv"): 70, ("ham/modern", 0, "bkl"): 20, ("ham/modern", 0, "df"): 2, ("ham/modern", 1, "mel"): 26}


def test_source_class_balance_leaves_no_source_a_class_balance_of_its_own():
    records = _records(MIX)
    weights = sample_weights(records, source_class=True, max_weight=10.0)
    totals = _totals(records, weights)
    assert np.mean(weights) == pytest.approx(1.0)
    # Every two-class source weighs its classes alike: the acquisition no longer tells the label.
    for source in ("ham/molemax", "ham/modern"):
        assert totals[(source, 0)] == pytest.approx(totals[(source, 1)])
    # The benign-only source is balanced together with the largest two-class one, not left to mean "benign".
    assert totals[("10k", 0)] + totals[("isic2017", 0)] == pytest.approx(totals[("10k", 1)])
    # MoleMax's two melanomas would weigh ~80 each; capped at 10 (before the mean is brought back to 1),
    # the source shrinks to stay balanced.
    uncapped = sample_weights(records, source_class=True, max_weight=1000.0)
    assert max(uncapped) > 60 and max(weights) < 20
    assert totals[("ham/molemax", 0)] < 0.1 * 314
    # Overall the classes weigh the same.
    benign = sum(w for r, w in zip(records, weights) if r.label == 0)
    assert benign == pytest.approx(sum(weights) / 2)


def test_diagnosis_balance_lifts_rare_benign_diagnoses_and_keeps_each_source_balanced():
    records = _records(MIX)
    plain = _totals(records, sample_weights(records, source_class=True))
    weights = sample_weights(records, source_class=True, diagnoses=True)
    balanced = _totals(records, weights)
    for dx in ("bkl", "df"):
        assert balanced[("dx", dx)] > 1.5 * plain[("dx", dx)]
    assert balanced[("dx", "nv")] < plain[("dx", "nv")]
    for source in ("ham/molemax", "ham/modern"):
        assert balanced[(source, 0)] == pytest.approx(balanced[(source, 1)])
    # Inside a source, a dermatofibroma weighs sqrt(n_known_benign / n_df) times a nevus.
    modern = {r.dx: w for r, w in zip(records, weights) if r.source == "ham/modern" and r.label == 0}
    assert modern["df"] / modern["nv"] == pytest.approx((92 / 2) ** 0.5 / (92 / 70) ** 0.5)
    assert sample_weights(records) is None


def test_labels_csv_gives_each_image_its_diagnosis_and_acquisition(tmp_path):
    ham = SHARED_DATA / "ham10000"
    if not (ham / "labels.csv").is_file():
        pytest.skip(f"{ham} is not there")
    with open(ham / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [next(row for row in rows if row["dx"] == dx and row["source"] == source)
              for dx, source in (("nv", "vidir_molemax"), ("bkl", "vidir_modern"), ("mel", "vienna_dias"))]
    folder = tmp_path / "ham10000"
    for row in chosen:
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(ham / row["file"], folder / row["file"])
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    scan = scan_label_folder(folder, "train", progress=False)
    assert not scan.skipped  # labels.csv beside the class folders is data, not a stray file
    found = {(record.dx, record.source, record.label_name) for record in scan.records}
    assert found == {("nv", "ham10000/vidir_molemax", "benign"), ("bkl", "ham10000/vidir_modern", "benign"),
                     ("mel", "ham10000/vienna_dias", "malignant")}


def test_melanoma_against_each_benign_group():
    labels = [1, 1, 0, 0, 0, 0]
    prob = [0.9, 0.6, 0.1, 0.2, 0.95, 0.7]  # the keratoses score above one melanoma or both
    groups = [None, None, "clark nevus", "clark nevus", "seborrheic keratosis", "lentigo"]
    report = metrics.auc_against_benign_groups(labels, prob, [benign_diagnosis_group(g) for g in groups])
    assert report["Clark (common, dysplastic) nevi"] == {"roc_auc": 1.0, "n_benign": 2, "n_malignant": 2}
    assert report["keratosis / lentigo / melanosis"]["roc_auc"] == pytest.approx(0.25)
    by_source = metrics.auc_per_source([1, 0] * 12 + [1, 0, 0], [0.9, 0.1] * 12 + [0.1, 0.9, 0.2], ["a"] * 24 + ["b"] * 3,
                                       min_each_class=10)
    assert by_source == {"a": 1.0}  # b has one melanoma: its AUC would be noise, so it is not reported


def test_diagnosis_outputs_leave_the_screening_outputs_and_are_stripped_before_saving(tmp_path):
    model = build_other_architecture("levit", 64, num_labels=2, id2label={0: "benign", 1: "malignant"},
                                     label2id={"benign": 0, "malignant": 1}).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        add_diagnosis_outputs(model, ["bkl", "mel", "nv"])
        widened = model(pixel_values=pixels).logits
    assert widened.shape == (2, 5)
    torch.testing.assert_close(widened[:, :2], before)
    model.save_pretrained(tmp_path / "checkpoint")  # Trainer's checkpoints reload at their size
    reloaded = type(model).from_pretrained(tmp_path / "checkpoint").eval()
    assert reloaded.config.id2label[4] == "dx:nv"
    strip_diagnosis_outputs(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, before)
    assert reloaded.config.id2label == {0: "benign", 1: "malignant"} and reloaded.config.num_labels == 2


def test_screening_loss_weighs_each_image_and_adds_the_diagnosis_term():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.1], [0.3, 0.2, -0.4, 1.0], [-1.0, 1.5, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    plain = torch.nn.functional.cross_entropy(logits[:, :2], labels)
    loss = train_vit.screening_loss(None, 0.0)
    assert loss({"logits": logits}, labels) == pytest.approx(plain.item())
    packed = torch.tensor([[0, -1, 1.0], [1, -1, 1.0], [1, -1, 1.0]])
    assert loss({"logits": logits}, packed) == pytest.approx(plain.item())
    # An image of weight 0 does not count; one of weight 2 counts twice.
    weighted = torch.tensor([[0, -1, 0.0], [1, -1, 2.0], [1, -1, 1.0]])
    per_image = torch.nn.functional.cross_entropy(logits[:, :2], labels, reduction="none")
    assert loss({"logits": logits}, weighted) == pytest.approx(((2 * per_image[1] + per_image[2]) / 3).item())
    with_dx = torch.tensor([[0, 1, 1.0], [1, -1, 1.0], [1, 0, 1.0]])
    dx_term = torch.nn.functional.cross_entropy(logits[[0, 2], 2:], torch.tensor([1, 0]))
    assert train_vit.screening_loss(None, 0.0, 0.5)({"logits": logits}, with_dx) == pytest.approx((plain + 0.5 * dx_term).item())


def test_lookalike_ranking_term_pushes_melanomas_above_the_lookalikes_only():
    # Rows: (label, diagnosis id or -1, weight, group id, look-alike). Image 1 is a keratosis, image 2 a nevus.
    logits = torch.tensor([[-1.0, 1.0], [0.0, 2.0], [1.0, 0.0], [0.5, 0.0]], requires_grad=True)
    packed = torch.tensor([[1, -1, 1.0, 0, 0], [0, -1, 1.0, 0, 1], [0, -1, 1.0, 0, 0], [1, -1, 1.0, 0, 0]])
    plain = train_vit.screening_loss(None, 0.0)({"logits": logits}, packed)
    ranked = train_vit.screening_loss(None, 0.0, lookalike_ranking_weight=0.5)({"logits": logits}, packed)
    margin = logits[:, 1] - logits[:, 0]
    pairs = torch.nn.functional.softplus(margin[1] - margin[[0, 3]]).mean()
    assert ranked.item() == pytest.approx((plain + 0.5 * pairs).item())
    (ranked - plain).backward()
    # The keratosis' malignant score goes down, the melanomas' up; the nevus is not in any pair.
    assert logits.grad[1, 1] > 0 and logits.grad[0, 1] < 0 and logits.grad[3, 1] < 0
    assert torch.all(logits.grad[2] == 0)
    # A batch without a look-alike, or packed without the column, gets plain cross-entropy.
    no_lookalike = packed.clone()
    no_lookalike[1, 4] = 0
    loss = train_vit.screening_loss(None, 0.0, lookalike_ranking_weight=0.5)
    assert loss({"logits": logits}, no_lookalike).item() == pytest.approx(plain.item())
    assert loss({"logits": logits}, packed[:, :4]).item() == pytest.approx(plain.item())
    records = _records(MIX)
    flagged = {(record.label, record.dx) for record in records if train_vit.is_lookalike(record)}
    assert flagged and all(label == 0 and dx in ("bkl", "df", "vasc") for label, dx in flagged)


def test_group_dro_groups_are_sources_by_class_with_benign_only_sources_folded_in():
    records = _records(MIX)
    ids, names = source_class_groups(records)
    assert names == ["10k/benign", "10k/malignant", "ham/modern/benign", "ham/modern/malignant",
                     "ham/molemax/benign", "ham/molemax/malignant"]
    assert {names[i] for i, record in zip(ids, records) if record.source == "isic2017"} == {"10k/benign"}


def test_group_dro_by_diagnosis_splits_benign_groups_into_look_alikes_large_enough_to_weigh():
    records = _records(MIX)
    ids, names = source_class_groups(records, by_diagnosis=True)
    nevi, keratoses = "nevi (all kinds)", "keratosis / lentigo / melanosis"
    assert names == sorted(["10k/benign", f"10k/benign/{nevi}", f"10k/benign/{keratoses}", "10k/malignant",
                            "ham/modern/benign", f"ham/modern/benign/{nevi}", f"ham/modern/benign/{keratoses}",
                            "ham/modern/malignant", "ham/molemax/benign", f"ham/molemax/benign/{nevi}",
                            "ham/molemax/malignant"])
    group_of = defaultdict(set)
    for i, record in zip(ids, records):
        group_of[(record.source, record.label, record.dx)].add(names[i])
    # isic2017's keratoses weigh as the 10k source's own look-alike group; the 10k benign images have no dx.
    assert group_of[("isic2017", 0, "bkl")] == {f"10k/benign/{keratoses}"} and group_of[("10k", 0, "")] == {"10k/benign"}
    # 9 MoleMax keratoses and 2-3 dermatofibromas are too few for a weight of their own: their source's benign group.
    assert group_of[("ham/molemax", 0, "bkl")] == group_of[("ham/molemax", 0, "df")] == {"ham/molemax/benign"}
    assert group_of[("ham/modern", 0, "df")] == {"ham/modern/benign"}
    assert group_of[("ham/modern", 1, "mel")] == {"ham/modern/malignant"}


def test_group_dro_pushes_the_worst_group_and_mixes_the_group_losses_by_their_weights():
    # Group 0 (benign) is fitted, group 1 (malignant) is not: group 1's weight must grow batch after batch.
    logits = torch.tensor([[3.0, -3.0], [2.5, -2.0], [1.0, 0.5], [0.2, 0.0]])
    packed = torch.tensor([[0, -1, 1.0, 0], [0, -1, 1.0, 0], [1, -1, 1.0, 1], [1, -1, 3.0, 1]])
    per_image = torch.nn.functional.cross_entropy(logits, packed[:, 0].long(), reduction="none")
    group_loss = torch.stack([per_image[:2].mean(), (per_image[2] + 3 * per_image[3]) / 4])
    loss = train_vit.screening_loss(None, 0.0, group_names=["a/benign", "a/malignant"], group_dro_step=0.5)
    first = loss({"logits": logits}, packed)
    q = torch.softmax(0.5 * group_loss, 0)
    assert first.item() == pytest.approx((q * group_loss).sum().item(), rel=1e-5)
    assert loss.group_weights["a/malignant"] == pytest.approx(q[1].item(), rel=1e-5)
    for _ in range(20):
        last = loss({"logits": logits}, packed)
    assert loss.group_weights["a/malignant"] > 0.99
    assert last.item() == pytest.approx(group_loss[1].item(), rel=0.01)
    # A batch without one group mixes only the groups it holds.
    assert loss({"logits": logits[:2]}, packed[:2]).item() == pytest.approx(group_loss[0].item(), rel=1e-5)


def test_acquisition_augmentation_degrades_like_another_camera_and_keeps_the_frame():
    image = Image.open(real_images("test", "malignant", 1)[0]).convert("RGB").resize((128, 128))
    rng = random.Random(0)
    outputs = [DermoscopyAugmentation.acquisition_chain(image, rng) for _ in range(12)]
    original = np.asarray(image, dtype=np.float32)
    changes = [np.abs(np.asarray(out, dtype=np.float32) - original).mean() for out in outputs]
    assert all(out.size == image.size and out.mode == "RGB" for out in outputs)
    assert min(changes) > 0.3 and max(changes) < 25  # always recompressed, never a different picture
    # Blur and down-scaling take fine detail away: the high frequencies of some outputs drop clearly.
    detail = lambda picture: np.abs(np.diff(np.asarray(picture.convert("L"), dtype=np.float32), axis=1)).mean()  # noqa: E731
    assert min(detail(out) for out in outputs) < 0.8 * detail(image)
    assert DermoscopyAugmentation(image_size=128, acquisition=0.0)(image, random.Random(1)).size == (128, 128)


def test_the_shipped_levit_folder_fine_tunes_through_the_auto_class():
    model, processor, base, description = train_vit.build_model(train_vit.ModelArguments(model_name_or_path=str(REPO_ROOT / "model")), seed=0)
    assert type(model).__name__ == "LevitForImageClassification" and base is None
    assert description.startswith("LeViT (") and "fine-tuned from" in description
    shipped = type(model).from_pretrained(str(REPO_ROOT / "model")).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, shipped[name])  # every weight carried over, the head included


def test_the_shipped_levit_fine_tunes_at_another_resolution_and_still_ranks_the_lesions(tiny_model_dir):
    size = json.loads((REPO_ROOT / "model" / "config.json").read_text())["image_size"] + 32  # not the shipped size
    arguments = train_vit.ModelArguments(model_name_or_path=str(REPO_ROOT / "model"), image_size=size)
    model, processor, _, description = train_vit.build_model(arguments, seed=0)
    assert model.config.image_size == size and processor.size == {"height": size, "width": size}
    assert description.endswith(f"resized to {size} px")
    assert f"(weights {weights_version(REPO_ROOT / 'model')})" in description  # which model/, once it is replaced
    shipped = load_network(REPO_ROOT / "model").eval()
    # Every bias table is resized, not re-initialised: the bias of a position to itself (offset 0, 0) is kept
    # exactly, and the rest follow the learnt table. Ranking alone cannot show it: on the shipped model,
    # zeroing every table moves the scores of real lesions no more than resizing them does.
    learnt, resized = shipped.state_dict(), model.state_dict()
    tables = [name for name in learnt if name.endswith("attention_biases")]
    grown = [name for name in tables if resized[name].shape[1] > learnt[name].shape[1]]
    assert grown and all(resized[name].shape[1] >= learnt[name].shape[1] for name in tables)
    for name in grown:
        assert torch.equal(resized[name][:, 0], learnt[name][:, 0])
        assert resized[name].std() == pytest.approx(learnt[name].std().item(), rel=0.15)
    shipped_processor = load_processor(REPO_ROOT / "model")
    images = [Image.open(path).convert("RGB") for label in ("benign", "malignant") for path in real_images("test", label, 12)]
    with torch.no_grad():
        before = torch.softmax(shipped(**shipped_processor(images, return_tensors="pt")).logits, -1)[:, 1]
        after = torch.softmax(model.eval()(**processor(images, return_tensors="pt")).logits, -1)[:, 1]
    # Before any training, the resized model still scores real lesions much as the shipped one does.
    assert np.corrcoef(before.numpy(), after.numpy())[0, 1] > 0.8
    with pytest.raises(SystemExit, match="input size of a levit only; .* is a vit"):
        train_vit.build_model(train_vit.ModelArguments(model_name_or_path=str(tiny_model_dir), image_size=96), seed=0)


def _labelled_copy(source, target, count_per_label, column):
    """A few images of a shared set with their labels.csv rows."""
    with open(source / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = []
    for label in ("benign", "malignant"):
        picked = [row for row in rows if row["label"] == label]
        chosen += picked[:: max(1, len(picked) // count_per_label)][:count_per_label]
    for row in chosen:
        (target / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row["file"], target / row["file"])
    with open(target / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", column, *(["source"] if "source" in rows[0] else [])],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(chosen)


def test_a_levit_run_fine_tuned_with_every_mimic_lever_publishes_two_labels(tiny_image_folder, tmp_path):
    """The full recipe end to end: a LeViT folder fine-tuned with source x class and diagnosis balance, the
    diagnosis outputs, acquisition augmentation, per-source selection and group DRO; pipeline reads benign/malignant."""
    for name in ("ham10000", "derm7pt"):
        if not (SHARED_DATA / name / "labels.csv").is_file():
            pytest.skip(f"{SHARED_DATA / name} is not there")
    ham, derm = tmp_path / "ham10000", tmp_path / "derm7pt"
    _labelled_copy(SHARED_DATA / "ham10000", ham, 8, "dx")
    _labelled_copy(SHARED_DATA / "derm7pt", derm, 6, "diagnosis")
    base = tmp_path / "levit-base"
    model = build_other_architecture("levit", 64, num_labels=2, id2label={0: "benign", 1: "malignant"},
                                     label2id={"benign": 0, "malignant": 1})
    model.save_pretrained(base)
    output = tmp_path / "run"
    train_vit.main([
        "--data-dir", str(tiny_image_folder), "--extra-train-dir", str(ham), "--external-dir", str(derm),
        "--model-name-or-path", str(base), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--balance", "source_class", "--balance-diagnoses", "--diagnosis-head-weight", "0.3",
        "--augment-acquisition", "0.5", "--select-on", "mean_source", "--group-dro-step", "0.01",
        "--output-dir", str(output),
    ])
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "benign", "1": "malignant"}
    report = json.loads((output / "eval_results.json").read_text())
    assert report["checkpoint_selection"]["best_checkpoint"]["metric"] == "mean_source_auc"
    assert {group for group in report["sample_weights_by_group"] if group.startswith("ham10000/")}
    dro = report["group_dro_weights"]
    assert "ham10000/vidir_modern/malignant" in dro and len(dro) == 4 and sum(dro.values()) == pytest.approx(1.0)
    groups = report["external"]["derm7pt"]["auc_by_benign_group"]
    assert groups and all(0.0 <= row["roc_auc"] <= 1.0 and row["n_malignant"] == 6 for row in groups.values())
    assert "Melanoma against" in (output / "README.md").read_text()
    scores = pipeline("image-classification", model=str(output))(str(real_images("test", "malignant", 1)[0]))
    assert sorted(row["label"] for row in scores) == ["benign", "malignant"]


def test_a_held_out_source_leaves_training_and_is_scored_like_an_external_set(tiny_image_folder, tmp_path):
    from data_prep import SplitSettings, training_data

    if not (SHARED_DATA / "ham10000" / "labels.csv").is_file():
        pytest.skip("ham10000 is not there")
    ham = tmp_path / "ham10000"
    _labelled_copy(SHARED_DATA / "ham10000", ham, 12, "dx")
    sources = {record.source for record in scan_label_folder(ham, "train", progress=False).records}
    held = sorted(sources)[0]
    settings = SplitSettings(data_dir=str(tiny_image_folder), extra_train_dir=[str(ham)], hold_out_source=held)
    data = training_data(settings, progress=False)
    assert held not in {record.source for record in data["train"] + data["validation"]}
    assert data["external"][f"held-out {held}"] and {r.source for r in data["external"][f"held-out {held}"]} == {held}
    with pytest.raises(ValueError, match="no training image comes from it"):
        training_data(SplitSettings(data_dir=str(tiny_image_folder), hold_out_source="nowhere"), progress=False)


def test_evaluate_model_prints_and_cards_melanoma_against_each_benign_diagnosis(tmp_path, capsys):
    import evaluate_model

    if not (SHARED_DATA / "derm7pt" / "labels.csv").is_file():
        pytest.skip("derm7pt is not there")
    derm = tmp_path / "derm7pt"
    _labelled_copy(SHARED_DATA / "derm7pt", derm, 12, "diagnosis")
    card = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "model" / "README.md", card)
    out = tmp_path / "report.json"
    assert evaluate_model.main(["--model", str(REPO_ROOT / "model"), "--data-dir", str(derm), "--card", str(card),
                                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    with open(derm / "labels.csv", newline="") as handle:
        diagnoses = {row["diagnosis"] for row in csv.DictReader(handle) if row["label"] == "benign"}
    assert set(report["auc_by_benign_diagnosis"]) == diagnoses
    printed = capsys.readouterr().out
    for group, row in report["auc_by_benign_group"].items():
        assert row["n_malignant"] == 12 and f"{row['roc_auc']:.3f}" in printed
        assert f"| derm7pt | {group} | {row['n_benign']} | {row['roc_auc']:.3f} |" in card.read_text()
    plain = tmp_path / "plain"
    for label in ("benign", "malignant"):
        shutil.copytree(derm / label, plain / label)
    with pytest.raises(SystemExit) as refused:
        evaluate_model.main(["--model", str(REPO_ROOT / "model"), "--data-dir", str(plain), "--card", str(card)])
    assert refused.value.code == 2 and "neither" in capsys.readouterr().err


def test_fine_tuning_a_run_folder_keeps_its_split_and_a_hub_id_does_not(tiny_model_dir):
    stored = json.loads((tiny_model_dir / "eval_results.json").read_text())["settings"]
    kept = json.loads(train_vit.base_split_settings(train_vit.ModelArguments(model_name_or_path=str(tiny_model_dir))))
    assert kept["data"] == stored["data"] and kept["training"]["seed"] == stored["training"]["seed"]
    assert train_vit.base_split_settings(train_vit.ModelArguments(model_name_or_path="google/vit-base-patch16-224-in21k")) is None
    assert train_vit.base_split_settings(train_vit.ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                                  scratch_config="tiny")) is None


def test_training_only_the_last_stage_leaves_the_stem_and_earlier_stages_and_their_statistics_as_they_were():
    model, processor, _, _ = train_vit.build_model(train_vit.ModelArguments(model_name_or_path=str(REPO_ROOT / "model")), seed=0)
    sentence = train_vit.train_only_last_stages(model, 1)
    assert sentence == ", only its last 1 of 3 stages and heads trained"
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = [Image.open(path).convert("RGB") for label in ("benign", "malignant") for path in real_images("train", label, 4)]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, torch.tensor([0] * 4 + [1] * 4))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = model.state_dict()
    last = "levit.encoder.stages.2."
    changed = {name for name, tensor in after.items() if tensor.dtype.is_floating_point and not torch.equal(tensor, before[name])}
    assert changed and all(name.startswith((last, "classifier")) for name in changed), sorted(changed)[:5]
    assert any(name.startswith(last) and name.endswith("running_mean") for name in changed)  # the trained stage's move
    with pytest.raises(SystemExit, match="1 to 3"):
        train_vit.train_only_last_stages(model, 4)


def test_the_stem_and_first_stage_learn_at_their_own_rate_through_warm_up_and_decay():
    from transformers import TrainingArguments, get_scheduler

    model, _, _, _ = train_vit.build_model(train_vit.ModelArguments(model_name_or_path=str(REPO_ROOT / "model")), seed=0)
    arguments = TrainingArguments(output_dir="unused", learning_rate=1e-4, weight_decay=0.05, report_to=[])
    optimiser = train_vit.early_layer_optimizer(model, arguments, 5.0)
    grouped = [id(parameter) for group in optimiser.param_groups for parameter in group["params"]]
    assert sorted(grouped) == sorted(id(parameter) for parameter in model.parameters())  # each weight once
    early = {id(parameter) for part in (model.levit.patch_embeddings, model.levit.encoder.stages[0]) for parameter in part.parameters()}
    for group in optimiser.param_groups:
        assert group["lr"] == pytest.approx(5e-4 if id(group["params"][0]) in early else 1e-4)
        assert all((id(parameter) in early) == (id(group["params"][0]) in early) for parameter in group["params"])
    schedule = get_scheduler("cosine", optimiser, num_warmup_steps=10, num_training_steps=100)
    for _ in range(40):
        optimiser.step()
        schedule.step()
    rates = {id(group["params"][0]) in early: group["lr"] for group in optimiser.param_groups}
    assert 0 < rates[False] < 1e-4 and rates[True] == pytest.approx(5 * rates[False])
    vit = torch.nn.Linear(2, 2)
    vit.config = SimpleNamespace(model_type="vit")
    with pytest.raises(SystemExit, match="applies to a LeViT; this model is a vit"):
        train_vit.early_layer_optimizer(vit, arguments, 5.0)


def test_weights_of_a_levit_run_at_another_size_mix_with_its_resized_base_and_extrapolate_safely(tmp_path):
    """tta_and_averaging.py --interpolate-with on a LeViT fine-tuned at a larger size than its base, alpha past 1 included."""
    from melanoma_screen.modeling import levit_at_resolution

    experiment = experiment_script("tta_and_averaging")
    torch.manual_seed(0)
    base = build_other_architecture("levit", 64, num_labels=2, id2label={0: "benign", 1: "malignant"},
                                    label2id={"benign": 0, "malignant": 1}).eval()
    base.save_pretrained(tmp_path / "base")
    resized_base = levit_at_resolution(base, 80).eval()
    run = levit_at_resolution(base, 80).eval()
    with torch.no_grad():
        for parameter in run.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        for name, buffer in run.named_buffers():
            if name.endswith("running_var"):
                buffer.mul_(3.0)  # unlike the base's, so which variances the mix keeps shows
    run_state, base_state = run.state_dict(), resized_base.state_dict()
    for alpha in (0.5, 3.0):
        mixed = experiment.interpolated_network(run, tmp_path / "base", alpha)
        assert mixed.config.image_size == 80
        state = mixed.state_dict()
        table = next(name for name in state if name.endswith("attention_biases"))
        torch.testing.assert_close(state[table], alpha * run_state[table] + (1 - alpha) * base_state[table])
        counter = next(name for name in state if name.endswith("num_batches_tracked"))
        assert torch.equal(state[counter], run_state[counter])
        variance = next(name for name in state if name.endswith("running_var"))
        expected = run_state[variance] if alpha > 1 else alpha * run_state[variance] + (1 - alpha) * base_state[variance]
        torch.testing.assert_close(state[variance], expected)
        with torch.no_grad():
            assert torch.isfinite(mixed(pixel_values=torch.randn(2, 3, 80, 80)).logits).all()


def test_a_copy_of_the_shipped_model_at_a_larger_size_scores_real_lesions_like_it(tiny_model_dir, tmp_path):
    """experiments/at_resolution.py: the folder it writes loads, reads pictures at the new size and ranks as the model does."""
    from melanoma_screen.inference import ScreeningModel

    at_resolution = experiment_script("at_resolution")
    shipped_size = json.loads((REPO_ROOT / "model" / "config.json").read_text())["image_size"]
    at_resolution.main(["--model", str(REPO_ROOT / "model"), "--image-size", str(shipped_size + 32), "--out", str(tmp_path / "larger")])
    assert load_processor(tmp_path / "larger").size == {"height": shipped_size + 32, "width": shipped_size + 32}
    images = [Image.open(path).convert("RGB") for label in ("benign", "malignant") for path in real_images("test", label, 10)]
    scores = {name: [prediction.malignant_probability for prediction in ScreeningModel.load(str(folder)).predict_batch(images)]
              for name, folder in (("shipped", REPO_ROOT / "model"), ("larger", tmp_path / "larger"))}
    assert np.corrcoef(scores["shipped"], scores["larger"])[0, 1] > 0.8
    with pytest.raises(SystemExit, match="only a LeViT's resolution"):
        at_resolution.main(["--model", str(tiny_model_dir), "--image-size", "64", "--out", str(tmp_path / "vit")])


def test_the_stage_probe_reads_what_the_classifier_reads_and_each_stages_spread():
    """experiments/last_layer_retrain.py: the last stage's averaged tokens give the model's own logits; spreads match each stage."""
    from melanoma_screen.inference import ScreeningModel

    probe = experiment_script("last_layer_retrain")
    model = ScreeningModel.load(str(REPO_ROOT / "model"))
    records = [ImageRecord(path=str(path), label=label, split="test")
               for label, name in enumerate(("benign", "malignant")) for path in real_images("test", name, 3)]
    means, spreads = probe.pooled_features(model, records, batch_size=4, desc="probe")
    assert len(means) == len(spreads) >= 3
    assert [m.shape for m in means] == [s.shape for s in spreads] and all(m.shape[0] == len(records) for m in means)
    assert all((s > 0).all() for s in spreads)  # tokens differ over a real lesion picture
    pixels = torch.as_tensor(model.preprocess([Image.open(r.path).convert("RGB") for r in records]))
    with torch.no_grad():
        expected = model.model(pixel_values=pixels).logits
        from_probe = model.model.classifier(torch.as_tensor(means[-1]))
    torch.testing.assert_close(from_probe, expected, rtol=1e-4, atol=1e-4)
