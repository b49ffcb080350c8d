"""Ingest: EDF tree → preprocessed objects in the store → one index transaction per recording.

Worker processes hash, read, preprocess and publish objects (``prepare``); the parent is the only writer to
the index and registers each prepared recording in one transaction (``register``). A kill at any moment leaves
at most an unreferenced object or staging folder, which the next run reuses or ``gc`` removes.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from eegcache import keys
from eegcache.annotations import AnnotationError, find_annotation, parse_annotation
from eegcache.claims import Claims, release_in
from eegcache.edf import EdfError, read_header, read_recording
from eegcache.index.db import open_index, writer
from eegcache.index.models import ObjectFile, Recording, SeizureEvent, StoredObject, Window, WindowSet
from eegcache.index.sql import insert_ignore
from eegcache.labels import clip_events, label_mask
from eegcache.spec import IngestConfig, PreprocessSpec
from eegcache.store import FileChecksum, ObjectStore, object_digest, open_store
from eegcache.tree import discover, is_utf8, parse_path, path_text
from eegcache.windows import LABELS, label_codes, seconds_to_samples, seizure_counts, window_starts


@dataclass(frozen=True)
class WindowShape:
    id: int
    window: int  # samples
    stride: int  # samples


@dataclass(frozen=True)
class Task:
    """What a worker needs; ``known_*`` are digests reused from the index when size and mtime are unchanged."""

    edf: Path
    cache: Path
    spec: PreprocessSpec
    shapes: tuple[WindowShape, ...]
    known_edf_sha256: str | None = None
    known_annotation_sha256: str | None = None
    store_url: str | None = None


@dataclass
class Prepared:
    """A worker's result: everything the index transaction needs, nothing it must re-read."""

    source_path: str
    status: str  # "ingested" or "failed"
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    edf_size: int | None = None
    edf_mtime_ns: int | None = None
    edf_sha256: str | None = None
    annotation_path: str | None = None
    annotation_size: int | None = None
    annotation_mtime_ns: int | None = None
    annotation_sha256: str | None = None
    object_key: str | None = None
    label_key: str | None = None
    reader: str | None = None
    filled: tuple[str, ...] = ()
    orig_fs: float | None = None
    n_samples: int = 0
    n_channels: int = 0
    events: tuple[tuple[float, float], ...] = ()
    windows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    checksums: list[FileChecksum] | None = None
    preprocessed: bool = False


@dataclass
class IngestSummary:
    ingested: int = 0  # preprocessed and stored by this run
    reused: int = 0  # no EDF preprocessed: the object was stored already, or only the labels changed
    unchanged: int = 0  # nothing to do at all
    windows_added: int = 0  # recordings that got a new window set from the stored mask
    failed: int = 0
    skipped: int = 0
    edf_read: int = 0
    window_counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _windows_for(mask: np.ndarray, shapes: tuple[WindowShape, ...]) -> dict:
    out = {}
    for shape in shapes:
        starts = window_starts(mask.shape[0], shape.window, shape.stride)
        counts = seizure_counts(mask, starts, shape.window)
        out[shape.id] = (starts, counts, label_codes(counts, shape.window))
    return out


def prepare(task: Task) -> Prepared:
    """Hash, parse, read, preprocess and publish one recording. Never raises for bad input."""
    src = path_text(task.edf)
    result = Prepared(source_path=src, status="failed")
    name = task.edf.name
    try:
        if not is_utf8(task.edf):
            result.reason = f"{src}: the file name is not valid UTF-8; rename the file"
            return result
        st = task.edf.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device named .edf would block or never end
            result.reason = f"{name}: not a regular file"
            return result
        result.edf_size, result.edf_mtime_ns = st.st_size, st.st_mtime_ns
        if task.known_edf_sha256 is None:
            read_header(task.edf)  # a damaged EDF is named as such before its annotation is looked at
        ann_path = find_annotation(task.edf)
        if ann_path is None:
            result.reason = f"{name}: no annotation file (.csv_bi, .csv, .tse_bi or .tse) beside the EDF"
            return result
        ast = ann_path.stat()
        result.annotation_path = path_text(ann_path)
        result.annotation_size, result.annotation_mtime_ns = ast.st_size, ast.st_mtime_ns
        result.edf_sha256 = task.known_edf_sha256 or keys.file_digest(task.edf)
        result.annotation_sha256 = task.known_annotation_sha256 or keys.file_digest(ann_path)
        annotation = parse_annotation(ann_path)
        result.label_key = keys.label_key(result.annotation_sha256)
        result.object_key = keys.object_key(result.edf_sha256, task.spec, result.label_key)
        store = open_store(task.cache, task.store_url)
        if store.exists(result.object_key):
            group = store.open(result.object_key)
            mask = np.asarray(group["labels"][...])
            _take_attrs(result, group)
            result.events, result.warnings = _clip(annotation, result.n_samples, task.spec.fs)
        else:
            signal_key = keys.signal_key(result.edf_sha256, task.spec)
            donor = store.signal_donor(signal_key)
            if donor is not None:  # the signal is stored under other labels: reuse it, read no EDF
                group = store.open(donor)
                signal = np.asarray(group["signal"][...])
                _take_attrs(result, group)
            else:
                raw = read_recording(task.edf, task.spec.channels, task.spec.missing_electrodes)
                from eegcache.preprocess import preprocess  # scipy.signal: only when there is work
                signal = preprocess(raw.data, raw.fs, task.spec)
                if not np.isfinite(signal).all():
                    raise EdfError(f"{name}: preprocessing produced non-finite values (implausible calibration)")
                result.reader, result.orig_fs, result.filled = raw.reader, raw.fs, raw.filled
                result.n_channels, result.n_samples = signal.shape
                result.preprocessed = True
            result.events, result.warnings = _clip(annotation, result.n_samples, task.spec.fs)
            duration = result.n_samples / task.spec.fs
            if annotation.duration_s is not None and abs(annotation.duration_s - duration) > 1.0:
                result.warnings.append(
                    f"annotation duration {annotation.duration_s:.2f} s differs from the recording's {duration:.2f} s"
                )
            mask = label_mask(result.events, result.n_samples, task.spec.fs)
            attrs = {
                "key": result.object_key, "label_key": result.label_key, "spec": task.spec.to_dict(),
                "channels": list(task.spec.channels), "fs": task.spec.fs, "reader": result.reader,
                "orig_fs": result.orig_fs, "filled_channels": list(result.filled),
                "events": [list(e) for e in result.events],
            }
            store.write(result.object_key, signal, mask, attrs)
            store.note_signal(signal_key, result.object_key)
            result.checksums = store.checksums(result.object_key)
        result.windows = _windows_for(mask, task.shapes)
        result.status = "ingested"
    except (EdfError, AnnotationError) as exc:
        result.reason = str(exc)
    except PermissionError as exc:
        result.reason = f"{name}: permission denied reading {Path(exc.filename or name).name}"
    except OSError as exc:
        result.reason = f"{name}: {exc.strerror or exc}"
    except MemoryError:
        result.reason = f"{name}: out of memory while reading or preprocessing"
    except Exception as exc:  # noqa: BLE001 - a file nobody foresaw must fail alone, never end the run
        result.reason = f"{name}: unexpected error while preparing it ({type(exc).__name__}: {exc})"
    return result


def _take_attrs(result: Prepared, group) -> None:
    """Facts about an object that was made earlier (by this or another run) from its attributes."""
    attrs = group.attrs.asdict()
    result.reader, result.orig_fs = attrs.get("reader"), attrs.get("orig_fs")
    result.filled = tuple(attrs.get("filled_channels", ()))
    result.n_channels, result.n_samples = (int(n) for n in group["signal"].shape)


def _clip(annotation, n_samples: int, fs: float):
    events, warnings = clip_events(annotation.events, n_samples / fs)
    return events, list(warnings)


def _json(value) -> str | None:
    return json.dumps(list(value)) if value else None


def register(engine: Engine, store: ObjectStore, spec: PreprocessSpec, item: Prepared) -> str:
    """Write one prepared recording in ONE transaction. Returns the status that was recorded."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with writer(engine).begin() as conn:
        rec = conn.execute(select(Recording.id, Recording.object_key)
                           .where(Recording.source_path == item.source_path)).first()
        status, reason = item.status, item.reason
        if status == "ingested":
            status, reason = _settle_duplicates(conn, item)
        if status == "ingested":
            _ensure_object(conn, store, spec, item, now)
        values = dict(
            source_path=item.source_path, status=status, reason=reason, warnings=_json(item.warnings),
            reader=item.reader, filled_channels=_json(item.filled), edf_size=item.edf_size,
            edf_mtime_ns=item.edf_mtime_ns, edf_sha256=item.edf_sha256, annotation_path=item.annotation_path,
            annotation_size=item.annotation_size, annotation_mtime_ns=item.annotation_mtime_ns,
            annotation_sha256=item.annotation_sha256,
            object_key=item.object_key if status != "failed" else None,
            spec_digest=keys.spec_digest(spec) if status != "failed" else None,
            orig_fs=item.orig_fs, duration_s=item.n_samples / spec.fs if item.n_samples else None,
            seizure_s=sum(b - a for a, b in item.events) if status != "failed" else None, updated_at=now,
            **parse_path(Path(item.source_path)).__dict__,
        )
        if rec is None:
            rec_id = conn.execute(Recording.__table__.insert().values(**values)).inserted_primary_key[0]
        else:
            rec_id = rec.id
            if rec.object_key != values["object_key"] or status != "ingested":
                conn.execute(delete(Window).where(Window.recording_id == rec_id))
            conn.execute(Recording.__table__.update().where(Recording.id == rec_id).values(**values))
        release_in(conn, item.source_path)
        conn.execute(delete(SeizureEvent).where(SeizureEvent.recording_id == rec_id))
        if status == "ingested":
            if item.events:
                conn.execute(
                    SeizureEvent.__table__.insert(),
                    [{"recording_id": rec_id, "start_s": a, "stop_s": b} for a, b in item.events],
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


def _settle_duplicates(conn, item: Prepared) -> tuple[str, str | None]:
    """Byte-identical recordings (EDF and annotation) at several paths are windowed once: the smallest path
    keeps the windows, whatever order the files were registered in, so concurrent runs agree with serial ones."""
    twins = conn.execute(select(Recording.id, Recording.source_path).where(
        Recording.edf_sha256 == item.edf_sha256,
        Recording.annotation_sha256 == item.annotation_sha256,
        Recording.status == "ingested",
        Recording.source_path != item.source_path,
    )).all()
    first = min([t.source_path for t in twins] + [item.source_path])
    if first != item.source_path:
        return "skipped", f"same EDF and annotation bytes as {first}; stored and windowed once"
    for twin in twins:  # registered earlier, but this path sorts first: they step aside
        conn.execute(delete(Window).where(Window.recording_id == twin.id))
        conn.execute(Recording.__table__.update().where(Recording.id == twin.id).values(
            status="skipped", reason=f"same EDF and annotation bytes as {item.source_path}; stored and windowed once"))
    return "ingested", None


class ObjectVanished(RuntimeError):
    """The object a worker reused was collected before it could be registered; prepare it again."""


def _ensure_object(conn, store: ObjectStore, spec: PreprocessSpec, item: Prepared, now: datetime) -> None:
    registered = conn.execute(select(StoredObject.key).where(StoredObject.key == item.object_key)).first()
    if registered and item.checksums is None:
        return
    # Inside the write transaction, so gc (which also takes the write lock) cannot remove it under us.
    if not store.exists(item.object_key):
        raise ObjectVanished(item.object_key)
    checksums = item.checksums or store.checksums(item.object_key)
    values = dict(
        label_key=item.label_key, spec_digest=keys.spec_digest(spec), spec_json=spec.canonical_json(),
        n_channels=item.n_channels, n_samples=item.n_samples, fs=spec.fs, dtype=spec.dtype,
        nbytes=sum(c.size for c in checksums), digest=object_digest(checksums), created_at=now,
    )
    if registered:  # rebuilt by this run (repair): the files on disk are the truth
        conn.execute(delete(ObjectFile).where(ObjectFile.object_key == item.object_key))
        conn.execute(StoredObject.__table__.update().where(StoredObject.key == item.object_key).values(**values))
    else:
        conn.execute(StoredObject.__table__.insert().values(key=item.object_key, **values))
    conn.execute(ObjectFile.__table__.insert(), [
        {"object_key": item.object_key, "path": c.path, "size": c.size, "sha256": c.sha256} for c in checksums
    ])


def window_shape(engine: Engine, window_s: float, stride_s: float, fs: float) -> WindowShape:
    """The window set's row, created on first use."""
    window, stride = seconds_to_samples(window_s, fs), seconds_to_samples(stride_s, fs)
    with writer(engine).begin() as conn:
        conn.execute(insert_ignore(conn, WindowSet.__table__).values(
            window_s=window_s, stride_s=stride_s, fs=fs, window_samples=window, stride_samples=stride))
        ws_id = conn.execute(select(WindowSet.id).where(
            WindowSet.window_s == window_s, WindowSet.stride_s == stride_s, WindowSet.fs == fs)).scalar_one()
    return WindowShape(ws_id, window, stride)


def _all_shapes(engine: Engine, fs: float) -> list[WindowShape]:
    with engine.connect() as conn:
        rows = conn.execute(select(WindowSet.id, WindowSet.window_samples, WindowSet.stride_samples)
                            .where(WindowSet.fs == fs).order_by(WindowSet.id)).all()
    return [WindowShape(*r) for r in rows]


def plan(
    engine: Engine, store: ObjectStore, edfs: list[Path], config: IngestConfig, requested: WindowShape
) -> tuple[list[Task], int]:
    """Tasks for the files that need work, and the number that need none. Unchanged files (same path, size,
    mtime, annotation and spec) get a windows-only task when the requested window set is new to them."""
    spec = config.spec
    sdigest = keys.spec_digest(spec)
    shapes = tuple(_all_shapes(engine, spec.fs))
    query = select(
        Recording.source_path, Recording.id, Recording.status, Recording.edf_size, Recording.edf_mtime_ns,
        Recording.edf_sha256, Recording.annotation_path, Recording.annotation_size,
        Recording.annotation_mtime_ns, Recording.annotation_sha256, Recording.spec_digest,
        Recording.object_key, StoredObject.n_samples,
    ).outerjoin(StoredObject, StoredObject.key == Recording.object_key)
    have = select(Window.recording_id).where(Window.window_set_id == requested.id).distinct()
    if len(edfs) <= 100:  # re-planning a few files (claims): look up only those, not the whole index
        query = query.where(Recording.source_path.in_([path_text(e) for e in edfs]))
        have = have.where(Window.recording_id.in_(select(Recording.id).where(
            Recording.source_path.in_([path_text(e) for e in edfs]))))
    with engine.connect() as conn:
        known = {r.source_path: r for r in conn.execute(query)}
        have_set = set(conn.execute(have).scalars())
    tasks, unchanged = [], 0
    for edf in edfs:
        row = known.get(path_text(edf))
        reuse: dict = {}
        if row is not None and row.status in ("ingested", "skipped") and row.edf_sha256:
            try:
                st = edf.stat()
                ann = find_annotation(edf)
                ast = ann.stat() if ann else None
            except OSError:
                st = ast = ann = None
            edf_same = st is not None and (st.st_size, st.st_mtime_ns) == (row.edf_size, row.edf_mtime_ns)
            ann_same = ast is not None and path_text(ann) == row.annotation_path and (
                (ast.st_size, ast.st_mtime_ns) == (row.annotation_size, row.annotation_mtime_ns))
            same_spec = row.spec_digest == sdigest
            if edf_same:
                reuse["known_edf_sha256"] = row.edf_sha256
            if edf_same and ann_same:
                reuse["known_annotation_sha256"] = row.annotation_sha256
                covered = (
                    row.status == "skipped" or row.id in have_set
                    or (row.n_samples or 0) < requested.window
                )
                if same_spec and covered and store.exists(row.object_key):
                    unchanged += 1
                    continue
        tasks.append(Task(edf, store.root, spec, shapes, store_url=store.url, **reuse))
    return tasks, unchanged


def ingest(
    src: Path,
    cache: Path,
    config: IngestConfig | None = None,
    *,
    db_url: str | None = None,
    store_url: str | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Ingest every EDF under ``src`` into ``cache``. Bad files are recorded as failed; the run goes on.

    Several processes may run this on one index at once (on one machine or many): files are claimed, so each is
    prepared once, and a dead process's files are taken over when its claims expire."""
    config = config or IngestConfig()
    t0 = time.perf_counter()
    cache = Path(cache)
    edfs = discover(Path(os.path.realpath(src)))  # recordings are named by absolute path, as the kernel resolves it
    engine = open_index(cache, db_url)
    store = open_store(cache, store_url)
    try:
        requested = window_shape(engine, config.window_s, config.stride_s, config.spec.fs)
        tasks, unchanged = plan(engine, store, edfs, config, requested)
        summary = IngestSummary(unchanged=unchanged)
        bar = tqdm(total=len(edfs), initial=unchanged, unit="file", disable=not progress, desc="ingest")
        with Claims(engine) as claims:
            replan = lambda task: plan(engine, store, [task.edf], config, requested)[0]  # noqa: E731
            for task, item in _schedule(tasks, config.workers, claims, replan):
                if item is None:  # another process ingested it meanwhile
                    summary.unchanged += 1
                else:
                    _tally(summary, task, item, _register_or_redo(engine, store, config.spec, task, item), bar)
                bar.update(1)
        bar.close()
        try:
            summary.window_counts = window_counts(engine, requested.id)
        except SQLAlchemyError:  # reported per recording already; the counts are only a courtesy
            summary.window_counts = {}
    finally:
        engine.dispose()
    summary.seconds = time.perf_counter() - t0
    return summary


def _register_or_redo(engine: Engine, store: ObjectStore, spec: PreprocessSpec, task: Task, item: Prepared) -> str:
    """Register a prepared recording. An index error (disk full, I/O error) rolls its transaction back and fails
    this recording only: the run goes on, and the next run retries it."""
    try:
        for _ in range(REGISTER_ATTEMPTS - 1):
            try:
                return register(engine, store, spec, item)
            except ObjectVanished:  # gc collected the object before it was registered: build it again
                item.__dict__.update(prepare(task).__dict__)
                if item.status == "failed":
                    break
        return register(engine, store, spec, item)
    except ObjectVanished:
        item.status = "failed"
        item.reason = f"{Path(item.source_path).name}: its object was collected by gc {REGISTER_ATTEMPTS} times " \
                      "before it could be registered (gc --grace too short?); the next run retries it"
        return "failed"
    except (SQLAlchemyError, OSError) as exc:
        detail = getattr(exc, "orig", None) or exc
        item.status = "failed"
        item.reason = f"{Path(item.source_path).name}: could not be registered in the index ({detail}); nothing of it " \
                      "was recorded and the next run retries it"
        return "failed"


def _tally(summary: IngestSummary, task: Task, item: Prepared, status: str, bar) -> None:
    if status == "failed":
        summary.failed += 1
        summary.failures.append((item.source_path, item.reason or "unknown error"))
        bar.write(f"failed: {item.reason}", file=sys.stderr)
    elif status == "skipped":
        summary.skipped += 1
    elif item.preprocessed:
        summary.ingested += 1
        summary.edf_read += 1
    elif task.known_annotation_sha256 is not None:
        summary.windows_added += 1
    else:
        summary.reused += 1


POLL_S = 0.5
REGISTER_ATTEMPTS = 5


def _schedule(tasks: list[Task], workers: int, claims: Claims, replan):
    """Yield (task, Prepared) for each task this process claims and prepares, and (task, None) for tasks another
    process finished while this one waited. Tasks claimed elsewhere wait until their owner registers them or
    its claim expires."""
    pending = deque(tasks)
    waiting: list[Task] = []
    new_pool = lambda: ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))  # noqa: E731
    # Worker processes take a second or two to start: not worth it for a handful of files (e.g. retried failures).
    pool = new_pool() if workers > 1 and len(tasks) > workers else None
    in_flight: dict = {}
    try:
        while pending or waiting or in_flight:
            while pending and (pool is None or len(in_flight) < workers + 1):
                task = pending.popleft()
                try:
                    claimed = claims.try_claim(path_text(task.edf))
                    fresh = replan(task) if claimed else None  # another process may have finished it meanwhile
                except SQLAlchemyError as exc:  # the index cannot be written (disk full...): fail this file, go on
                    yield task, Prepared(source_path=path_text(task.edf), status="failed",
                                         reason=f"{task.edf.name}: the index is not writable ({getattr(exc, 'orig', exc)})")
                    continue
                if not claimed:
                    waiting.append(task)
                    continue
                if not fresh:
                    claims.release(path_text(task.edf))
                    yield task, None
                    continue
                task = fresh[0]
                if pool is None:
                    yield task, prepare(task)
                else:
                    in_flight[pool.submit(prepare, task)] = task
            if in_flight:
                done, _ = wait(in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    task = in_flight.pop(future)
                    yield task, _result(future, task)
                if pool is not None and any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    # A worker died (killed, out of memory): the tasks it took down are reported failed
                    # (and retried by the next run); a fresh pool carries on with the rest.
                    pool.shutdown(cancel_futures=True)
                    pool = new_pool()
            elif waiting and not pending:
                time.sleep(POLL_S)
                pending.extend(waiting)
                waiting = []
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _result(future, task: Task) -> Prepared:
    try:
        return future.result()
    except BrokenProcessPool:
        return Prepared(source_path=path_text(task.edf), status="failed",
                        reason=f"{task.edf.name}: a worker process died while this file was being prepared "
                               "(killed or out of memory); the next run retries it")
    except Exception as exc:  # noqa: BLE001 - a crashed worker must not end the run
        return Prepared(source_path=path_text(task.edf), status="failed",
                        reason=f"{task.edf.name}: worker crashed ({type(exc).__name__}: {exc})")


def window_counts(engine: Engine, window_set_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Window.label, func.count()).where(Window.window_set_id == window_set_id).group_by(Window.label)
        ).all()
    counts = Counter({LABELS[code]: n for code, n in rows})
    return {label: counts.get(label, 0) for label in LABELS}


def reingest_sources(engine: Engine, store: ObjectStore, sources: list[Path]) -> list[str]:
    """Rebuild the recordings at these paths with the spec their objects were made with (used by repair).
    Returns the failure reasons."""
    failures = []
    for src in sources:
        with engine.connect() as conn:
            spec_json = conn.execute(
                select(StoredObject.spec_json).join(Recording, Recording.object_key == StoredObject.key)
                .where(Recording.source_path == path_text(src))).scalar_one_or_none()
        spec = PreprocessSpec.from_dict(json.loads(spec_json)) if spec_json else PreprocessSpec()
        item = prepare(Task(src, store.root, spec, tuple(_all_shapes(engine, spec.fs)), store_url=store.url))
        if register(engine, store, spec, item) == "failed":
            failures.append(item.reason or str(src))
    return failures
