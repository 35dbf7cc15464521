"""The project's own MLflow store (`mlruns/`: an SQLite database beside an `artifacts/` folder) after the
project folder moved.

MLflow records every artifact location as an absolute path. A project folder that is renamed, moved or
copied to another machine keeps a database that points at the old place: new runs would write their
artifacts there (re-creating the old folder, or failing where it cannot be written) and the UI could not
show the old ones. `follow_move` notices that the runs' artifacts are in this store's own folder while the
database names another, and rewrites the recorded locations to this folder. MLflow has no API that changes
an artifact location, so this is a few SQL updates, on the columns that hold them only (params and tags
that name old paths stay as they were: they are what the run was given).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

from fashion.config import sqlite_file

log = logging.getLogger(__name__)

# (table, column) pairs that hold artifact locations, in MLflow's SQL schema; a table or column that an
# older MLflow does not have is skipped.
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
             ("model_versions", "storage_location"), ("model_versions", "source"))


def follow_move(uri: str) -> Path | None:
    """Where the SQLite store at `uri` was moved from, after pointing its artifact locations here; None when
    it did not move (or is not a local SQLite store). Only a store whose runs' artifact folders are
    demonstrably here (`artifacts/<run id>`) is rewritten, so an artifact location chosen on purpose stays."""
    database = sqlite_file(uri)
    if database is None or not database.is_file():
        return None
    store = database.parent.resolve()
    with closing(sqlite3.connect(database)) as connection:
        old = moved_from(connection, store)
        if old is None:
            return None
        with connection:   # one transaction: every location moves, or none
            changed = sum(rewrite(connection, table, column, old, store) for table, column in LOCATIONS)
    log.warning("the MLflow store %s was moved here from %s: %d recorded artifact locations now point here",
                store, old, changed)
    return old


def moved_from(connection: sqlite3.Connection, store: Path) -> Path | None:
    """The old store folder, read off a run whose artifacts the database places outside `store` while they
    lie in `store/artifacts/<run id>` (the layout fashion.tracking creates)."""
    if not columns(connection, "runs"):
        return None
    for run_id, artifact_uri in connection.execute("SELECT run_uuid, artifact_uri FROM runs"):
        path = Path(str(artifact_uri).removeprefix("file://"))
        if not path.is_absolute() or path.is_relative_to(store) or len(path.parts) < 4:
            continue
        folder = path.parent.parent   # <old store>/artifacts/<run id>/artifacts -> <old store>/artifacts
        if folder.name == "artifacts" and path.parent.name == run_id and (store / "artifacts" / run_id).is_dir():
            return folder.parent
    return None


def rewrite(connection: sqlite3.Connection, table: str, column: str, old: Path, new: Path) -> int:
    """Locations equal to `old` or under it, plain or as file:// URIs, moved under `new`; returns how many."""
    if column not in columns(connection, table):
        return 0
    changed = 0
    for before, after in ((str(old), str(new)), (f"file://{old}", f"file://{new}")):
        changed += connection.execute(
            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "   # noqa: S608 (names from LOCATIONS)
            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
            (after, len(before) + 1, before, len(before) + 1, before + "/")).rowcount
    return changed


def columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
