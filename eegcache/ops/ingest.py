"""Ingest: EDF tree → preprocessed objects in the store → one index transaction per recording.

Worker processes hash, read, preprocess and publish objects (``prepare``); the parent is the only writer to
the index and registers each prepared recording in one transaction (``register``). A kill at any moment leaves
at most an unreferenced object or staging folder, which the next run reuses or ``gc`` removes.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, bindparam, case, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from eegcache.index.claims import Claims, release_in
from eegcache.index.db import open_index, writer
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
from eegcache.pipeline import keys
from eegcache.pipeline.names import PipelineRef, resolve_pipeline
from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
from eegcache.pipeline.windows import LABELS, label_codes, seconds_to_samples, seizure_counts, window_starts
from eegcache.sources import bids
from eegcache.sources.annotations import AnnotationError, find_annotation, parse_annotation
from eegcache.sources.annotations import decode as decode_annotation
from eegcache.sources.annotations import read_bytes as read_annotation_bytes
from eegcache.sources.datasets import DatasetRef, layout_and_root, recordings_of, resolve_dataset, scanned_prefix
from eegcache.sources.edf import EdfError, read_header, read_recording
from eegcache.sources.tree import discover, is_utf8, parse_path, path_text
from eegcache.store import FileChecksum, ObjectStore, object_digest, open_store
from eegcache.store.owner import NotOwner, require_owner

if TYPE_CHECKING:
    import numpy as np

# numpy (~0.1 s to import) and eegcache.pipeline.labels (numpy's) are imported where a recording is prepared: a run that finds
# every file unchanged needs neither.


@dataclass(frozen=True)
class WindowShape:
    id: int
    window: int  # samples
    stride: int  # samples


@dataclass(frozen=True)
class Target:
    """Where prepared recordings go: a dataset (for their identity) and a pipeline (for their spec)."""

    dataset: DatasetRef
    pipeline: PipelineRef

    def claim(self, rel_path: str) -> str:
        return f"{self.dataset.id}:{self.pipeline.id}:{rel_path}"


@dataclass(frozen=True)
class Task:
    """What a worker needs; ``known_*`` are digests reused from the index when size and mtime are unchanged. The
    EDF's is reused only while the file still has ``known_edf_stat`` when it is prepared; the annotation is always
    hashed from the bytes that are parsed (its known digest only says the annotation was unchanged at plan time)."""

    edf: Path
    rel_path: str  # relative to the dataset root: the recording's identity with the dataset and pipeline
    cache: Path
    spec: PreprocessSpec
    shapes: tuple[WindowShape, ...]
    known_edf_sha256: str | None = None
    known_annotation_sha256: str | None = None
    known_edf_stat: tuple[int, int] | None = None  # (size, mtime_ns) the known EDF digest was recorded with
    store_url: str | None = None
    layout: str = "folder"  # the dataset's layout: tusz, bids or folder
    root: Path | None = None  # the dataset's root (BIDS: participants.tsv lives there)


@dataclass
class Prepared:
    """A worker's result: everything the index transaction needs, nothing it must re-read."""

    source_path: str  # absolute, as this run saw it (for messages)
    rel_path: str
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
    event_types: tuple[str, ...] = ()  # per event: its label(s), "+"-joined where events of different types merged
    info: dict = field(default_factory=dict)  # the recording's metadata columns (see recording_info)
    spec: PreprocessSpec | None = None  # the spec this recording was built with (the notch resolved)
    windows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    checksums: list[FileChecksum] | None = None
    preprocessed: bool = False
    channel_names: tuple[str, ...] = ()


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
    dataset: str = ""
    pipeline: str = ""
    moved_from: str | None = None  # the dataset's previous root, when this run found the tree at a new one
    sources_missing: int = 0  # recordings under the scanned folder whose source file is gone (data kept)
    failed_unchanged: int = 0  # of ``failed``: failed before, unchanged since, not read again (retry_failed reads them)
    warnings: list[str] = field(default_factory=list)
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


def recording_info(layout: str, rel_path: str) -> dict:
    """The metadata columns of a recording that its path gives: TUSZ split/subject/session/montage/token, or the
    BIDS entities (subject, session, run; the split comes from participants.tsv in ``prepare``)."""
    out = dict(name=None, split=None, subject=None, session=None, montage=None, token=None, run=None,
               reference=None, power_line_hz=None)
    path = Path(rel_path)
    if layout == "bids":
        meta = bids.info(path)
        out.update(name=meta.name, subject=meta.subject, session=meta.session, run=meta.run)
    else:
        out.update(parse_path(path).__dict__)
    return out


def _resolved_spec(spec: PreprocessSpec, power_line_hz: float | None, name: str) -> PreprocessSpec:
    try:
        return spec.for_recording(power_line_hz)
    except ValueError as exc:
        raise EdfError(f"{name}: the notch for its declared power line ({power_line_hz:g} Hz) is not possible "
                       f"with this pipeline ({exc})") from None


CHANGE_ATTEMPTS = 3  # a source that changes while it is prepared is prepared again, then failed with a reason


class SourceChanged(Exception):
    """A source file changed while it was being hashed or read, so its bytes, its key and its recorded size and
    mtime may disagree: nothing prepared from it may be registered."""

    def __init__(self, path: Path, annotation_of: str | None = None) -> None:
        super().__init__(path)
        self.path, self.annotation_of = path, annotation_of

    def reason(self, attempts: int) -> str:
        what = (f"{self.annotation_of}: its annotation {self.path.name}" if self.annotation_of else self.path.name)
        return (f"{what} changed while it was being read ({attempts} attempts); nothing of it was registered "
                "and the next run retries it")


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file is the same file with the same bytes: inode (an atomic replace), size, mtime and ctime
    (an edit in place; ctime cannot be set back by the user)."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _checkpoint(step: str, path: Path) -> None:
    """Between two steps of ``prepare`` (``prepare``, ``annotation-read``, ``edf-hashed``, ``edf-read``): a no-op
    that the tests replace to change a source file at that moment."""


_read_dirs = threading.local()


def _read_dir() -> Path:
    """This thread's private folder for copies of sources, made once (a folder made and removed per file cost more
    than copying a short file) and removed when the process that made it exits (a forked child makes its own)."""
    held = getattr(_read_dirs, "held", None)
    if held is None or held[0] != os.getpid() or not held[1].is_dir():
        held = _read_dirs.held = (os.getpid(), Path(tempfile.mkdtemp(prefix="eegcache-read-")))
        atexit.register(_remove_read_dir, *held)
    return held[1]


def _remove_read_dir(pid: int, folder: Path) -> None:
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _private_copy(path: Path):
    """A copy of ``path`` that nobody else writes (in $TMPDIR, same file name for messages) and the sha256 of its
    bytes, hashed while copying: what the readers parse is exactly what is hashed."""
    copy = _read_dir() / path.name
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as src, open(copy, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
        yield copy, digest.hexdigest()
    finally:
        copy.unlink(missing_ok=True)


# A source up to this size is copied (and hashed while copied) before its object is looked up: one pass over its
# bytes instead of a hash and then a copy, the copy wasted only when the object exists already. A larger one is
# hashed first, so that an existing object costs no copy of it.
COPY_FIRST_BYTES = 64 << 20


def prepare(task: Task) -> Prepared:
    """Hash, parse, read, preprocess and publish one recording. Never raises for bad input.

    The key is always the digest of the bytes that were parsed: the annotation is read once and its bytes are both
    hashed and parsed; the EDF is parsed from a private copy hashed while it was made. A source whose inode, size,
    mtime or ctime changed while it was prepared is prepared again (``CHANGE_ATTEMPTS`` in all), then failed."""
    changed: SourceChanged | None = None
    for _attempt in range(CHANGE_ATTEMPTS):
        result = Prepared(source_path=path_text(task.edf), rel_path=task.rel_path, status="failed",
                          info=recording_info(task.layout, task.rel_path))
        try:
            _prepare(task, result)
            result.status = "ingested"
            return result
        except SourceChanged as exc:
            changed = exc
            # What the index knew of the file no longer holds: hash everything again.
            task = replace(task, known_edf_sha256=None, known_edf_stat=None)
            continue
        except (EdfError, AnnotationError, bids.BidsError) as exc:
            result.reason = str(exc)
        except PermissionError as exc:
            result.reason = f"{task.edf.name}: permission denied reading {Path(exc.filename or task.edf.name).name}"
            _retry_next_run(result)
        except OSError as exc:
            result.reason = f"{task.edf.name}: {exc.strerror or exc}"
            _retry_next_run(result)
        except MemoryError:
            result.reason = f"{task.edf.name}: out of memory while reading or preprocessing"
            _retry_next_run(result)
        except Exception as exc:  # noqa: BLE001 - a file nobody foresaw must fail alone, never end the run
            result.reason = f"{task.edf.name}: unexpected error while preparing it ({type(exc).__name__}: {exc})"
        return result
    assert changed is not None
    result = Prepared(source_path=path_text(task.edf), rel_path=task.rel_path, status="failed",
                      info=recording_info(task.layout, task.rel_path))
    result.reason = changed.reason(CHANGE_ATTEMPTS)
    return result


def _retry_next_run(result: Prepared) -> None:
    """A failure of the machine (I/O error, disk full, permissions, memory), not of the file: recorded without the
    file's size, so the next run reads it again (``_failed_unchanged`` never matches it)."""
    result.edf_size = result.edf_mtime_ns = None


def _prepare(task: Task, result: Prepared) -> None:
    src = result.source_path
    name = task.edf.name
    _checkpoint("prepare", task.edf)
    if not is_utf8(task.edf):
        raise EdfError(f"{src}: the file name is not valid UTF-8; rename the file")
    st = task.edf.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device named .edf would block or never end
        raise EdfError(f"{name}: not a regular file")
    result.edf_size, result.edf_mtime_ns = st.st_size, st.st_mtime_ns
    # The digest the index holds is only the file's while size and mtime are those it was recorded with: a file
    # changed between plan and prepare is hashed again, never recorded with its new stat and its old digest.
    known = task.known_edf_sha256 if task.known_edf_stat == (st.st_size, st.st_mtime_ns) else None
    if known is None:
        read_header(task.edf)  # a damaged EDF is named as such before its annotation is looked at
    ann_path = find_annotation(task.edf)
    if ann_path is None:
        if task.layout == "bids":
            raise EdfError(f"{name}: no {bids.recording_name(task.edf)}_events.tsv beside the EDF")
        raise EdfError(f"{name}: no annotation file (.csv_bi, .csv, .tse_bi or .tse) beside the EDF")
    spec = task.spec
    if task.layout == "bids":
        sidecar = bids.read_sidecar(task.edf)
        result.info.update(reference=sidecar.reference, power_line_hz=sidecar.power_line_hz)
        if result.info["subject"] and task.root is not None:
            result.info["split"] = bids.participant_split(task.root, result.info["subject"])
        spec = _resolved_spec(spec, sidecar.power_line_hz, name)
    result.spec = spec
    ast = ann_path.stat()
    result.annotation_path = path_text(ann_path)
    result.annotation_size, result.annotation_mtime_ns = ast.st_size, ast.st_mtime_ns
    ann_bytes = read_annotation_bytes(ann_path)  # read once: these bytes are hashed and parsed
    result.annotation_sha256 = hashlib.sha256(ann_bytes).hexdigest()
    annotation = parse_annotation(ann_path, decode_annotation(ann_path, ann_bytes))
    _checkpoint("annotation-read", ann_path)
    with ExitStack() as copies:
        copy = None
        if known is None and st.st_size <= COPY_FIRST_BYTES:
            copy, result.edf_sha256 = copies.enter_context(_private_copy(task.edf))
            if _stamp(task.edf.stat()) != _stamp(st):
                raise SourceChanged(task.edf)  # changed while it was copied: the copy may be torn
        else:
            result.edf_sha256 = known or keys.file_digest(task.edf)
        _checkpoint("edf-hashed", task.edf)
        mask = _publish_object(task, result, spec, annotation, st, copy, copies)
    # The object (new or reused) is the bytes' own, whatever happens now; but the size and mtime recorded beside
    # the digests must be those of the bytes that were hashed, or a later run would call a changed file unchanged.
    if _stamp(task.edf.stat()) != _stamp(st):
        raise SourceChanged(task.edf)
    if _stamp(ann_path.stat()) != _stamp(ast):
        raise SourceChanged(ann_path, annotation_of=name)
    result.windows = _windows_for(mask, task.shapes)


def _publish_object(task: Task, result: Prepared, spec: PreprocessSpec, annotation, st: os.stat_result,
                    copy: Path | None, copies: ExitStack) -> np.ndarray:
    """Find or make the recording's object (stored already, or its signal stored under other labels, or read and
    preprocessed from ``copy``, made here when it was not made before the digest); returns its label mask."""
    import numpy as np  # see the imports

    from eegcache.pipeline.labels import label_mask

    name = task.edf.name
    result.label_key = keys.label_key(result.annotation_sha256)
    result.object_key = keys.object_key(result.edf_sha256, spec, result.label_key)
    store = open_store(task.cache, task.store_url)
    if store.exists(result.object_key):
        group = store.open(result.object_key)
        mask = np.asarray(group["labels"][...])
        _take_attrs(result, group)
        result.events, result.event_types, result.warnings = _clip(annotation, result.n_samples, spec.fs)
        return mask
    signal_key = keys.signal_key(result.edf_sha256, spec)
    donor = store.signal_donor(signal_key)
    if donor is not None:  # the signal is stored under other labels: reuse it, read no EDF
        group = store.open(donor)
        signal = np.asarray(group["signal"][...])
        _take_attrs(result, group)
    else:
        if copy is None:
            copy, digest = copies.enter_context(_private_copy(task.edf))
            if digest != result.edf_sha256 or _stamp(task.edf.stat()) != _stamp(st):
                raise SourceChanged(task.edf)  # the bytes about to be parsed are not those hashed
        raw = read_recording(copy, spec.channels, spec.missing_electrodes, spec.montage)
        copies.close()  # parsed: the copy is not needed any more
        _checkpoint("edf-read", task.edf)
        from eegcache.pipeline.preprocess import preprocess  # scipy.signal: only when there is work
        signal = preprocess(raw.data, raw.fs, spec)
        if not np.isfinite(signal).all():
            raise EdfError(f"{name}: preprocessing produced non-finite values (implausible calibration)")
        result.reader, result.orig_fs, result.filled = raw.reader, raw.fs, raw.filled
        result.channel_names = raw.names
        result.n_channels, result.n_samples = signal.shape
        result.preprocessed = True
    result.events, result.event_types, result.warnings = _clip(annotation, result.n_samples, spec.fs)
    duration = result.n_samples / spec.fs
    if annotation.duration_s is not None and abs(annotation.duration_s - duration) > 1.0:
        result.warnings.append(
            f"annotation duration {annotation.duration_s:.2f} s differs from the recording's {duration:.2f} s"
        )
    mask = label_mask(result.events, result.n_samples, spec.fs)
    attrs = {
        "key": result.object_key, "label_key": result.label_key, "spec": spec.stored().to_dict(),
        "channels": list(result.channel_names or spec.channels), "fs": spec.fs, "reader": result.reader,
        "orig_fs": result.orig_fs, "filled_channels": list(result.filled),
        "events": [list(e) for e in result.events],
    }
    if spec.montage != "referential":
        attrs["montage"] = spec.montage
    if result.info.get("power_line_hz") is not None:  # what the recording declared, and the notch it got
        attrs["power_line_hz"] = result.info["power_line_hz"]
        attrs["notch_hz"] = list(spec.notch_hz)
    store.write(result.object_key, signal, mask, attrs)
    store.note_signal(signal_key, result.object_key)
    result.checksums = store.checksums(result.object_key)
    return mask


def _take_attrs(result: Prepared, group) -> None:
    """Facts about an object that was made earlier (by this or another run) from its attributes."""
    attrs = group.attrs.asdict()
    result.reader, result.orig_fs = attrs.get("reader"), attrs.get("orig_fs")
    result.filled = tuple(attrs.get("filled_channels", ()))
    result.n_channels, result.n_samples = (int(n) for n in group["signal"].shape)


def _clip(annotation, n_samples: int, fs: float):
    from eegcache.pipeline.labels import clip_events  # see the imports

    events, warnings = clip_events(annotation.events, n_samples / fs)
    return events, annotation.clipped_types(events, n_samples / fs), [*annotation.warnings, *warnings]


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
    spec = target.pipeline.spec
    now = datetime.now(UTC).replace(tzinfo=None)
    with writer(engine).begin() as conn:
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


def plan(
    engine: Engine, store: ObjectStore, target: Target, edfs: list[Path], requested: WindowShape,
    retry_failed: bool = False,
) -> tuple[list[Task], int, list[tuple[str, str]]]:
    """Tasks for the files that need work, the number that need none, and the files that failed before and have
    not changed since (not read again unless ``retry_failed``: (path, the recorded reason)). Unchanged files (same
    relative path, size, mtime, annotation and spec) get a windows-only task when the requested window set is new
    to them."""
    spec = target.pipeline.spec
    sdigest = keys.spec_digest(spec)
    shapes = _all_shapes(engine, target.pipeline.id)
    rels = {edf: target.dataset.rel_path(edf) for edf in edfs}
    mine = (Recording.dataset_id == target.dataset.id, Recording.pipeline_id == target.pipeline.id)
    query = select(
        Recording.rel_path, Recording.id, Recording.status, Recording.edf_size, Recording.edf_mtime_ns,
        Recording.edf_sha256, Recording.annotation_path, Recording.annotation_size,
        Recording.annotation_mtime_ns, Recording.annotation_sha256, Recording.spec_digest,
        Recording.object_key, StoredObject.n_samples, Recording.updated_at, Recording.reason,
    ).outerjoin(StoredObject, StoredObject.key == Recording.object_key).where(*mine)
    have = select(Window.recording_id).where(Window.window_set_id == requested.id).distinct()
    # Events registered before their types were stored (schema < 0006): re-read the annotation (no EDF) to type them.
    untyped_q = (select(SeizureEvent.recording_id).join(Recording, Recording.id == SeizureEvent.recording_id)
                 .where(*mine, SeizureEvent.event_type.is_(None)).distinct())
    if len(edfs) <= 100:  # re-planning a few files (claims): look up only those, not the whole index
        query = query.where(Recording.rel_path.in_(list(rels.values())))
        have = have.where(Window.recording_id.in_(select(Recording.id).where(
            *mine, Recording.rel_path.in_(list(rels.values())))))
    with engine.connect() as conn:
        known = {r.rel_path: r for r in conn.execute(query)}
        have_set = set(conn.execute(have).scalars())
        untyped = set(conn.execute(untyped_q).scalars())
    tasks, unchanged, failed_before = [], 0, []
    for edf in edfs:
        row = known.get(rels[edf])
        reuse: dict = {}
        if (row is not None and row.status == "failed" and not retry_failed
                and _failed_unchanged(target, edf, row, sdigest)):
            failed_before.append((path_text(edf), row.reason or "failed before"))
            continue
        if row is not None and row.status in ("ingested", "skipped") and row.edf_sha256:
            try:
                st = edf.stat()
                ann = find_annotation(edf)
                ast = ann.stat() if ann else None
            except OSError:
                st = ast = ann = None
            edf_same = st is not None and (st.st_size, st.st_mtime_ns) == (row.edf_size, row.edf_mtime_ns)
            ann_same = ast is not None and target.dataset.rel_path(ann) == row.annotation_path and (
                (ast.st_size, ast.st_mtime_ns) == (row.annotation_size, row.annotation_mtime_ns))
            same_spec = row.spec_digest == sdigest
            if edf_same:
                reuse["known_edf_sha256"] = row.edf_sha256
                reuse["known_edf_stat"] = (row.edf_size, row.edf_mtime_ns)
            if edf_same and ann_same:
                reuse["known_annotation_sha256"] = row.annotation_sha256
                covered = (
                    row.status == "skipped" or row.id in have_set
                    or (row.n_samples or 0) < requested.window
                )
                fresh = row.id not in untyped and not (
                    target.dataset.layout == "bids" and _bids_sidecars_newer(edf, target.dataset.root, row.updated_at))
                if same_spec and covered and fresh and store.exists(row.object_key):
                    unchanged += 1
                    continue
        tasks.append(Task(edf, rels[edf], store.root, spec, shapes, store_url=store.url,
                          layout=target.dataset.layout, root=target.dataset.root, **reuse))
    return tasks, unchanged, failed_before


def _failed_unchanged(target: Target, edf: Path, row, sdigest: str) -> bool:
    """A file that failed with this spec and whose EDF and annotation are as they were then: reading it again
    would fail again. Failures the next run must retry (a worker died, the index was not writable) are recorded
    without the file's size, so they never match."""
    if row.edf_size is None or row.spec_digest != sdigest:
        return False
    try:
        st = edf.stat()
        ann = find_annotation(edf)
        ast = ann.stat() if ann else None
    except OSError:
        return False
    if (st.st_size, st.st_mtime_ns) != (row.edf_size, row.edf_mtime_ns):
        return False
    if target.dataset.layout == "bids" and _bids_sidecars_newer(edf, target.dataset.root, row.updated_at):
        return False  # a sidecar (participants.tsv, _eeg.json) was fixed since
    if ann is None:
        return row.annotation_path is None
    return target.dataset.rel_path(ann) == row.annotation_path and \
        (ast.st_size, ast.st_mtime_ns) == (row.annotation_size, row.annotation_mtime_ns)


def _bids_sidecars_newer(edf: Path, root: Path, registered: datetime | None) -> bool:
    """Whether the recording's ``_eeg.json`` or the dataset's ``participants.tsv`` changed after it was registered
    (they set its notch and its split; their bytes are not part of the annotation digest)."""
    if registered is None:
        return True
    since = registered.replace(tzinfo=UTC).timestamp()
    for path in (bids.sidecar_path(edf), root / bids.PARTICIPANTS):
        try:
            if path.stat().st_mtime > since:
                return True
        except OSError:
            continue
    return False


def ingest(
    src: Path,
    cache: Path,
    config: IngestConfig | None = None,
    *,
    db_url: str | None = None,
    store_url: str | None = None,
    progress: bool = True,
    claim_lease_s: float | None = None,
) -> IngestSummary:
    """Ingest every EDF under ``src`` into ``cache`` as one dataset, with one pipeline. Bad files are recorded as
    failed; the run goes on.

    Several processes may run this on one index at once (on one machine or many): files are claimed, so each is
    prepared once, and a dead process's files are taken over when its claims expire."""
    config = config or IngestConfig()
    t0 = time.perf_counter()
    cache = Path(cache)
    src = Path(os.path.realpath(src))  # the folder the user named, as the kernel resolves it
    edfs = recordings_of(*layout_and_root(src, config.layout), discover(src))
    engine = open_index(cache, db_url)
    store = open_store(cache, store_url)
    try:
        try:  # a store without identity is bound to the index that first ingests into it (eegcache.store.owner)
            require_owner(engine, store, "ingest")
        except NotOwner:  # ingest only adds objects: it does not need to own the store
            pass
        pipeline = resolve_pipeline(engine, config)
        target = Target(resolve_dataset(engine, src, config.dataset, edfs, config.layout), pipeline)
        requested = window_shape(engine, pipeline.id, config.window_s, config.stride_s, pipeline.spec.fs)
        tasks, unchanged, failed_before = plan(engine, store, target, edfs, requested, config.retry_failed)
        summary = IngestSummary(unchanged=unchanged, dataset=target.dataset.name, pipeline=pipeline.name,
                                moved_from=target.dataset.moved_from, failed=len(failed_before),
                                failed_unchanged=len(failed_before), failures=list(failed_before))
        bar = tqdm(total=len(edfs), initial=unchanged + len(failed_before), unit="file", disable=not progress,
                   desc="ingest")
        with Claims(engine, claim_lease_s) as claims:
            replan = lambda batch: plan(engine, store, target, [t.edf for t in batch], requested, True)[0]  # noqa: E731
            for task, item in _schedule(tasks, config.workers, claims, replan, target):
                if item is None:  # another process ingested it meanwhile
                    summary.unchanged += 1
                else:
                    _tally(summary, task, item, _register_or_redo(engine, store, target, task, item), bar)
                bar.update(1)
        bar.close()
        try:
            summary.sources_missing = mark_sources(engine, target.dataset, scanned_prefix(target.dataset, src),
                                                   {target.dataset.rel_path(e) for e in edfs})
            summary.windows_added += cover_missing_sources(engine, store, target)
            settle_twins(engine, store, pipeline.id)
        except (SQLAlchemyError, OSError) as exc:  # every recording is registered; the next run settles these
            summary.warnings.append(f"could not update source presence and twin ownership in the index "
                                    f"({getattr(exc, 'orig', None) or exc}); the next ingest does it")
        try:
            summary.window_counts = window_counts(engine, requested.id)
        except SQLAlchemyError:  # reported per recording already; the counts are only a courtesy
            summary.window_counts = {}
    finally:
        engine.dispose()
    summary.seconds = time.perf_counter() - t0
    return summary


def _register_or_redo(engine: Engine, store: ObjectStore, target: Target, task: Task, item: Prepared) -> str:
    """Register a prepared recording. An index error (disk full, I/O error) rolls its transaction back and fails
    this recording only: the run goes on, and the next run retries it."""
    try:
        for _ in range(REGISTER_ATTEMPTS - 1):
            try:
                return register(engine, store, target, item)
            except ObjectVanished:  # gc collected the object before it was registered: build it again
                item.__dict__.update(prepare(task).__dict__)
                if item.status == "failed":
                    break
        return register(engine, store, target, item)
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


def _failed(task: Task, reason: str) -> Prepared:
    return Prepared(source_path=path_text(task.edf), rel_path=task.rel_path, status="failed", reason=reason)


# Files are claimed a few at a time, in one transaction: up to this many, and only as many as make about a second of
# work (by size), so that on a tree of long files concurrent processes still divide the work file by file.
CLAIM_BATCH_FILES = 32
CLAIM_BATCH_BYTES = 16 << 20


def _claim_batch(pending: deque) -> list[Task]:
    batch, size = [], 0
    while pending and len(batch) < CLAIM_BATCH_FILES and (not batch or size < CLAIM_BATCH_BYTES):
        task = pending.popleft()
        batch.append(task)
        try:
            size += task.edf.stat().st_size
        except OSError:  # prepare says what is wrong with it
            pass
    return batch


def _schedule(tasks: list[Task], workers: int, claims: Claims, replan, target: Target):
    """Yield (task, Prepared) for each task this process claims and prepares, and (task, None) for tasks another
    process finished while this one waited. Tasks claimed elsewhere wait until their owner registers them or
    its claim expires. ``replan(tasks)`` gives the tasks, among these just claimed, that still need work."""
    pending = deque(tasks)
    ready: deque[Task] = deque()  # claimed by this process and re-planned, not started yet
    waiting: list[Task] = []
    new_pool = lambda: ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))  # noqa: E731
    # Worker processes take a second or two to start: not worth it for a handful of files (e.g. retried failures).
    pool = new_pool() if workers > 1 and len(tasks) > workers else None
    in_flight: dict = {}
    try:
        while pending or ready or waiting or in_flight:
            while (ready or pending) and (pool is None or len(in_flight) < workers + 1):
                if not ready:
                    batch = _claim_batch(pending)
                    try:
                        claimed = claims.try_claim_many([target.claim(t.rel_path) for t in batch])
                        mine = [t for t in batch if target.claim(t.rel_path) in claimed]
                        # another process may have finished some of them meanwhile
                        fresh = {t.rel_path: t for t in replan(mine)} if mine else {}
                        if done_elsewhere := [t for t in mine if t.rel_path not in fresh]:
                            claims.release_many([target.claim(t.rel_path) for t in done_elsewhere])
                    except SQLAlchemyError as exc:  # the index cannot be written (disk full...): fail these, go on
                        for task in batch:
                            yield task, _failed(task, f"{task.edf.name}: the index is not writable "
                                                      f"({getattr(exc, 'orig', exc)})")
                        continue
                    waiting.extend(t for t in batch if target.claim(t.rel_path) not in claimed)
                    for task in mine:
                        if task.rel_path in fresh:
                            ready.append(fresh[task.rel_path])
                        else:
                            yield task, None
                    continue
                task = ready.popleft()
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
            elif waiting and not pending and not ready:
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
        return _failed(task, f"{task.edf.name}: a worker process died while this file was being prepared "
                             "(killed or out of memory); the next run retries it")
    except Exception as exc:  # noqa: BLE001 - a crashed worker must not end the run
        return _failed(task, f"{task.edf.name}: worker crashed ({type(exc).__name__}: {exc})")


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
