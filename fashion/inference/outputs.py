"""Where scored rows go: JSON lines, CSV, or Parquet, written as they come and resumable.

A resumed job (`resume=true`) reads which paths the output already holds and scores only the others,
so an interrupted catalogue run redoes nothing it finished:
- JSON lines and CSV are appended to, one flush per batch; a line cut short by the interruption is
  dropped first;
- Parquet is a folder of part files (as Spark writes it), each written to a temporary name and renamed
  when complete, so a part never holds half a row group; an unfinished part is discarded and redone.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

Format = Literal["jsonl", "csv", "parquet"]
ROWS_PER_PART = 10_000


def flat_columns(attributes: list[str]) -> list[str]:
    return ["path", *[c for a in attributes for c in (a, f"{a}_confidence", f"{a}_status", f"{a}_top_k")], "error"]


def flat_row(row: dict, attributes: list[str]) -> dict:
    """One scored row as table columns; an error row has only `path` and `error`."""
    flat = {column: None for column in flat_columns(attributes)}
    flat["path"], flat["error"] = row["path"], row.get("error")
    for attribute, p in row.get("predictions", {}).items():
        flat[attribute], flat[f"{attribute}_confidence"], flat[f"{attribute}_status"] = p["label"], p["confidence"], p["status"]
        flat[f"{attribute}_top_k"] = ";".join(f"{t['label']}:{t['confidence']:.4f}" for t in p["top_k"])
    return flat


def done_paths(output: Path, format: Format) -> set[str]:
    """Paths an earlier run of the job already wrote (nothing when the output does not exist yet)."""
    if not output.exists():
        return set()
    if format == "parquet":
        for unfinished in output.glob(".part-*.tmp"):
            unfinished.unlink()
        parts = sorted(output.glob("part-*.parquet"))
        return set(pd.concat([pd.read_parquet(p, columns=["path"]) for p in parts])["path"]) if parts else set()
    drop_cut_line(output)
    if format == "csv":
        return set(pd.read_csv(output, usecols=["path"])["path"].astype(str)) if output.stat().st_size else set()
    return {json.loads(line)["path"] for line in output.read_text().splitlines() if line.strip()}


def drop_cut_line(output: Path) -> None:
    """An interrupted write can leave a last line without its newline: it is incomplete, drop it."""
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        output.write_bytes(data[:data.rfind(b"\n") + 1])


def write_rows(rows: Iterable[dict], attributes: list[str], format: Format, output: Path | None, append: bool,
               stdout: TextIO) -> Iterator[dict]:
    """Writes each row as it arrives and passes it on (the caller counts errors)."""
    if format == "parquet":
        if output is None:
            raise ValueError("format=parquet needs output=<folder>")
        yield from write_parquet(rows, attributes, output)
        return
    handle = output.open("a" if append else "w", newline="") if output else stdout
    try:
        if format == "csv":
            writer = csv.DictWriter(handle, fieldnames=flat_columns(attributes))
            if not (append and output and output.stat().st_size):
                writer.writeheader()
        for row in rows:
            if format == "csv":
                writer.writerow(flat_row(row, attributes))
            else:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            yield row
    finally:
        if output:
            handle.close()


def write_parquet(rows: Iterable[dict], attributes: list[str], folder: Path, rows_per_part: int = ROWS_PER_PART) -> Iterator[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    first = len(list(folder.glob("part-*.parquet")))
    buffer: list[dict] = []
    # One schema for every part (an all-empty `error` column must still be a string column), so the parts read as one table.
    schema = pa.schema([(c, pa.float64() if c.endswith("_confidence") else pa.string()) for c in flat_columns(attributes)])

    def flush() -> None:
        nonlocal first
        name = f"part-{first:05d}.parquet"
        temporary = folder / f".{name}.tmp"
        table = pa.Table.from_pandas(pd.DataFrame(buffer, columns=flat_columns(attributes)), schema=schema, preserve_index=False)
        pq.write_table(table, temporary)
        temporary.rename(folder / name)
        first += 1
        buffer.clear()

    for row in rows:
        buffer.append(flat_row(row, attributes))
        yield row
        if len(buffer) >= rows_per_part:
            flush()
    if buffer:
        flush()
