"""`fashion-predict`: image files, folders or globs -> one JSON line (or CSV row) per image.

    fashion-predict bundle=bundles/best photos/ 'more/*.jpg' > predictions.jsonl
    fashion-predict checkpoint=best.ckpt shoe.jpg format=csv output=tags.csv taxonomy=true

An unreadable file gets a row with `error` and the batch goes on; the exit status is 1 when any
file failed, so scripts notice. `--taxonomy` lets articleType decide subCategory/masterCategory
where the training data says it does; `explain=articleType,baseColour` writes Grad-CAM overlays.
`runtime=auto` (the default) answers with onnxruntime when the bundle has a model.onnx. Keys: conf/predict.yaml.
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TextIO

from tqdm import tqdm

from fashion.cli import tool_config
from fashion.data.images import ImageReadError, load_rgb
from fashion.inference.predictor import Predictor
from fashion.inference.runtime import Runtime, load_predictor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PROGRESS_FROM = 64  # files; a progress bar on stderr from here on


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """(image files, inputs that matched nothing), in the order given; folders are walked recursively."""
    files: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not found:
            unmatched.append(item)
        files += found
    return list(dict.fromkeys(files)), unmatched


def save_explanations(predictor: Predictor, image, path: Path, attributes: list[str], folder: Path) -> dict[str, str]:
    """Grad-CAM overlays as PNGs next to each other in `folder`; returns {attribute: file}."""
    import cv2
    import numpy as np

    from fashion.inference.explain import grad_cam

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for attribute, heat in grad_cam(predictor, image, attributes).items():
        colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
        overlay = (0.55 * image + 0.45 * colour).astype(np.uint8)
        target = folder / f"{path.stem}_{attribute}.png"
        cv2.imwrite(str(target), overlay[:, :, ::-1])
        written[attribute] = str(target)
    return written


def predict_files(predictor: Predictor, files: list[Path], progress: bool, explain: list[str] = (),
                  explain_dir: Path | None = None) -> Iterator[dict]:
    """Rows in input order; decoding happens batch by batch so memory stays flat on big folders."""
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, disable=not progress)
    for start in range(0, len(files), predictor.batch_size):
        chunk = files[start:start + predictor.batch_size]
        images, rows = [], []
        for path in chunk:
            try:
                images.append(load_rgb(path))
                rows.append({"path": str(path)})
            except ImageReadError as err:
                rows.append({"path": str(path), "error": str(err)})
        predictions = iter(predictor.predict(images) if images else [])
        decoded = iter(images)
        for row in rows:
            if "error" not in row:
                row["predictions"] = {a: p.to_dict() for a, p in next(predictions).items()}
                image = next(decoded)
                if explain:
                    row["explanations"] = save_explanations(predictor, image, Path(row["path"]), list(explain), explain_dir)
            yield row
        bar.update(len(chunk))
    bar.close()


def write_csv(rows: Iterator[dict], attributes: list[str], out: TextIO) -> None:
    columns = ["path", *[c for a in attributes for c in (a, f"{a}_confidence", f"{a}_top_k")], "error"]
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        flat = {"path": row["path"], "error": row.get("error", "")}
        for attribute, p in row.get("predictions", {}).items():
            flat[attribute], flat[f"{attribute}_confidence"] = p["label"], p["confidence"]
            flat[f"{attribute}_top_k"] = ";".join(f"{t['label']}:{t['confidence']:.4f}" for t in p["top_k"])
        writer.writerow(flat)


def main(argv: list[str] | None = None) -> int:
    cfg = tool_config("fashion-predict", "predict", sys.argv[1:] if argv is None else argv, predict, positional="inputs")
    return predict(**cfg)


def predict(inputs: list[str], bundle: str | None = None, checkpoint: str | None = None,
            format: Literal["jsonl", "csv"] = "jsonl", output: str | None = None, top_k: int = 3, batch_size: int = 32,
            taxonomy: bool = False, runtime: Runtime = "auto", explain: str | None = None,
            explain_dir: str = "explanations") -> int:
    """Tags every image of `inputs`; the exit status is 1 when any file failed, 2 when nothing could run."""
    files, unmatched = expand_inputs(list(inputs))
    for item in unmatched:
        print(f"fashion-predict: no image files match {item!r}", file=sys.stderr)
    if not files:
        return 2
    try:
        predictor = load_predictor(bundle=bundle, checkpoint=checkpoint, runtime=runtime, top_k=top_k,
                                   batch_size=batch_size, taxonomy=taxonomy)
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle/checkpoint: say why, no traceback
        print(f"fashion-predict: cannot load the model: {err}", file=sys.stderr)
        return 2
    explained = [] if not explain else predictor.attributes if explain == "all" else explain.split(",")
    unknown = [a for a in explained if a not in predictor.attributes]
    if unknown:
        print(f"fashion-predict: explain names {unknown}; the model predicts {predictor.attributes}", file=sys.stderr)
        return 2
    rows = predict_files(predictor, files, len(files) >= PROGRESS_FROM, explained, Path(explain_dir))
    failed = 0

    def counted(stream: Iterator[dict]) -> Iterator[dict]:
        nonlocal failed
        for row in stream:
            if "error" in row:
                failed += 1
                print(f"fashion-predict: skipped {row['path']}: {row['error']}", file=sys.stderr)
            yield row

    out = Path(output).open("w", newline="") if output else sys.stdout
    try:
        if format == "csv":
            write_csv(counted(rows), predictor.attributes, out)
        else:
            for row in counted(rows):
                out.write(json.dumps(row) + "\n")
    finally:
        if output:
            out.close()
    return 1 if failed or unmatched else 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
