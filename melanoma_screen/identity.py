"""Give a model folder its published name and version, in config.json and in its card.

    python -m melanoma_screen.identity --model model            # the name from README.md's front matter
    python -m melanoma_screen.identity --model runs/vit --name someone/vit-melanoma

The name is the Hub id the model is published under (the Space's README lists
it under `models:`), so reports, feedback and /predict name the model people can
download, not the folder it was trained in. The version is the first 12 hex
digits of model.safetensors' sha256: it changes with any retraining. Both go into
config.json (`model_name`, `model_version`), which ScreeningModel reads, and into
the model card's title, model-index and snippet. Run it again after replacing the
weights: a config whose version no longer matches its weights is reported by the
app's log, and the weights' hash wins.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .inference import weights_version
from .model_card import UNDER_TITLE, upsert_card_section

REPO_README = Path(__file__).resolve().parents[1] / "README.md"
CARD_SECTION = "identity"


def published_name(readme: Path = REPO_README) -> str | None:
    """The first model id under `models:` in the README's YAML front matter, or None."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    match = re.match(r"---\n(.*?)\n---", text, flags=re.DOTALL)
    if not match:
        return None
    models = re.search(r"^models:\s*\n\s*-\s*([^\s#]+)", match.group(1), flags=re.MULTILINE)
    return models.group(1).strip("'\"") if models else None


def stamp(folder, name: str) -> dict:
    """Writes model_name and model_version into folder/config.json and the card; returns both."""
    folder = Path(folder)
    version = weights_version(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    old_name = config.get("model_name") or folder.resolve().name
    config.update(model_name=name, model_version=version)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    card_path = folder / "README.md"
    if card_path.is_file():
        card = card_path.read_text(encoding="utf-8")
        previous = {old_name, folder.resolve().name}
        card_title = re.search(r"^# (\S+): ", card, flags=re.MULTILINE)
        index_name = re.search(r"^- name: (\S+)$", card, flags=re.MULTILINE)
        previous |= {match.group(1) for match in (card_title, index_name) if match}
        for old in previous - {name}:
            card = re.sub(rf"^# {re.escape(old)}: ", f"# {name}: ", card, flags=re.MULTILINE)
            card = re.sub(rf"^- name: {re.escape(old)}$", f"- name: {name}", card, flags=re.MULTILINE)
            card = card.replace(f'model="{old}"', f'model="{name}"')
        line = (f"**Name:** `{name}` · **version:** `{version}` (first 12 hex digits of the sha256 of "
                "model.safetensors; the app and `/predict` report both).")
        card_path.write_text(card, encoding="utf-8")
        # Right under the title, where a reader looks for what this is.
        upsert_card_section(card_path, CARD_SECTION, line, add_at=UNDER_TITLE)
    return {"model_name": name, "model_version": version}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m melanoma_screen.identity", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="model", help="model folder (default: model)")
    parser.add_argument("--name", default=None,
                        help="published Hub id (default: the first of `models:` in README.md's front matter)")
    args = parser.parse_args(argv)
    name = args.name or published_name()
    if not name:
        parser.error("no --name given and README.md's front matter names no model")
    print(json.dumps(stamp(args.model, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
