"""`fashion-predict`: image files, folders, globs or a manifest -> one JSON line, CSV or Parquet row per image.

    fashion-predict bundle=bundles/best photos/ 'more/*.jpg' > predictions.jsonl
    fashion-predict checkpoint=best.ckpt shoe.jpg output=tags.csv
    fashion-predict bundle=bundles/best manifest=catalogue.parquet format=parquet output=tags/ resume=true

A whole catalogue: `manifest=` (CSV or Parquet with a `path` column) or folders; `lanes` batches (one per
core) decode and run the model at once on threads, so decoding overlaps the model (fashion/inference/batch.py,
throughput against the bare model in docs/batch_scoring.md); `resume=true` skips the
paths the output already holds (fashion/inference/outputs.py). Across machines, the same scoring runs
on Spark through the MLflow pyfunc (fashion/inference/spark.py, docs/batch_scoring.md).

Each attribute comes with its calibrated confidence and a status, `accepted` or `needs_review`, from
the model's per-attribute thresholds (docs/calibration.md). articleType, subCategory and
masterCategory are decoded together into a combination the training data has (`taxonomy=false`
turns that off). An unreadable file gets a row with `error` and the batch goes on; the exit status
is 1 when any file failed, so scripts notice. `explain=articleType,baseColour` writes Grad-CAM overlays.
`runtime=auto` (the default) answers with onnxruntime when the bundle has a model.onnx. Keys: conf/predict.yaml.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import json
import lzma
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from fashion.cli import first_few, tool_config
from fashion.config import progress_bar
from fashion.data.images import URI
from fashion.data.styles import first_line_not_utf8, is_csv_manifest, no_column, relative_to_the_manifest
from fashion.inference.outputs import Format, OutputConflict, as_text, output_format, prepare_output, write_batches
from fashion.inference.runtime import Runtime, load_predictor
from fashion.machine import usable_cores
from fashion.validation import AtLeastOne, AtLeastZero

if TYPE_CHECKING:   # torch, OpenCV and the model's code load once the command line is read: `--help` answers at once
    from fashion.inference.predictor import Predictor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PROGRESS_FROM = 64  # files; a progress bar on stderr from here on


class Inputs(NamedTuple):
    files: list[Path | str]      # the images, in the order given (a URI as a string)
    unmatched: list[str]         # inputs that matched nothing
    passed_over: Counter[str]    # suffix -> files of a walked folder left out by their name (.heic, .txt)


def expand_inputs(inputs: list[str]) -> Inputs:
    """Folders are walked recursively. A quoted glob is expanded as the shell would, each match then taken as if
    given by name, so 'catalogue/2024-*' walks the folders it matches whether the shell or fashion-predict expands it."""
    files: list[Path | str] = []
    unmatched: list[str] = []
    passed_over: Counter[str] = Counter()
    for item in inputs:
        if URI.match(item):   # one file of an object store, read through fsspec (a folder there: list it in a manifest)
            files.append(item)
            continue
        matches = [item] if Path(item).exists() else sorted(glob.glob(item, recursive=True))
        found = [file for match in matches for file in files_in(Path(match), passed_over)]
        if not found:
            unmatched.append(item)
        files += found
    return Inputs(list(dict.fromkeys(files)), unmatched, passed_over)


def files_in(path: Path, passed_over: Counter[str]) -> list[Path]:
    """A folder's images, less its hidden files and folders, as a shell's glob leaves them out: a catalogue
    copied from a Mac holds a `._photo.jpg` beside each photo (and `__MACOSX/._*` in a zip), which are not
    images; a file named on its own is taken whatever its name. The folder's other files are counted by suffix
    in `passed_over`, so photos in a format not read here (an iPhone's .heic) are said, not silently left out."""
    if not path.is_dir():
        return [path] if path.is_file() else []
    visible = [p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    passed_over.update(p.suffix.lower() or "no suffix" for p in visible if p.suffix.lower() not in IMAGE_SUFFIXES and p.is_file())
    return sorted(p for p in visible if p.suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(manifest: str, column: str = "path") -> tuple[list[str], list[str]]:
    """The image paths of a CSV or Parquet manifest, as written in it (absolute, or relative to where the
    job runs), and where the rows without one are (`line 5`, `row 7`): they are skipped, and said so."""
    path = Path(manifest)
    if not path.exists():
        raise FileNotFoundError("no such file or folder")
    if is_csv_manifest(path):
        return read_csv_column(path, column)
    dataset = pq.ParquetDataset(path)   # opened once: its schema for the check, then the one column
    if column not in dataset.schema.names:
        raise no_column(column, dataset.schema.names)
    kind = dataset.schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        # ids or lists: each row would be an error naming "10012" or "['a.jpg']" as a file
        raise ValueError(f"column {column!r} holds {kind}, not text: a manifest's paths are strings")
    values = [os.fsdecode(v) if isinstance(v, bytes) else v for v in dataset.read(columns=[column]).column(column).to_pylist()]
    return [v for v in values if v not in (None, "")], [f"row {i}" for i, v in enumerate(values, 1) if v in (None, "")]


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def read_csv_column(path: Path, column: str) -> tuple[list[str], list[str]]:
    """One column's non-empty values, and the line numbers of the empty ones; a line with more or fewer fields
    than the header is an error. The csv module, not pandas: pandas' `usecols` drops a row's extra fields
    without a word, so a path with an unquoted comma was scored as its first half. Spark's reader is held to
    the same (inference/spark.py)."""
    opener = COMPRESSED.get(path.suffix, open)
    try:
        return read_csv_lines(opener, path, column)
    except UnicodeDecodeError:   # a spreadsheet's "CSV" in its own code page (cp1252, Latin-1)
        raise ValueError(f"not UTF-8 text (line {first_line_not_utf8(path, opener)}): save it as UTF-8, "
                         "as a spreadsheet's \"CSV UTF-8\" does") from None


def read_csv_lines(opener: Callable[..., IO[str]], path: Path, column: str) -> tuple[list[str], list[str]]:
    values, empty, misshapen = [], [], []
    with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle, strict=True)   # an unclosed quote is an error, not a path to the end of the file
        try:
            header = next(rows, [])
            if column not in header:
                raise no_column(column, header)
            at, width = header.index(column), len(header)
            for row in rows:
                if not row:   # a blank line is no row
                    continue
                if len(row) != width:
                    misshapen.append(f"line {rows.line_num} has {len(row)}")
                elif row[at]:
                    values.append(row[at])
                else:
                    empty.append(f"line {rows.line_num}")
        except csv.Error as err:   # a stray or unclosed quote, a field over csv's size limit
            raise ValueError(f"line {rows.line_num}: {err}") from None
    if misshapen:
        raise ValueError(f"{len(misshapen)} line(s) without the header's {width} fields ({first_few(misshapen)}); "
                         "a path that holds a comma must be quoted")
    return values, empty


def main(argv: list[str] | None = None) -> int:
    cfg = tool_config("fashion-predict", "predict", sys.argv[1:] if argv is None else argv, predict, positional="inputs")
    return predict(**cfg)


def predict(inputs: list[str] | None = None, bundle: str | None = None, checkpoint: str | None = None,
            manifest: str | None = None, path_column: str = "path", format: Format | None = None, output: str | None = None,
            resume: bool = False, overwrite: bool = False, top_k: AtLeastOne = 3, batch_size: AtLeastOne = 32, lanes: AtLeastOne | None = None,
            workers: AtLeastZero = 0,
            taxonomy: bool = True,
            runtime: Runtime = "auto", explain: str | bool | None = None, explain_dir: str = "explanations") -> int:
    """Tags every image of `inputs` and `manifest`; the exit status is 1 when any file failed, 2 when nothing could run."""
    from fashion.inference.batch import helpers_on_one_thread, lanes_for, score_paths
    from fashion.inference.explain import explained_attributes, explained_batches

    if (resume or overwrite) and not output:   # standard output holds nothing to resume or replace
        print(f"fashion-predict: {'resume' if resume else 'overwrite'}=true needs output=<file or folder>", file=sys.stderr)
        return 2
    try:
        format = output_format(output, format)
    except ValueError as err:
        print(f"fashion-predict: {err}", file=sys.stderr)
        return 2
    found, unmatched, passed_over = expand_inputs(list(inputs or []))
    files = [str(f) for f in found]
    for item in unmatched:
        print(f"fashion-predict: no image files match {item!r}", file=sys.stderr)
    if passed_over:
        print(f"fashion-predict: left out {sum(passed_over.values())} file(s) of the folders that are not images by their "
              f"name ({first_few([f'{suffix}: {n}' for suffix, n in passed_over.most_common()])}); images are "
              f"{', '.join(sorted(IMAGE_SUFFIXES))}", file=sys.stderr)
    try:
        listed, no_path = read_manifest(manifest, path_column) if manifest else ([], [])
    except (OSError, ValueError, KeyError) as err:
        print(f"fashion-predict: cannot read the manifest {manifest}: {err}", file=sys.stderr)
        return 2
    if manifest and (misplaced := relative_to_the_manifest(manifest, listed)):
        print(f"fashion-predict: {misplaced}", file=sys.stderr)
        return 2
    files += listed
    escaped = [text for f in files if (text := as_text(f)) != f]
    if escaped:   # the path column cannot hold them as they are (outputs.as_text)
        print(f"fashion-predict: {len(escaped)} file name(s) are not UTF-8 text; their rows name them with \\x escapes: "
              f"{first_few(escaped)}", file=sys.stderr)
    if no_path:
        print(f"fashion-predict: skipped {len(no_path)} manifest row(s) with no {path_column!r}: {first_few(no_path)}",
              file=sys.stderr)
    if not files:
        given = [*([f"{len(inputs or [])} input(s) matching no image"] if inputs else []),
                 *([f"manifest {manifest} listing no path in column {path_column!r}"] if manifest else [])]
        print(f"fashion-predict: nothing to score: {', '.join(given) or 'give image files, folders or globs, or manifest='}",
              file=sys.stderr)
        return 2
    try:
        cores = usable_cores()
        predictor = load_predictor(bundle=bundle, checkpoint=checkpoint, runtime=runtime, top_k=top_k,
                                   batch_size=batch_size, taxonomy=taxonomy, threads=max(1, cores // (lanes or cores)))
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle/checkpoint: say why, no traceback
        print(f"fashion-predict: cannot load the model: {err}", file=sys.stderr)
        return 2
    try:
        explained = explained_attributes(explain, predictor.attributes)
    except ValueError as err:
        print(f"fashion-predict: {err}", file=sys.stderr)
        return 2
    if output:
        try:
            job = {"model": model_identity(predictor, checkpoint), "top_k": top_k, "taxonomy": taxonomy}
            done = prepare_output(Path(output), format, job | ({"explain": explained} if explained else {}), resume, overwrite)
        except OutputConflict as err:
            print(f"fashion-predict: {err}", file=sys.stderr)
            return 2
        except (ValueError, KeyError, TypeError, OSError) as err:   # say why, and touch nothing of the user's
            print(f"fashion-predict: cannot resume from {output}: it is not a {format} output of fashion-predict "
                  f"({type(err).__name__}: {err})" if resume else f"fashion-predict: cannot write {output}: {err}", file=sys.stderr)
            return 2
        if resume:
            files = [f for f in files if as_text(f) not in done]
            print(f"fashion-predict: resuming: {len(done)} already in {output}, {len(files)} to score", file=sys.stderr)
    if explained:   # Grad-CAM needs the decoded image beside its prediction: decode here, batch by batch
        batches = explained_batches(predictor, files, explained, Path(explain_dir))   # a URI stays one
    else:
        lanes = lanes or lanes_for(predictor)
        batches = score_paths(predictor, files, workers, lanes)
    failed = scored = 0
    try:
        with helpers_on_one_thread(predictor.runtime == "onnx"), progress_bar(total=len(files), unit="img", disable=len(files) < PROGRESS_FROM) as bar:
            for batch in write_batches(batches, predictor.attributes, format, Path(output) if output else None,
                                       append=resume, stdout=sys.stdout, explained=explained):
                unreadable = batch.failed()
                for path, error in unreadable:   # on a line of its own: a print landed on the bar's line
                    bar.write(f"fashion-predict: skipped {path}: {error}", file=sys.stderr)
                failed += len(unreadable)
                scored += len(batch)
                bar.update(len(batch))
    except ValueError as err:
        print(f"fashion-predict: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # the output cannot be written (a folder where a file goes, no permission, a full disk)
        print(f"fashion-predict: cannot write {output}: {err}", file=sys.stderr)
        return 2
    if len(files) >= PROGRESS_FROM or failed:
        print(f"fashion-predict: {scored} rows written, {failed} of them errors", file=sys.stderr)
    return 1 if failed or unmatched else 0


def model_identity(predictor: Predictor, checkpoint: str | None) -> str:
    """What decides the rows: a checkpoint's bytes, or every file of a bundle (the sha256s of the manifest
    the load verified them against), so a copy of the same bundle elsewhere is the same model."""
    from fashion.inference.bundle import sha256

    if checkpoint:
        return f"checkpoint sha256 {sha256(Path(checkpoint))}"
    files = json.dumps(predictor.trained.manifest["files"], sort_keys=True).encode()
    return f"bundle sha256 {hashlib.sha256(files).hexdigest()}"


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
