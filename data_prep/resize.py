"""Write a smaller copy of an image folder, same layout, every image resized so its shorter side is --size.

    python -m data_prep.resize ../shared/data/melanoma_cancer_dataset data_small/melanoma_cancer_dataset --size 160

For moving data to a machine that cannot read the original folder (a rented
GPU with a limited upload): training at 128 px loses nothing when the images
are 160 px. EXIF and other metadata are not copied.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from melanoma_screen.images import ImageLoadError, load_rgb_image


def resize_one(job: tuple[str, str, int, int, str]) -> str | None:
    source, target, size, quality, image_format = job
    try:
        image = load_rgb_image(source)
    except ImageLoadError as error:
        return f"{source}: {error}"
    scale = size / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    image.save(target, image_format, quality=quality)
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.resize", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="image folder, any layout")
    parser.add_argument("target", help="folder to write, with the same layout (files become .jpg or .webp)")
    parser.add_argument("--size", type=int, default=160, help="shorter side in pixels (default %(default)s)")
    parser.add_argument("--quality", type=int, default=92, help="JPEG or WebP quality (default %(default)s)")
    parser.add_argument("--format", choices=["jpeg", "webp"], default="jpeg",
                        help="WebP is about 40%% smaller than JPEG at the same quality (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    source = Path(args.source).resolve()
    jobs = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.lower().endswith((".csv", ".json", ".md", ".txt")):
                continue
            relative = (Path(root) / name).relative_to(source)
            jobs.append((str(Path(root) / name), str(Path(args.target) / relative.with_suffix("." + {"jpeg": "jpg", "webp": "webp"}[args.format])),
                         args.size, args.quality, args.format.upper()))
    with ProcessPoolExecutor(args.workers) as pool:
        failures = [f for f in tqdm(pool.map(resize_one, jobs, chunksize=64), total=len(jobs), desc="resizing", unit="img") if f]
    for failure in failures:
        print("skipped", failure)
    print(f"wrote {len(jobs) - len(failures)} images to {args.target}")


if __name__ == "__main__":
    main()
