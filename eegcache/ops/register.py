"""The index side of ingest: each batch of prepared recordings written in ONE transaction (``register_many``; a
recording alone: ``register``), and what keeps the
index whole across recordings: which of byte-identical twins owns the windows, which sources are gone, window sets.

Only the parent process writes the index. Also used outside ingest: ``reingest_recordings`` (repair) and
``settle_twins`` (remove, transfer).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, bindparam, case, delete, func, or_, select, update

from eegcache.index.claims import release_in
from eegcache.index.db import writer
from eegcache.index.models import (
    Dataset,
    ObjectFile,
    Pipeline,
    Recording,
    SeizureEvent,
    StoredObject,
    UnreferencedObject,
    Window,
    WindowSet,
)
from eegcache.index.sql import insert_ignore
from eegcache.ops.prepare import Prepared, Task, WindowShape, _windows_for, prepare, recording_info
from eegcache.pipeline import keys
from eegcache.pipeline.names import PipelineRef
from eegcache.pipeline.spec import PreprocessSpec
from eegcache.pipeline.windows import LABELS, seconds_to_samples
from eegcache.sources.datasets import DatasetRef
from eegcache.store import ObjectStore, object_digest


@dataclass(frozen=True)
class Target:
    """Where prepared recordings go: a dataset (for their identity) and a pipeline (for their spec)."""

    dataset: DatasetRef
    pipeline: PipelineRef

    def claim(self, rel_path: str) -> str:
        return f"{self.dataset.id}:{self.pipeline.id}:{rel_path}"


def _json(value) -> str | None:
    return json.dumps(list(value)) if value else None


class _Sql:
    """The statements ``register`` runs for every recording, built once: building and caching a statement cost
    SQLAlchemy several times what SQLite takes to run it."""

    recording = select(Recording.id, Recording.object_key, Recording.status, Recording.edf_sha256,
                       Recording.annotation_sha256).where(
        Recording.dataset_id == bindparam("dataset_id"), Recording.rel_path == bindparam("rel_path"),
        Recording.pipeline_id == bindparam("pipeline_id"))
    insert_recording = Recording.__table__.insert()
    update_recording = Recording.__table__.update().where(Recording.__table__.c.id == bindparam("rec_id"))
    delete_windows = delete(Window).where(Window.recording_id == bindparam("rec_id"))
    delete_events = delete(SeizureEvent).where(SeizureEvent.recording_id == bindparam("rec_id"))
    insert_events = SeizureEvent.__table__.insert()
    referenced = delete(UnreferencedObject).where(UnreferencedObject.object_key == bindparam("key"))
    object_key = select(StoredObject.key).where(StoredObject.key == bindparam("key"))
    insert_object = StoredObject.__table__.insert()
    insert_files = ObjectFile.__table__.insert()
    twins = (select(Recording.id, Recording.status, Recording.rel_path, Recording.source_missing,
                    Recording.object_key, Dataset.name.label("dataset"))
             .join(Dataset, Dataset.id == Recording.dataset_id)
             .where(Recording.pipeline_id == bindparam("pipeline_id"), Recording.edf_sha256 == bindparam("edf"),
                    Recording.annotation_sha256 == bindparam("ann"),
                    Recording.status.in_(bindparam("statuses", expanding=True))))


def register(engine: Engine, store: ObjectStore, target: Target, item: Prepared) -> str:
    """Write one prepared recording in ONE transaction. Returns the status that was recorded."""
    return register_many(engine, store, target, [item])[0]


def register_many(engine: Engine, store: ObjectStore, target: Target, items: list[Prepared]) -> list[str]:
    """Write prepared recordings in ONE transaction, each as ``register`` would (a later one sees the earlier ones'
    rows: twins among them are settled as in a serial run); all or none of them is recorded. Returns the statuses
    that were recorded. One transaction per batch instead of per recording: its BEGIN, COMMIT and connection
    checkout are paid once per batch of short files."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with writer(engine).begin() as conn:
        return [_register_in(conn, store, target, item, now) for item in items]


def _register_in(conn, store: ObjectStore, target: Target, item: Prepared, now: datetime) -> str:
    """One recording's rows, in the caller's transaction."""
    spec = target.pipeline.spec
    rec = conn.execute(_Sql.recording, {"dataset_id": target.dataset.id, "rel_path": item.rel_path,
                                        "pipeline_id": target.pipeline.id}).first()
    status, reason = item.status, item.reason
    if rec is not None and rec.status == "ingested" and (
            status != "ingested" or (rec.edf_sha256, rec.annotation_sha256) != (item.edf_sha256, item.annotation_sha256)):
        _hand_over(conn, store, target.pipeline.id, rec)  # it held the windows for its twins: one takes them
    if status == "ingested":
        status, reason = _twin_status(conn, target, item)
    if status != "failed":
        _ensure_object(conn, store, item.spec or spec, item, now)
        # referenced again: gc's grace period for it starts afresh when it is next unreferenced
        conn.execute(_Sql.referenced, {"key": item.object_key})
    ann_rel = target.dataset.rel_path(Path(item.annotation_path)) if item.annotation_path else None
    values = dict(
        dataset_id=target.dataset.id, rel_path=item.rel_path, pipeline_id=target.pipeline.id, source_missing=False,
        status=status, reason=reason, warnings=_json(item.warnings),
        reader=item.reader, filled_channels=_json(item.filled), edf_size=item.edf_size,
        edf_mtime_ns=item.edf_mtime_ns, edf_sha256=item.edf_sha256, annotation_path=ann_rel,
        annotation_size=item.annotation_size, annotation_mtime_ns=item.annotation_mtime_ns,
        annotation_sha256=item.annotation_sha256,
        object_key=item.object_key if status != "failed" else None,
        spec_digest=keys.spec_digest(spec),  # for a failed file too: it is retried when the spec changes
        orig_fs=item.orig_fs, duration_s=item.n_samples / spec.fs if item.n_samples else None,
        seizure_s=sum(b - a for a, b in item.events) if status != "failed" else None, updated_at=now,
        **(item.info or recording_info(target.dataset.layout, item.rel_path)),
    )
    if rec is None:
        rec_id = conn.execute(_Sql.insert_recording, values).inserted_primary_key[0]
    else:
        rec_id = rec.id
        if rec.object_key != values["object_key"] or status != "ingested":
            conn.execute(_Sql.delete_windows, {"rec_id": rec_id})
        conn.execute(_Sql.update_recording, {**values, "rec_id": rec_id})
    release_in(conn, target.claim(item.rel_path))
    if rec is not None:  # a new row has no events yet
        conn.execute(_Sql.delete_events, {"rec_id": rec_id})
    if status == "ingested":
        if item.events:
            conn.execute(
                _Sql.insert_events,
                [{"recording_id": rec_id, "start_s": a, "stop_s": b, "event_type": t or None}
                 for (a, b), t in zip(item.events, _types(item), strict=True)],
            )
        rows = [
            {"recording_id": rec_id, "window_set_id": ws_id, "start_sample": int(s),
             "seizure_samples": int(c), "label": int(lab)}
            for ws_id, (starts, counts, labels) in item.windows.items()
            for s, c, lab in zip(starts, counts, labels, strict=True)
        ]
        if rows:
            conn.execute(insert_ignore(conn, Window.__table__), rows)
    return status


def _types(item: Prepared) -> tuple[str, ...]:
    return item.event_types if len(item.event_types) == len(item.events) else ("",) * len(item.events)


def _twin_reason(dataset: str, rel_path: str) -> str:
    return f"same EDF and annotation bytes as {dataset}/{rel_path}; stored and windowed once"


def _twins(conn, pipeline_id: int, edf_sha256, annotation_sha256, statuses=("ingested", "skipped")):
    """Recordings of one pipeline with these EDF and annotation bytes, the windows' owner first: present sources
    before missing ones, then by (dataset name, relative path), so every run (serial or concurrent) agrees."""
    rows = conn.execute(_Sql.twins, {"pipeline_id": pipeline_id, "edf": edf_sha256, "ann": annotation_sha256,
                                     "statuses": list(statuses)}).all()
    return sorted(rows, key=lambda r: (bool(r.source_missing), r.dataset, r.rel_path))


def _twin_status(conn, target: Target, item: Prepared) -> tuple[str, str | None]:
    """A recording whose bytes an ingested twin already holds is registered ``skipped``; ``settle_twins`` at the
    end of the run decides which twin owns the windows."""
    others = [t for t in _twins(conn, target.pipeline.id, item.edf_sha256, item.annotation_sha256, ("ingested",))
              if (t.dataset, t.rel_path) != (target.dataset.name, item.rel_path)]
    if others:
        return "skipped", _twin_reason(others[0].dataset, others[0].rel_path)
    return "ingested", None


def _move_windows(conn, source_id: int, target_id: int) -> None:
    conn.execute(update(Window).where(Window.recording_id == source_id).values(recording_id=target_id))
    conn.execute(update(SeizureEvent).where(SeizureEvent.recording_id == source_id).values(recording_id=target_id))


def _hand_over(conn, store: ObjectStore, pipeline_id: int, rec) -> None:
    """The owner of a twin group changes or fails: its windows (ids kept) and events go to the next twin, which
    also gets, from the stored mask, any window set of the pipeline the owner lacked (e.g. the one this run adds)."""
    heirs = [t for t in _twins(conn, pipeline_id, rec.edf_sha256, rec.annotation_sha256, ("skipped",)) if t.id != rec.id]
    if heirs:
        _move_windows(conn, rec.id, heirs[0].id)
        conn.execute(update(Recording).where(Recording.id == heirs[0].id).values(status="ingested", reason=None))
        _window_from_store(conn, store, heirs[0].id, heirs[0].object_key, _shapes_in(conn, pipeline_id))


def settle_twins(engine: Engine, store: ObjectStore, pipeline_id: int) -> None:
    """Re-decide, for every group of byte-identical recordings of a pipeline, which one owns the windows: the first
    present source by (dataset, relative path). Windows move with their ids; a window set the owner lacks is
    computed from the stored mask."""
    skipped = func.sum(case((Recording.status == "skipped", 1), else_=0))
    shapes = _all_shapes(engine, pipeline_id)
    with writer(engine).begin() as conn:
        groups = conn.execute(
            select(Recording.edf_sha256, Recording.annotation_sha256)
            .where(Recording.pipeline_id == pipeline_id, Recording.status.in_(("ingested", "skipped")))
            .group_by(Recording.edf_sha256, Recording.annotation_sha256)
            .having(or_(func.count() > 1, skipped > 0))).all()
        for edf_sha256, annotation_sha256 in groups:
            members = _twins(conn, pipeline_id, edf_sha256, annotation_sha256)
            owner = members[0]
            for other in members[1:]:
                if other.status == "ingested":
                    held = set(conn.execute(select(Window.window_set_id).where(Window.recording_id == owner.id)
                                            .distinct()).scalars())
                    conn.execute(update(Window).where(Window.recording_id == other.id,
                                                      Window.window_set_id.not_in(held)).values(recording_id=owner.id))
                    conn.execute(delete(Window).where(Window.recording_id == other.id))
                    if conn.execute(select(SeizureEvent.id).where(SeizureEvent.recording_id == owner.id)).first() is None:
                        conn.execute(update(SeizureEvent).where(SeizureEvent.recording_id == other.id)
                                     .values(recording_id=owner.id))
                    conn.execute(delete(SeizureEvent).where(SeizureEvent.recording_id == other.id))
                conn.execute(update(Recording).where(Recording.id == other.id).values(
                    status="skipped", reason=_twin_reason(owner.dataset, owner.rel_path)))
            if owner.status != "ingested":
                conn.execute(update(Recording).where(Recording.id == owner.id).values(status="ingested", reason=None))
            _window_from_store(conn, store, owner.id, owner.object_key, shapes)


def _window_from_store(conn, store: ObjectStore, rec_id: int, object_key: str | None, shapes) -> int:
    """Insert the windows of ``shapes`` a recording lacks, computed from its stored label mask (no EDF is read).
    Returns the number of window sets added."""
    held = set(conn.execute(select(Window.window_set_id).where(Window.recording_id == rec_id).distinct()).scalars())
    todo = tuple(s for s in shapes if s.id not in held)
    if not todo or object_key is None or not store.exists(object_key):
        return 0
    mask = store.read_labels(object_key)
    rows = [{"recording_id": rec_id, "window_set_id": ws_id, "start_sample": int(s), "seizure_samples": int(c),
             "label": int(lab)}
            for ws_id, (starts, counts, labels) in _windows_for(mask, todo).items()
            for s, c, lab in zip(starts, counts, labels, strict=True)]
    if rows:
        conn.execute(insert_ignore(conn, Window.__table__), rows)
    return sum(1 for s in todo if mask.shape[0] >= s.window)


def mark_sources(engine: Engine, dataset: DatasetRef, prefix: str | None, found: set[str]) -> int:
    """Record which recordings under the scanned prefix have their source file (every pipeline's rows). A gone
    source keeps its data and windows; removing it is explicit (``eegcache remove --missing``). Returns how many
    recordings under the prefix now lack their source."""
    if prefix is None:
        return 0
    with writer(engine).begin() as conn:
        rows = conn.execute(select(Recording.id, Recording.rel_path, Recording.source_missing)
                            .where(Recording.dataset_id == dataset.id)).all()
        under = [r for r in rows if not prefix or r.rel_path == prefix or r.rel_path.startswith(prefix.rstrip("/") + "/")]
        for flag in (True, False):
            ids = [r.id for r in under if (r.rel_path not in found) == flag and bool(r.source_missing) != flag]
            for i in range(0, len(ids), 500):
                conn.execute(update(Recording).where(Recording.id.in_(ids[i:i + 500])).values(source_missing=flag))
        return len({r.rel_path for r in under if r.rel_path not in found})


def cover_missing_sources(engine: Engine, store: ObjectStore, target: Target) -> int:
    """Windows of every window set for the dataset's recordings whose source is gone, from their stored masks."""
    shapes = _all_shapes(engine, target.pipeline.id)
    added = 0
    with writer(engine).begin() as conn:
        rows = conn.execute(select(Recording.id, Recording.object_key).where(
            Recording.dataset_id == target.dataset.id, Recording.pipeline_id == target.pipeline.id,
            Recording.status == "ingested", Recording.source_missing.is_(True))).all()
        for rec_id, key in rows:
            added += bool(_window_from_store(conn, store, rec_id, key, shapes))
    return added


class ObjectVanished(RuntimeError):
    """The object a worker reused was collected before it could be registered; prepare it again."""


def _ensure_object(conn, store: ObjectStore, spec: PreprocessSpec, item: Prepared, now: datetime) -> None:
    registered = conn.execute(_Sql.object_key, {"key": item.object_key}).first()
    if registered and item.checksums is None:
        return
    # Inside the write transaction, so gc (which also takes the write lock) cannot remove it under us.
    if not store.exists(item.object_key):
        raise ObjectVanished(item.object_key)
    checksums = item.checksums or store.checksums(item.object_key)
    values = dict(
        label_key=item.label_key, spec_digest=keys.spec_digest(spec.stored()), spec_json=spec.stored().canonical_json(),
        n_channels=item.n_channels, n_samples=item.n_samples, fs=spec.fs, dtype=spec.dtype,
        nbytes=sum(c.size for c in checksums), digest=object_digest(checksums), created_at=now,
    )
    if registered:  # rebuilt by this run (repair): the files on disk are the truth
        conn.execute(delete(ObjectFile).where(ObjectFile.object_key == item.object_key))
        conn.execute(StoredObject.__table__.update().where(StoredObject.key == item.object_key).values(**values))
    else:
        conn.execute(_Sql.insert_object, {"key": item.object_key, **values})
    conn.execute(_Sql.insert_files, [
        {"object_key": item.object_key, "path": c.path, "size": c.size, "sha256": c.sha256} for c in checksums
    ])


def window_shape(engine: Engine, pipeline_id: int, window_s: float, stride_s: float, fs: float) -> WindowShape:
    """The pipeline's window set row, created on first use."""
    window, stride = seconds_to_samples(window_s, fs), seconds_to_samples(stride_s, fs)
    with writer(engine).begin() as conn:
        conn.execute(insert_ignore(conn, WindowSet.__table__).values(
            pipeline_id=pipeline_id, window_s=window_s, stride_s=stride_s, fs=fs, window_samples=window,
            stride_samples=stride))
        ws_id = conn.execute(select(WindowSet.id).where(
            WindowSet.pipeline_id == pipeline_id, WindowSet.window_s == window_s,
            WindowSet.stride_s == stride_s)).scalar_one()
    return WindowShape(ws_id, window, stride)


def _shapes_in(conn, pipeline_id: int) -> tuple[WindowShape, ...]:
    rows = conn.execute(select(WindowSet.id, WindowSet.window_samples, WindowSet.stride_samples)
                        .where(WindowSet.pipeline_id == pipeline_id).order_by(WindowSet.id)).all()
    return tuple(WindowShape(*r) for r in rows)


def _all_shapes(engine: Engine, pipeline_id: int) -> tuple[WindowShape, ...]:
    with engine.connect() as conn:
        return _shapes_in(conn, pipeline_id)


def window_counts(engine: Engine, window_set_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Window.label, func.count()).where(Window.window_set_id == window_set_id).group_by(Window.label)
        ).all()
    counts = Counter({LABELS[code]: n for code, n in rows})
    return {label: counts.get(label, 0) for label in LABELS}


def reingest_recordings(engine: Engine, store: ObjectStore, recording_ids: list[int]) -> list[str]:
    """Rebuild these recordings from their sources with their pipeline's spec (used by repair). Returns the
    failure reasons."""
    failures = []
    for rec_id in recording_ids:
        with engine.connect() as conn:
            row = conn.execute(
                select(Recording.rel_path, Recording.dataset_id, Dataset.name.label("dataset"), Dataset.layout,
                       Dataset.root, Recording.pipeline_id, Pipeline.name.label("pipeline"), Pipeline.spec_json)
                .join(Dataset, Dataset.id == Recording.dataset_id)
                .join(Pipeline, Pipeline.id == Recording.pipeline_id).where(Recording.id == rec_id)).first()
        if row is None:
            continue
        spec = PreprocessSpec.from_dict(json.loads(row.spec_json))
        target = Target(DatasetRef(row.dataset_id, row.dataset, row.layout, Path(row.root)),
                        PipelineRef(row.pipeline_id, row.pipeline, spec))
        task = Task(target.dataset.root / row.rel_path, row.rel_path, store.root, spec,
                    _all_shapes(engine, row.pipeline_id), store_url=store.url, layout=row.layout,
                    root=target.dataset.root)
        item = prepare(task)
        if register(engine, store, target, item) == "failed":
            failures.append(item.reason or str(task.edf))
    return failures
