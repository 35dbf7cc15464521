"""People's corrections as a Kaggle-layout folder (`fashion-data export-feedback output=feedback`)
(`styles.csv` + `images/<id>.jpg`), ready to train on beside the catalogue:

    fashion-train data=catalogue data.train_only=[feedback]

Each corrected photo gets the labels a person confirmed (attributes they did not give stay empty and
are masked in training), an id of its own (`queue` x `ID_BASE` + its queue item's id: it never collides
with a catalogue product, nor, when each queue has its own `queue` number, with another queue's), and is
written as JPEG (a JPEG upload as it came, other formats re-encoded). `data.train_only` puts these rows
in the training split only: a correction is never scored as a test or evaluation product. Keys:
conf/export_feedback.yaml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from fashion.data.images import ImageReadError, load_rgb
from fashion.data.styles import ATTRIBUTES
from fashion.feedback.store import ReviewStore, unprintable

ID_BASE = 1_000_000_000   # Kaggle ids are below 100,000


class NotAFeedbackFolder(FileExistsError):
    """`output` holds a styles.csv with products of a catalogue: the export would replace their labels."""


def export_feedback(store: ReviewStore, output: Path, queue: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """Writes the folder; returns its styles table (one row per corrected photo written) and the corrections
    left out, each named with why.

    Each export rewrites styles.csv with every correction so far, so the folder may be written again by the
    same queue. A styles.csv with other ids is refused before anything is written: below `ID_BASE` it is a
    catalogue's (`output=` naming the catalogue by mistake); in another queue's range, that queue's export,
    whose rows this one would replace. A photo gone from the queue's folder, or one that no longer decodes,
    leaves its correction out (it stays in the queue) rather than stopping every other one; so do labels that are
    not printable text (`unprintable`)."""
    first = queue * ID_BASE
    refuse_another_folder(output / "styles.csv", queue)
    images = output / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, left_out = [], []
    for item_id, path, labels, _, filename in store.corrections():
        product = first + item_id
        if odd := unprintable(labels):   # stored before the API refused them: styles.csv cannot hold them as class names
            left_out.append(f"queue item {item_id}: {odd}")
            continue
        try:
            write_photo(path, images / f"{product}.jpg")
        except (FileNotFoundError, ImageReadError) as err:   # the photo's own fault: the output is fine
            left_out.append(f"queue item {item_id}: {err}")
            continue
        rows.append({"id": product, **{a: labels.get(a) for a in ATTRIBUTES}, "productDisplayName": filename or path.name})
    table = pd.DataFrame(rows, columns=["id", *ATTRIBUTES, "productDisplayName"])
    table.to_csv(output / "styles.csv", index=False)
    return table, left_out


def refuse_another_folder(styles: Path, queue: int) -> None:
    if not styles.is_file():
        return
    try:
        ids = pd.to_numeric(pd.read_csv(styles, usecols=lambda c: c == "id", on_bad_lines="skip").get("id"), errors="coerce")
    except ValueError:   # not even a CSV: not ours either
        ids = None
    if ids is None or not (ids >= ID_BASE).all():
        raise NotAFeedbackFolder(f"{styles} was not written by export-feedback (its ids are not all {ID_BASE:,} or "
                                 "more; a catalogue's are below): write the corrections to a folder of their own")
    others = sorted({int(i) // ID_BASE for i in ids} - {queue})
    if others:
        raise NotAFeedbackFolder(f"{styles} holds the corrections of queue={others[0]}, and this is queue={queue}: "
                                 "write each queue's corrections to a folder of their own")


def write_photo(source: Path, target: Path) -> None:
    """Decodes the photo first, so the folder holds only photos training can read; a JPEG upload is then
    copied as it came (no second JPEG compression), other formats are re-encoded."""
    if not source.is_file():
        raise FileNotFoundError(f"its photo {source} is missing")
    pixels = load_rgb(source)
    if source.suffix.lower() in (".jpeg", ".jpg"):
        shutil.copyfile(source, target)
    else:
        Image.fromarray(pixels).save(target, quality=95)
