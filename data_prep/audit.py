"""Find exact and near-duplicate images, within and across the train/test split.

The Kaggle melanoma dataset is known to contain copies of the same lesion
photograph, some of them on both sides of the train/test boundary. A test
image that is a flipped copy of a training image is not a test of
generalisation, so the audit finds them and `leaked_paths` says which
training images to drop.

Exact duplicates have identical decoded pixels (SHA-1 of the RGB bytes and the
size): a PNG re-save of a JPEG still counts, a JPEG re-encode does not.

Near duplicates are the same photograph after a flip, a 90-degree rotation,
re-compression, a slight zoom or a colour shift. Two stages find them:
1. A 64-bit DCT perceptual hash (pHash) of each of the 8 flips/rotations of
   every image; a pair is a candidate when the closest variant of one is
   within `hash_distance` bits of the other. This is fast (all pairs of 10k
   images in seconds) but, on dermoscopy, not enough: a small brown blob in
   the middle of pink skin hashes alike whoever the patient is. On the
   melanoma data, of the test images whose closest training image is only
   2 bits away, two thirds show a different lesion.
2. So each candidate is confirmed on the pictures themselves: the fine detail
   (a band-pass of a 64x64 grayscale thumbnail: hairs, pigment network,
   vessels) of the aligned pair must correlate at least `min_detail_correlation`.
   Dark borders (the round dermoscope aperture, which every such image shares)
   are masked out first, or they alone would make unrelated images match.

Near groups are the connected components of confirmed pairs, built on top of
the exact groups: every near group holds at least two *different* pictures and
includes all exact copies of its members. Pixel-identical pairs alone only
ever make an exact group.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import binary_erosion, gaussian_filter, label
from tqdm import tqdm

from melanoma_screen.images import load_rgb_image
from .folder import LABELS, ImageRecord

# Both tuned on the full melanoma dataset (10,605 images) by viewing the pairs either
# side of them. Copies of one photograph reach 10 pHash bits when zoomed or
# colour-shifted; the few 12-bit pairs that pass the detail check are mostly
# different lesions. Flipped, rotated
# and re-encoded copies correlate above 0.95 and slightly zoomed ones 0.88-0.95,
# while two different small nevi on plain skin can reach 0.87-0.89: at 0.88 all 15
# cross-split near groups were true copies, and 6 of the 65 within-train groups were
# such look-alikes (a cost of one dropped training image each).
DEFAULT_HASH_DISTANCE = 10
DEFAULT_MIN_DETAIL_CORRELATION = 0.88

HASH_SIDE = 32  # shrunk to 32x32 before the DCT, as in the classic pHash
LOW_FREQ = 8  # and its top-left 8x8 low frequencies give the 64 bits
DETAIL_SIDE = 64  # enough for pigment network and hairs, small enough to hold 10k in memory
DARK_FRACTION = 0.4  # darker than this share of the bright skin level counts as aperture/vignette


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving keeps trees flat
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        root_i, root_j = self.find(i), self.find(j)
        if root_i != root_j:
            self.parent[max(root_i, root_j)] = min(root_i, root_j)


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """Flip/rotation number k (0-7) of the last two axes: 0-3 rotations, 4-7 rotations of the transpose."""
    if k >= 4:
        array = np.swapaxes(array, -1, -2)
    return np.rot90(array, k % 4, axes=(-2, -1))


def dihedral_phashes(gray: np.ndarray) -> np.ndarray:
    """uint64[8]: the 64-bit pHash of each flip/rotation of a 32x32 grayscale array."""
    variants = np.stack([dihedral(gray, k) for k in range(8)])
    low = dctn(variants, axes=(1, 2), norm="ortho")[:, :LOW_FREQ, :LOW_FREQ].reshape(8, -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def detail_and_mask(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band-pass of a 64x64 grayscale array, and where it shows skin rather than the dark border."""
    detail = gaussian_filter(gray, 0.7) - gaussian_filter(gray, 3.0)
    # The round aperture and vignetting of a dermoscope are dark regions that touch the
    # image edge; a dark lesion is dark too but sits inside, so it is kept. Erosion also
    # drops the rim where the aperture's edge would still correlate across patients.
    smooth = gaussian_filter(gray, 2.0)
    regions, _ = label(smooth < DARK_FRACTION * np.percentile(smooth, 95))
    edge_regions = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    border = np.isin(regions, edge_regions[edge_regions > 0])
    return detail, binary_erosion(~border, iterations=4)


def pixel_digest(image: Image.Image) -> str:
    return hashlib.sha1(f"{image.size[0]}x{image.size[1]}".encode() + image.tobytes()).hexdigest()


@dataclass
class Fingerprints:
    digests: list[str]  # pixel digest per image
    phashes: np.ndarray  # uint64[n, 8]: pHash of each flip/rotation
    detail: np.ndarray  # float16[n, 64, 64]: band-passed thumbnail
    lit: np.ndarray  # bool[n, 64, 64]: detail pixels that are skin, not border


def fingerprint(records: list[ImageRecord], progress: bool = True) -> Fingerprints:
    n = len(records)
    prints = Fingerprints([], np.zeros((n, 8), np.uint64), np.zeros((n, DETAIL_SIDE, DETAIL_SIDE), np.float16),
                          np.zeros((n, DETAIL_SIDE, DETAIL_SIDE), bool))
    for i, record in enumerate(tqdm(records, desc="Hashing images", unit="img", disable=not progress)):
        image = record.image if record.image is not None else load_rgb_image(record.path)
        gray = image.convert("L")
        prints.digests.append(pixel_digest(image))
        prints.phashes[i] = dihedral_phashes(
            np.asarray(gray.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64))
        prints.detail[i], prints.lit[i] = detail_and_mask(
            np.asarray(gray.resize((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX), dtype=np.float32))
    return prints


def hash_distances(phashes: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """For each row image and every image: the fewest differing bits over the row image's
    8 flips/rotations (uint8[rows, n]), and which flip/rotation that was (uint8[rows, n])."""
    bits = np.bitwise_count(phashes[rows, :, None] ^ phashes[None, None, :, 0])
    return bits.min(axis=1), bits.argmin(axis=1).astype(np.uint8)


def detail_correlations(prints: Fingerprints, rows: np.ndarray, cols: np.ndarray, variants: np.ndarray,
                        batch: int = 2048) -> np.ndarray:
    """Correlation of the fine detail of image rows[p], flipped/rotated by variants[p], with image cols[p],
    over the skin both show; -1 where they share too little skin to judge."""

    def centred(detail, shared, area):
        mean = (detail * shared).sum(axis=(1, 2)) / np.maximum(area, 1)
        return (detail - mean[:, None, None]) * shared

    result = np.full(len(rows), -1.0)
    for k in range(8):
        (pairs,) = np.nonzero(variants == k)
        for start in range(0, len(pairs), batch):
            p = pairs[start:start + batch]
            shared = (dihedral(prints.lit[rows[p]], k) & prints.lit[cols[p]]).astype(np.float32)
            area = shared.sum(axis=(1, 2))
            a = centred(dihedral(prints.detail[rows[p]].astype(np.float32), k), shared, area)
            b = centred(prints.detail[cols[p]].astype(np.float32), shared, area)
            norm = np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))
            r = (a * b).sum(axis=(1, 2)) / np.maximum(norm, 1e-6)
            result[p] = np.where(area >= 0.1 * DETAIL_SIDE**2, r, -1.0)
    return result


def _group_entry(members: list[int], records: list[ImageRecord]) -> dict:
    members = sorted(members, key=lambda i: records[i].path)
    splits = [records[i].split for i in members]
    labels = [LABELS[records[i].label] for i in members]
    return {
        "paths": [records[i].path for i in members],
        "splits": splits,
        "labels": labels,
        "cross_split": len(set(splits)) > 1,
        "label_conflict": len(set(labels)) > 1,
    }


def _count_within(groups: list[dict], split: str) -> int:
    return sum(set(group["splits"]) == {split} for group in groups)


def audit_duplicates(records: list[ImageRecord], hash_distance: int = DEFAULT_HASH_DISTANCE,
                     progress: bool = True, min_detail_correlation: float = DEFAULT_MIN_DETAIL_CORRELATION,
                     chunk_rows: int = 128) -> dict:
    """A JSON-able report of exact and near-duplicate groups among `records` (see module docstring).

    min_detail_correlation=-1 turns the detail check off: pHash distance alone decides.
    """
    n = len(records)
    prints = fingerprint(records, progress)

    # Exact groups: same pixel digest. Each image points at the first image with its pixels.
    first_with_digest: dict[str, int] = {}
    exact_of = np.array([first_with_digest.setdefault(digest, i) for i, digest in enumerate(prints.digests)], int)
    exact_members: dict[int, list[int]] = {}
    for i, representative in enumerate(exact_of):
        exact_members.setdefault(int(representative), []).append(i)

    # Stage 1: pHash candidates, in row chunks: each chunk holds chunk_rows x 8 x n uint64 (~90 MB for 10k images).
    is_test = np.array([record.split != "train" for record in records], dtype=bool)
    nearest_other_split = np.full(n, 255, dtype=np.uint8)
    candidates: dict[tuple[int, int], tuple[int, int, int, int]] = {}  # pair -> (bits, row, col, variant)
    for start in tqdm(range(0, n, chunk_rows), desc="Comparing hashes", unit="chunk",
                      disable=not progress or n <= chunk_rows):
        rows = slice(start, min(start + chunk_rows, n))
        bits, variant = hash_distances(prints.phashes, rows)
        nearest_other_split[rows] = np.where(is_test[rows, None] != is_test[None, :], bits, 255).min(axis=1)
        for i, j in zip(*np.nonzero(bits <= hash_distance)):
            a, b = exact_of[start + i], exact_of[j]
            if a == b:  # the same pixels (or the image itself): the exact audit covers it
                continue
            key = (min(a, b), max(a, b))
            if key not in candidates or bits[i, j] < candidates[key][0]:
                candidates[key] = (int(bits[i, j]), start + int(i), int(j), int(variant[i, j]))

    # Stage 2: confirm candidates on the aligned detail of the two pictures.
    table = np.array(list(candidates.values()), dtype=np.int64).reshape(-1, 4)
    correlation = detail_correlations(prints, table[:, 1], table[:, 2], table[:, 3])
    confirmed = correlation >= min_detail_correlation

    links = [(a, b, int(bits), float(r))
             for (a, b), bits, r, ok in zip(candidates, table[:, 0], correlation, confirmed) if ok]
    near = UnionFind(n)
    for a, b, _, _ in links:
        near.union(a, b)
    loosest: dict[int, tuple[int, float]] = {}  # component root -> (max bits, min correlation) of its links
    for a, _, bits, r in links:
        worst_bits, worst_r = loosest.get(near.find(a), (0, 1.0))
        loosest[near.find(a)] = (max(worst_bits, bits), min(worst_r, r))

    exact_groups = [_group_entry(members, records) for members in exact_members.values() if len(members) > 1]
    components: dict[int, list[int]] = {}
    for representative in exact_members:
        components.setdefault(near.find(representative), []).append(representative)
    near_groups = []
    for root, representatives in components.items():
        if len(representatives) < 2:
            continue
        group = _group_entry([i for r in representatives for i in exact_members[r]], records)
        group["max_distance"], group["min_detail_correlation"] = loosest[root][0], round(loosest[root][1], 3)
        near_groups.append(group)
    exact_groups.sort(key=lambda group: group["paths"][0])
    near_groups.sort(key=lambda group: group["paths"][0])

    # How close, in pHash bits, is each test image to its closest training image?
    # Kept in the report to re-tune hash_distance on new data.
    test_nearest = nearest_other_split[is_test]
    histogram = {str(d): int(c) for d, c in enumerate(np.bincount(np.minimum(test_nearest, 33), minlength=34)) if c}
    if "33" in histogram:
        histogram["33+"] = histogram.pop("33")

    in_groups = {path for group in exact_groups + near_groups for path in group["paths"]}
    test_with_copy = {path for group in exact_groups + near_groups if group["cross_split"]
                      for path, split in zip(group["paths"], group["splits"]) if split != "train"}
    summary = {
        "exact_groups": len(exact_groups),
        "exact_within_train": _count_within(exact_groups, "train"),
        "exact_within_test": _count_within(exact_groups, "test"),
        "exact_cross_split": sum(group["cross_split"] for group in exact_groups),
        "exact_label_conflicts": sum(group["label_conflict"] for group in exact_groups),
        "near_groups": len(near_groups),
        "near_within_train": _count_within(near_groups, "train"),
        "near_within_test": _count_within(near_groups, "test"),
        "near_cross_split": sum(group["cross_split"] for group in near_groups),
        "near_label_conflicts": sum(group["label_conflict"] for group in near_groups),
        "near_candidates_checked": len(candidates),
        "near_candidates_confirmed": int(confirmed.sum()),
        "test_images_with_train_copy": len(test_with_copy),
        "images_in_groups": len(in_groups),
    }
    return {
        "n_images": n,
        "summary": summary,
        "settings": {
            "hash_distance": hash_distance,
            "min_detail_correlation": min_detail_correlation,
            "exact": "SHA-1 of decoded RGB pixels and image size",
            "near": "pairs whose 64-bit DCT pHash (32x32 grayscale, 8x8 low frequencies, median threshold) "
                    "differs by <= hash_distance bits for the best of the 8 flips/rotations, and whose aligned "
                    "64x64 band-passed thumbnails correlate >= min_detail_correlation over shared non-dark "
                    "pixels; groups = connected components over exact-duplicate classes, each with at least "
                    "two different pictures (exact copies of members included)",
        },
        "test_to_nearest_train_hash_distance_histogram": histogram,
        "exact_duplicate_groups": exact_groups,
        "near_duplicate_groups": near_groups,
    }


def leaked_paths(audit_report: dict, drop: str = "cross_split_and_exact") -> set[str]:
    """Training images to leave out so no test image has a copy in training.

    drop="cross_split": every train image in a group (exact or near) that also holds a test image.
    drop="cross_split_and_exact" (default): that, plus all but the first (sorted) path of every
    group that lies entirely within train, so a repeated picture does not weigh more in training.
    Test images are never dropped: the test set stays comparable across runs.
    """
    if drop not in ("cross_split", "cross_split_and_exact"):
        raise ValueError(f"drop must be 'cross_split' or 'cross_split_and_exact', not {drop!r}.")
    dropped = set()
    for group in audit_report["exact_duplicate_groups"] + audit_report["near_duplicate_groups"]:
        train_paths = sorted(path for path, split in zip(group["paths"], group["splits"]) if split == "train")
        if group["cross_split"]:
            dropped.update(train_paths)
        elif drop == "cross_split_and_exact" and len(train_paths) == len(group["paths"]):
            dropped.update(train_paths[1:])
    return dropped
