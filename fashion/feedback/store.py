"""The review queue and people's corrections, in a real database through SQLAlchemy: SQLite by default
(a file, no setup), PostgreSQL (or any SQLAlchemy URL) for a team.

A prediction with any tag that needs review is queued with its image. Images are stored on disk by
content (`images/<sha256[:2]>/<sha256>.<ext>`): the same photo uploaded twice is stored and queued once,
and a correction names the image by its hash, so it stays attached to the pixels it describes. A
correction is kept as a person gave it (a label the model has never seen is allowed: new articles are
why the loop exists); the latest one per image is what export uses.

A server queues every uncertain prediction, so a queue nobody works through would grow with the traffic:
`max_queued` caps the photos waiting (a new photo is not queued while the queue is full; one already
queued still gets the newer predictions). Reviewed photos stay: they are the corrections' training data.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import JSON, DateTime, Engine, ForeignKey, Integer, String, create_engine, func, select
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fashion.config import sqlite_file, without_password
from fashion.validation import AtLeastOne, typed

QUEUED, REVIEWED = "queued", "reviewed"
FILENAME_LENGTH, NAME_LENGTH = 500, 200   # column widths: PostgreSQL refuses a longer value (SQLite keeps it)


class Base(DeclarativeBase):
    pass


class ReviewItem(Base):
    """One image whose predictions a person should check."""

    __tablename__ = "review_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    image_file: Mapped[str] = mapped_column(String(200))   # relative to the store's image folder
    filename: Mapped[str | None] = mapped_column(String(FILENAME_LENGTH), nullable=True)   # as uploaded, for people
    model_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    predictions: Mapped[dict[str, Any]] = mapped_column(JSON)
    needs_review: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Correction(Base):
    """A person's labels for one image (every attribute they confirmed or corrected)."""

    __tablename__ = "corrections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("review_items.id"), nullable=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    reviewer: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CorrectedPhoto(NamedTuple):
    item_id: int               # its place in the queue
    image: Path                # the stored photo (named by content hash)
    labels: dict[str, str]     # the latest a person gave
    predictions: dict[str, Any]   # the model's, when it was queued
    filename: str | None       # as uploaded: what the shop called it


def unprintable(labels: Mapping[str, str]) -> str | None:
    """Why labels cannot be class names, or None: characters that are not printable text, such as a control character
    (a NUL, a line break), a space other than " " (which makes a class of its own) or an unpaired surrogate (a
    client's broken encoding, which JSON carries and styles.csv cannot: the export stopped at it)."""
    odd = {attribute: label for attribute, label in labels.items() if not (isinstance(label, str) and label.isprintable())}
    return f"the labels {ascii(odd)} hold characters that are not printable text (a control character, a space " \
           "other than ' ', an unpaired surrogate)" if odd else None


class UnknownImage(KeyError):
    """A correction or image request names a hash the store never saw."""


def create_tables(engine: Engine) -> None:
    """Servers that open a new queue together (replicas started at once) each looked for the tables, found
    none and created them: all but one failed to start, with `table ... already exists` (SQLite) or a
    duplicate `pg_type` key (PostgreSQL). A loser looks again and creates only what is still missing; each
    failure means another server made a table, so one look per table is enough."""
    for tries_left in range(len(Base.metadata.tables), -1, -1):
        try:
            Base.metadata.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if not tries_left:
                raise


@typed
class ReviewStore:
    """`url`: an SQLAlchemy URL (sqlite:///review/review.db, postgresql+psycopg://...); `images`: the folder
    that holds the queued photos by content hash; `max_queued`: photos waiting at most (None: no cap)."""

    def __init__(self, url: str, images: str | Path, max_queued: AtLeastOne | None = None, create: bool = True) -> None:
        """`create=False` opens a queue a server already made (the exporter): a SQLite file that is not there
        is an error, not a new, empty queue made by a typo."""
        database = sqlite_file(url)
        if database is not None:
            database = database.expanduser()
            if not create and not database.is_file():
                raise ValueError(f"no review queue at {database}: review_url must name the database "
                                 "fashion-serve wrote to (its review_url)")
            database.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(url)
        except (ArgumentError, ImportError) as err:   # not a URL, or a dialect whose driver is not installed
            raise ValueError(f"review_url is not a database URL this install can open ({err}); "
                             "e.g. sqlite:///review/review.db or postgresql+psycopg://user@host/db") from None
        try:
            with self.engine.connect():   # a server that refuses or cannot be reached is said once, not retried
                pass
            create_tables(self.engine)
        except SQLAlchemyError as err:   # named without its password
            raise ValueError(f"cannot open the review database {without_password(url)}: {type(err).__name__}: "
                             f"{str(err.orig if hasattr(err, 'orig') else err).strip().splitlines()[0]}") from None
        self.images, self.max_queued = Path(images), max_queued

    def save_image(self, data: bytes, extension: str = "jpg") -> tuple[str, str]:
        """Stores the bytes under their sha256 (once); returns (hash, path relative to the image folder)."""
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest}.{extension.lower().lstrip('.') or 'bin'}"
        path = self.images / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # A name of its own per writer: two requests (or server processes) saving the same photo at once
            # each replace the file whole with the same bytes, and a reader never sees half of one.
            temporary = path.with_name(f".{digest[:16]}-{uuid.uuid4().hex}.tmp")   # mode as any file the server writes
            try:
                with temporary.open("xb") as out:
                    out.write(data)
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        return digest, relative

    def enqueue(self, data: bytes, extension: str, predictions: dict[str, Any], model_version: str | None,
                filename: str | None = None) -> int | None:
        """Queues an image for review; returns the item id, or None when the queue is full (`max_queued`) and
        the photo is new to it. A photo already queued gets the newer predictions; one a person already
        reviewed is not queued again. The cap holds per server: servers sharing one database may overshoot it
        by the photos they queue at the same moment."""
        if self.full() and not self.known(hashlib.sha256(data).hexdigest()):
            return None
        digest, relative = self.save_image(data, extension)
        needs = sorted(a for a, p in predictions.items() if p.get("status") != "accepted")
        # an upload's name is the client's to choose: clipped, so PostgreSQL does not turn the review away
        filename, model_version = filename and filename[:FILENAME_LENGTH], model_version and model_version[:NAME_LENGTH]
        try:
            return self._upsert(digest, relative, predictions, needs, model_version, filename)
        except IntegrityError:   # another server queued the same photo between our read and our insert
            return self._upsert(digest, relative, predictions, needs, model_version, filename)

    def _upsert(self, digest: str, relative: str, predictions: dict[str, Any], needs: list[str],
                model_version: str | None, filename: str | None) -> int:
        with Session(self.engine) as session, session.begin():
            item = session.scalar(select(ReviewItem).where(ReviewItem.image_sha256 == digest))
            if item is None:
                item = ReviewItem(image_sha256=digest, image_file=relative, created_at=now(), status=QUEUED)
                session.add(item)
            item.filename, item.model_version, item.predictions, item.needs_review = filename, model_version, predictions, needs
            session.flush()
            return item.id

    def next_item(self) -> dict[str, Any] | None:
        """The oldest queued item, or None when the queue is empty."""
        with Session(self.engine) as session:
            item = session.scalar(select(ReviewItem).where(ReviewItem.status == QUEUED).order_by(ReviewItem.id).limit(1))
            return as_dict(item) if item else None

    def full(self) -> bool:
        return self.max_queued is not None and self.queued() >= self.max_queued

    def known(self, digest: str) -> bool:
        with Session(self.engine) as session:
            return session.scalar(select(ReviewItem.id).where(ReviewItem.image_sha256 == digest)) is not None

    def queued(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.status == QUEUED)) or 0

    def image_path(self, digest: str) -> Path:
        with Session(self.engine) as session:
            item = session.scalar(select(ReviewItem).where(ReviewItem.image_sha256 == digest))
        if item is None:
            raise UnknownImage(digest)
        return self.images / item.image_file

    def record(self, digest: str, labels: dict[str, str], reviewer: str | None = None) -> int:
        """A person's labels for a queued image; the item leaves the queue. Returns the correction id."""
        with Session(self.engine) as session, session.begin():
            item = session.scalar(select(ReviewItem).where(ReviewItem.image_sha256 == digest))
            if item is None:
                raise UnknownImage(digest)
            item.status, item.reviewed_at = REVIEWED, now()
            correction = Correction(image_sha256=digest, item_id=item.id, labels=dict(labels), reviewer=reviewer,
                                    created_at=now())
            session.add(correction)
            session.flush()
            return correction.id

    def corrections(self) -> Iterator[CorrectedPhoto]:
        """Per corrected image, with the latest labels a person gave. One join, not the items fetched by a list of
        every corrected hash: a database takes so many values in one statement only (PostgreSQL 65,535), and an
        export of a queue with more corrections failed."""
        with Session(self.engine) as session:
            latest: dict[str, tuple[Correction, ReviewItem]] = {}
            for correction, item in session.execute(select(Correction, ReviewItem).join(
                    ReviewItem, ReviewItem.image_sha256 == Correction.image_sha256).order_by(Correction.id)):
                latest[correction.image_sha256] = correction, item
            for correction, item in latest.values():
                yield CorrectedPhoto(item.id, self.images / item.image_file, dict(correction.labels), dict(item.predictions),
                                     item.filename)


def as_dict(item: ReviewItem) -> dict[str, Any]:
    return {"id": item.id, "image_sha256": item.image_sha256, "filename": item.filename,
            "model_version": item.model_version, "predictions": item.predictions, "needs_review": item.needs_review,
            "status": item.status, "created_at": item.created_at.isoformat()}


def now() -> datetime:
    return datetime.now(UTC)
