"""SQLAlchemy 2 models of the index. Alembic migrations in ``migrations/`` create and change these tables;
the public SQL API is the views ``window_labels`` and ``recording_status`` (see ``eegcache.index.views``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class StoredObject(Base):
    """One immutable Zarr group: the preprocessed signal and its label mask."""

    __tablename__ = "objects"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    label_key: Mapped[str] = mapped_column(String(64))
    spec_digest: Mapped[str] = mapped_column(String(16), index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    n_channels: Mapped[int] = mapped_column(Integer)
    n_samples: Mapped[int] = mapped_column(BigInteger)
    fs: Mapped[float] = mapped_column(Float)
    dtype: Mapped[str] = mapped_column(String(16))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ObjectFile(Base):
    """sha256 of every file of an object (chunks and metadata), checked by ``verify``."""

    __tablename__ = "object_files"

    object_key: Mapped[str] = mapped_column(ForeignKey("objects.key", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Dataset(Base):
    """A source tree (TUSZ raw, a plain folder...): a name, its layout and the root it was last seen at. The root is
    a ref that may move; recordings are named relative to it."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    layout: Mapped[str] = mapped_column(String(16))
    root: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Pipeline(Base):
    """A named, declared preprocessing spec. Objects stay content-addressed, so pipelines with equal specs share
    them; window sets belong to a pipeline."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    spec_json: Mapped[str] = mapped_column(Text)
    spec_digest: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Recording(Base):
    """One source EDF, as one pipeline built it: identified by (dataset, path relative to the dataset root,
    pipeline), never by an absolute path."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    rel_path: Mapped[str] = mapped_column(Text)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id"))
    source_missing: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str] = mapped_column(String(255), index=True)
    subject: Mapped[str | None] = mapped_column(String(64))
    session: Mapped[str | None] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(16))
    montage: Mapped[str | None] = mapped_column(String(32))
    token: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[str | None] = mapped_column(Text)
    reader: Mapped[str | None] = mapped_column(String(16))
    filled_channels: Mapped[str | None] = mapped_column(Text)
    edf_size: Mapped[int | None] = mapped_column(BigInteger)
    edf_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    edf_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    annotation_path: Mapped[str | None] = mapped_column(Text)  # relative to the dataset root
    annotation_size: Mapped[int | None] = mapped_column(BigInteger)
    annotation_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    annotation_sha256: Mapped[str | None] = mapped_column(String(64))
    object_key: Mapped[str | None] = mapped_column(ForeignKey("objects.key"), index=True)
    spec_digest: Mapped[str | None] = mapped_column(String(16))
    orig_fs: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    seizure_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    run: Mapped[str | None] = mapped_column(String(64))  # BIDS run entity
    reference: Mapped[str | None] = mapped_column(String(128))  # BIDS EEGReference (the _eeg.json sidecar)
    power_line_hz: Mapped[float | None] = mapped_column(Float)  # BIDS PowerLineFrequency, as declared

    __table_args__ = (
        UniqueConstraint("dataset_id", "rel_path", "pipeline_id", name="uq_recordings_identity"),
        Index("ix_recordings_split_status", "split", "status"),
    )


class SeizureEvent(Base):
    """Seizure intervals after clipping and merging, as the mask encodes them, with their seizure type(s): the
    annotation's labels (``seiz``, ``fnsz``, BIDS ``sz_foc_ia``...), joined by ``+`` where events of different
    types merged; NULL for events registered before schema 0006."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"), index=True)
    start_s: Mapped[float] = mapped_column(Float)
    stop_s: Mapped[float] = mapped_column(Float)
    event_type: Mapped[str | None] = mapped_column(Text)


class WindowSet(Base):
    """A (window, stride) pair; its windows are rows, never copies of the signal."""

    __tablename__ = "window_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    window_s: Mapped[float] = mapped_column(Float)
    stride_s: Mapped[float] = mapped_column(Float)
    fs: Mapped[float] = mapped_column(Float)
    window_samples: Mapped[int] = mapped_column(Integer)
    stride_samples: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("pipeline_id", "window_s", "stride_s", name="uq_window_sets_shape"),)


class Window(Base):
    """One window: a slice of a recording's stored signal, with its label counted from the stored mask."""

    __tablename__ = "windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    window_set_id: Mapped[int] = mapped_column(ForeignKey("window_sets.id", ondelete="CASCADE"))
    start_sample: Mapped[int] = mapped_column(BigInteger)
    seizure_samples: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(SmallInteger)  # 0 no_seizure, 1 partial_seizure, 2 full_seizure

    __table_args__ = (
        UniqueConstraint("recording_id", "window_set_id", "start_sample", name="uq_windows_slice"),
        Index("ix_windows_set_label_recording", "window_set_id", "label", "recording_id"),
    )


class Claim(Base):
    """A lease on one (dataset, relative path, pipeline), so that several ingest processes (on one or many machines) share a tree
    without preprocessing a file twice. A dead owner's claim expires and is taken over."""

    __tablename__ = "claims"

    source_path: Mapped[str] = mapped_column(Text, primary_key=True)  # the claimed item: see eegcache.index.claims
    owner: Mapped[str] = mapped_column(String(128), index=True)
    expires_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch


class IndexIdentity(Base):
    """This index's identity (one row, made by migration 0007): a random id, the id of the store it owns (the
    store's ``store.json`` names this index back), and, for a copy made by ``eegcache index copy``, the index it is
    a snapshot of. See ``eegcache.store.owner``."""

    __tablename__ = "index_identity"

    index_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    store_id: Mapped[str | None] = mapped_column(String(36))
    snapshot_of: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class UnreferencedObject(Base):
    """An object gc found unreferenced, and since when (seconds since the epoch): gc's grace counts from here, not
    from the object folder's age. The row goes when the object is referenced again (registration, pull) or
    collected."""

    __tablename__ = "unreferenced_objects"

    object_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    since_s: Mapped[float] = mapped_column(Float)
