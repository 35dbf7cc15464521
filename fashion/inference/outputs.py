"""Where scored rows go: JSON lines, CSV, or Parquet, written as they come and resumable.

A resumed job (`resume=true`) reads which paths the output already holds and scores only the others,
so an interrupted catalogue run redoes nothing it finished:
- JSON lines and CSV are appended to, one flush per batch; a line cut short by the interruption is
  dropped first;
- Parquet is a folder of part files (as Spark writes it), each written to a temporary name and renamed
  when complete, so a part never holds half a row group; an unfinished part is discarded and redone.

Hours of scoring are not lost to a repeated command: an output that already holds rows is refused unless
the job resumes it or says `overwrite=true`, and a resumed job must be the job that wrote it (the same
model, top_k and taxonomy, kept in a small record beside the rows), so one table never mixes two models.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from fashion.inference.predictor import Tags

Format = Literal["jsonl", "csv", "parquet"]
SUFFIX_FORMATS: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ROWS_PER_PART = 10_000


def output_format(output: str | Path | None, format: Format | None) -> Format:
    """`format`, else the one `output`'s suffix names, else (no suffix) JSON lines. An output whose suffix names
    another format than `format` is refused: a tags.csv holding JSON lines breaks whatever opens it. So is,
    without `format`, a suffix of a format not written here (tags.xlsx, tags.json): it held JSON lines."""
    suffix = Path(output).suffix.lower() if output else ""
    named = SUFFIX_FORMATS.get(suffix)
    if format and named and format != named:
        raise ValueError(f"output={output} is named for {named}, but format={format}: drop format= or rename the output")
    if suffix and not named and not format:
        raise ValueError(f"output={output}: fashion-predict writes {', '.join(SUFFIX_FORMATS)}, not {suffix}; name the "
                         "output with one of those, or give format= (jsonl, csv or parquet) to write it under this name")
    return format or named or "jsonl"


def flat_columns(attributes: list[str], explained: Sequence[str] = ()) -> list[str]:
    """A table's columns; `explained`: the attributes with Grad-CAM overlays, whose files it names."""
    return ["path", *[c for a in attributes for c in (a, f"{a}_confidence", f"{a}_status", f"{a}_top_k")],
            *[f"{a}_explanation" for a in explained], "error"]


def as_text(path: str) -> str:
    """A path as the UTF-8 text every output format holds. A file name that is not UTF-8 (a Latin-1 name from an
    old archive, which Python holds with surrogate escapes) gets `\\x` escapes (`caf\\xe9.jpg`): CSV and Parquet
    cannot encode it as it is, which stopped the job at its batch, and again at every resume. Called for every path
    of a catalogue (at its start, per scored batch, at a resume): an ASCII name, the common one, is returned as it is."""
    if path.isascii():
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class ScoredBatch:
    """Consecutive input rows: their paths (as text: `as_text`), per row why it could not be read (None where it
    was), the tags of the readable ones in order, and per row anything else to write in JSON lines (Grad-CAM files)."""

    paths: list[str]
    errors: list[str | None]
    tags: Tags | None
    extras: list[dict] | None = None

    def __post_init__(self) -> None:
        self.paths = [as_text(path) for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def failed(self) -> list[tuple[str, str]]:
        return [(path, error) for path, error in zip(self.paths, self.errors) if error is not None]

    def rows(self) -> Iterator[dict]:
        """`{"path", "predictions": {attribute: Prediction.to_dict()}}` or `{"path", "error"}` per row."""
        tags, scored = self.tags, 0
        for row, (path, error) in enumerate(zip(self.paths, self.errors)):
            if error is not None:
                yield {"path": path, "error": error}
                continue
            predictions = {a: p.to_dict() for a, p in tags.predictions(scored).items()}
            yield {"path": path, "predictions": predictions, **(self.extras[row] if self.extras else {})}
            scored += 1

    def columns(self, attributes: list[str], explained: Sequence[str] = ()) -> dict[str, list]:
        """The table's columns (flat_columns); an error row has only `path` and `error`."""
        readable = [row for row, error in enumerate(self.errors) if error is None]

        def spread(values: list) -> list:   # the readable rows' values, None on the error rows
            if len(readable) == len(self.paths):
                return values
            column: list = [None] * len(self.paths)
            for row, value in zip(readable, values):
                column[row] = value
            return column

        columns: dict[str, list] = {"path": list(self.paths)}
        tags = self.tags
        for a in attributes:
            labels, confidence, accepted, top_k = (tags.labels[a], tags.confidence[a], tags.accepted[a],
                                                   zip(tags.top_labels[a], tags.top_values[a])) if tags else ([], [], [], [])
            columns[a] = spread(labels)
            columns[f"{a}_confidence"] = spread(confidence)
            columns[f"{a}_status"] = spread(["accepted" if ok else "needs_review" for ok in accepted])
            columns[f"{a}_top_k"] = spread([";".join(f"{label}:{p:.4f}" for label, p in zip(*top)) for top in top_k])
        extras = self.extras or [{}] * len(self.paths)
        for a in explained:
            columns[f"{a}_explanation"] = [extra.get("explanations", {}).get(a) for extra in extras]
        columns["error"] = list(self.errors)
        return columns


class OutputConflict(Exception):
    """The output holds rows this job must not add to or replace unasked."""


def job_record(output: Path, format: Format) -> Path:
    """Where the settings that wrote `output` are kept: inside a Parquet folder (its readers skip names that
    start with `_`, as Spark's `_SUCCESS`), beside a CSV or JSON lines file."""
    return output / "_job.json" if format == "parquet" else output.with_name(output.name + ".job.json")


def holds_rows(output: Path, format: Format) -> bool:
    if format == "parquet":
        return any(output.glob("part-*.parquet"))
    return output.is_file() and output.stat().st_size > 0


def prepare_output(output: Path, format: Format, job: dict, resume: bool, overwrite: bool) -> set[str]:
    """The paths an earlier run of this same job finished (skip them); records `job` beside the output.

    Raises OutputConflict for an output with rows that the command neither resumes nor overwrites, or
    that another model or other settings wrote; done_paths' errors for one this tool did not write."""
    if resume and overwrite:
        raise OutputConflict("resume=true keeps what the output holds and overwrite=true replaces it: give one")
    if format != "parquet" and output.is_dir():   # before a record lands beside a folder
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(output))
    record = job_record(output, format)
    done: set[str] = set()
    if resume:
        written = json.loads(record.read_text()) if record.is_file() else None
        if written is not None and not isinstance(written, dict):
            raise ValueError(f"{record} is not a job record")
        if written is not None and written != job:
            changed = ", ".join(f"{key} {written.get(key)!r} -> {job.get(key)!r}" for key in job if written.get(key) != job[key])
            raise OutputConflict(f"cannot resume {output}: its rows were written with other settings ({changed}); "
                                 "write to a new output, or overwrite=true")
        done = done_paths(output, format)
    elif holds_rows(output, format):
        if not overwrite:
            raise OutputConflict(f"{output} already holds rows: resume=true scores only the paths it lacks, "
                                 "overwrite=true replaces it")
        if format == "parquet":   # a file output is truncated when it is opened for writing
            for part in [*output.glob("part-*.parquet"), *output.glob(".part-*.tmp")]:
                part.unlink()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(job, indent=1) + "\n")
    return done


def done_paths(output: Path, format: Format) -> set[str]:
    """Paths an earlier run of the job already wrote (nothing when the output does not exist yet)."""
    if not output.exists():
        return set()
    if format == "parquet":
        for unfinished in output.glob(".part-*.tmp"):
            unfinished.unlink()
        parts = sorted(output.glob("part-*.parquet"))
        return set(pd.concat([pd.read_parquet(p, columns=["path"]) for p in parts])["path"]) if parts else set()
    data = output.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]   # an interrupted write can leave a last line without its newline
    if format == "csv":
        done = set(pd.read_csv(io.BytesIO(complete), usecols=["path"])["path"].astype(str)) if complete else set()
    else:
        done = {json.loads(line)["path"] for line in complete.decode().splitlines() if line.strip()}
    if complete != data:   # only once the rest has read as this tool's output: drop the incomplete line
        output.write_bytes(complete)
    return done


def write_batches(batches: Iterable[ScoredBatch], attributes: list[str], format: Format, output: Path | None,
                  append: bool, stdout: TextIO, explained: Sequence[str] = ()) -> Iterator[ScoredBatch]:
    """Writes each batch as it arrives and passes it on (the caller counts rows and errors)."""
    if format == "parquet":
        if output is None:
            raise ValueError("format=parquet needs output=<folder>")
        yield from write_parquet(batches, attributes, output, explained)
        return
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)   # as a parquet folder is made
    handle = output.open("a" if append else "w", newline="") if output else stdout
    try:
        if format == "csv":
            writer = csv.writer(handle)
            if not (append and output and output.stat().st_size):
                writer.writerow(flat_columns(attributes, explained))
        for batch in batches:
            if format == "csv":
                writer.writerows(zip(*batch.columns(attributes, explained).values()))
            else:
                handle.writelines(json.dumps(row) + "\n" for row in batch.rows())
            handle.flush()
            yield batch
    finally:
        if output:
            handle.close()


def write_parquet(batches: Iterable[ScoredBatch], attributes: list[str], folder: Path, explained: Sequence[str] = (),
                  rows_per_part: int = ROWS_PER_PART) -> Iterator[ScoredBatch]:
    """Part files of about `rows_per_part` rows (whole batches), each complete before it gets its name."""
    folder.mkdir(parents=True, exist_ok=True)
    first = len(list(folder.glob("part-*.parquet")))
    names = flat_columns(attributes, explained)
    buffer: dict[str, list] = {name: [] for name in names}
    # One schema for every part (an all-empty `error` column must still be a string column), so the parts read as one table.
    schema = pa.schema([(c, pa.float64() if c.endswith("_confidence") else pa.string()) for c in names])

    def flush() -> None:
        nonlocal first
        name = f"part-{first:05d}.parquet"
        temporary = folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pydict(buffer, schema=schema), temporary)
        temporary.rename(folder / name)
        first += 1
        for column in buffer.values():
            column.clear()

    for batch in batches:
        for name, values in batch.columns(attributes, explained).items():
            buffer[name] += values
        yield batch
        if len(buffer["path"]) >= rows_per_part:
            flush()
    if buffer["path"]:
        flush()
