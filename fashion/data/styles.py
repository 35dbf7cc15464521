"""Read `styles.csv` the way the real file needs: malformed rows skipped and counted, never silently.

The full Kaggle file has a free-text `productDisplayName` column whose unquoted commas break rows
apart; the label columns also hold empty values. Everything read here is kept as strings so a label
such as "NA" or "2012" is never turned into a float behind the user's back.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pandas as pd

from fashion.config import InputError
from fashion.data.images import URI

log = logging.getLogger(__name__)

ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
EXAMPLES_IN_REPORT = 20


class StylesFileError(InputError):
    """styles.csv is unusable as a whole (missing, empty, or without the columns asked for)."""


@dataclass
class StylesReport:
    """What reading styles.csv dropped or found missing, for the log and for MLflow."""

    rows_read: int = 0
    malformed_rows: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    invalid_ids: int = 0
    duplicate_ids: int = 0
    missing_labels: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        missing = ", ".join(f"{k}={v}" for k, v in self.missing_labels.items() if v) or "none"
        return (
            f"styles.csv: {self.rows_read} rows kept, {self.malformed_rows} malformed rows skipped, "
            f"{self.invalid_ids} rows with an invalid id skipped, {self.duplicate_ids} duplicate ids skipped; "
            f"missing labels: {missing}"
        )


def first_row_overflows(path: Path, width: int) -> list[str] | None:
    """The first data row's fields when it has more than the header's `width`, else None. pandas sends
    every later such row to `on_bad_lines`, but the first it either reads as the index (shifting every
    label of the file one column left) or, with `index_col=False`, cuts to the header's width unsaid."""
    try:
        first = pd.read_csv(path, header=None, skiprows=1, nrows=1, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:   # a header and no rows
        return None
    return first.iloc[0].tolist() if first.shape[1] > width else None


def first_line_not_utf8(path: Path, opener: Callable[..., IO[bytes]] = open) -> int | None:
    """Read line by line: a decoder reading in blocks fails somewhere in the block, not at the line."""
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def other_separator(columns: list[str]) -> str:
    """A header read as one column holding `;`, a tab or `|`: a spreadsheet saved it with its locale's separator
    (`;` where the comma is the decimal mark). Said, since the column list alone reads as a mystery."""
    found = [s for s in (";", "\t", "|") if len(columns) == 1 and s in str(columns[0])]
    return f": its fields are separated by {found[0]!r}, save it comma-separated" if found else ""


def no_column(column: str, columns: list[str]) -> ValueError:
    """A manifest without its path column (fashion-predict's and Spark's alike), with the columns it has."""
    shown = ", ".join(repr(str(c)) for c in columns[:8]) + (", ..." if len(columns) > 8 else "")
    fix = other_separator(columns) or "; path_column=<name> names the one that holds the image paths"
    return ValueError(f"no column {column!r} (its columns: {shown or 'none'}){fix}")


def relative_paths(paths: list[str]) -> list[str]:
    """The paths taken from where the job runs: neither absolute nor a URI (`s3://...`, read through fsspec)."""
    return [path for path in paths if not os.path.isabs(path) and not URI.match(path)]


def relative_to_the_manifest(manifest: str, paths: list[str], sample: int = 20) -> str | None:
    """Why a manifest's relative paths would all miss: they name files beside the manifest, and the job runs elsewhere
    (paths are taken from where it runs, as Spark takes them). Each row would be an error, a catalogue's worth of them;
    judged on the first `sample` relative paths, none found from here and all beside the manifest. None otherwise."""
    relative = relative_paths(paths[:sample])
    beside = Path(manifest).parent
    if not relative or beside.resolve() == Path.cwd().resolve() or any(os.path.exists(path) for path in relative) \
            or not all((beside / path).exists() for path in relative):
        return None
    return (f"the manifest's paths are relative to where the job runs ({Path.cwd()}), and none of its first "
            f"{len(relative)} is there, but each is beside the manifest ({beside / relative[0]}): run from "
            f"{beside.resolve()}, or write absolute paths")


def is_csv_manifest(manifest: str | Path) -> bool:
    """A manifest's format (fashion-predict's and Spark's alike): a `.parquet` file or a folder is Parquet, any other
    file CSV, compressed or not. A path this machine cannot see (`s3://...`) is taken for a folder when it has no
    suffix."""
    path = Path(manifest)
    if path.exists():
        return path.is_file() and path.suffix != ".parquet"
    return path.suffix not in ("", ".parquet")


def read_styles(path: str | Path, attributes: list[str] | tuple[str, ...] = ATTRIBUTES, optional: Sequence[str] = (),
                ) -> tuple[pd.DataFrame, StylesReport]:
    """Return one row per product with an integer `id` and the requested label columns (NA = missing). Columns of
    `optional` the file lacks are all NA (a folder to score that labels some attributes only), as long as it has one."""
    path = Path(path)
    if not path.is_file():
        raise StylesFileError(f"styles file not found: {path}")
    report = StylesReport()
    malformed: list[list[str]] = []

    def skip_bad_line(fields: list[str]) -> None:
        malformed.append(fields)
        return None

    try:
        with warnings.catch_warnings():   # index_col=False's warning of a cut first row: first_row_overflows
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path, dtype=str, engine="python", on_bad_lines=skip_bad_line, skipinitialspace=True, keep_default_na=False,
                na_values=["", "NA", "N/A", "NaN", "nan", "null", "None"], index_col=False,
            )
        first = first_row_overflows(path, len(frame.columns))
    except pd.errors.EmptyDataError as err:
        raise StylesFileError(f"{path} is empty") from err
    except UnicodeDecodeError:   # a spreadsheet's "CSV" in its own code page (cp1252, Latin-1)
        raise StylesFileError(f"{path} is not UTF-8 text (line {first_line_not_utf8(path)}): save it as UTF-8, "
                              "as a spreadsheet's \"CSV UTF-8\" does") from None
    if first is not None:
        malformed.insert(0, first)
        frame = frame.iloc[1:]
    missing_columns = [c for c in ("id", *attributes) if c not in frame.columns]
    absent = [c for c in missing_columns if c in optional]
    if len(absent) < len(missing_columns) or (optional and set(optional) <= set(absent)):
        raise StylesFileError(f"{path} lacks column(s) {missing_columns}; it has {list(frame.columns)}"
                              f"{other_separator(list(frame.columns))}")

    report.malformed_rows = len(malformed)
    report.malformed_examples = [",".join(f)[:200] for f in malformed[:EXAMPLES_IN_REPORT]]
    frame = frame.assign(**{column: pd.Series(pd.NA, index=frame.index, dtype="string") for column in absent})
    frame = frame[["id", *attributes]].copy()
    ids = pd.to_numeric(frame["id"], errors="coerce")
    valid = ids.notna() & (ids == ids.round())
    report.invalid_ids = int((~valid).sum())
    frame = frame[valid].assign(id=ids[valid].astype("int64"))
    duplicated = frame["id"].duplicated(keep="first")
    report.duplicate_ids = int(duplicated.sum())
    frame = frame[~duplicated].reset_index(drop=True)
    for column in attributes:
        frame[column] = frame[column].str.strip()
    report.rows_read = len(frame)
    report.missing_labels = {a: int(frame[a].isna().sum()) for a in attributes}
    if report.malformed_rows:
        log.warning("%s: skipped %d malformed rows, e.g. %s", path, report.malformed_rows, report.malformed_examples[:3])
    return frame, report
