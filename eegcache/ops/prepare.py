"""The worker side of ingest: hash, parse, read, preprocess and publish one recording's object (``prepare``).

It never touches the index: what the parent's one index transaction needs comes back in a ``Prepared``
(``eegcache.ops.register``). Kept apart from the index code so that a worker process, which imports this module to
unpickle its task, loads only what preparing a file needs.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from eegcache.pipeline import keys
from eegcache.pipeline.spec import PreprocessSpec
from eegcache.pipeline.windows import label_codes, seizure_counts, window_starts
from eegcache.sources import bids
from eegcache.sources.annotations import AnnotationError, find_annotation, parse_annotation
from eegcache.sources.annotations import decode as decode_annotation
from eegcache.sources.annotations import read_bytes as read_annotation_bytes
from eegcache.sources.edf import EdfError, read_header, read_recording
from eegcache.sources.tree import is_utf8, parse_path, path_text
from eegcache.store import FileChecksum, Staged, open_store

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
    staged: tuple[Staged, str] | None = None  # its new object, in staging, and its signal key: not yet published


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
SHM = Path("/dev/shm")
SHM_COPY_BYTES = 16 << 20  # sources up to this size are copied to memory (SHM) where it can be written


def _read_dir(in_memory: bool = False) -> Path:
    """This thread's private folder for copies of sources, in $TMPDIR or (``in_memory``) in /dev/shm, made once
    (a folder made and removed per file cost more than copying a short file) and removed when the process that
    made it exits (a forked child makes its own). /dev/shm is RAM: a copy there is no file created on disk, which
    on some filesystems costs as much as copying a short file (bench/RESULTS.md, 2026-12-04)."""
    name = "shm" if in_memory else "held"
    held = getattr(_read_dirs, name, None)
    if held is None or held[0] != os.getpid() or not held[1].is_dir():
        held = (os.getpid(), Path(tempfile.mkdtemp(prefix="eegcache-read-", dir=SHM if in_memory else None)))
        setattr(_read_dirs, name, held)
        atexit.register(_remove_read_dir, *held)
    return held[1]


def _remove_read_dir(pid: int, folder: Path) -> None:
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _private_copy(path: Path):
    """A copy of ``path`` that nobody else writes (same file name, for messages) and the sha256 of its bytes,
    hashed while copying: what the readers parse is exactly what is hashed. A small source is copied to memory
    (/dev/shm) when that can be written and has room, else to $TMPDIR."""
    copy = None
    try:
        if path.stat().st_size <= SHM_COPY_BYTES and os.access(SHM, os.W_OK):
            try:
                copy = _read_dir(in_memory=True) / path.name
                digest = _copy(path, copy)
            except OSError:  # /dev/shm full (a container's is 64 MB), or the source unreadable: tried again below
                if copy is not None:
                    copy.unlink(missing_ok=True)
                copy = None
        if copy is None:
            copy = _read_dir() / path.name
            digest = _copy(path, copy)
        yield copy, digest
    finally:
        if copy is not None:
            copy.unlink(missing_ok=True)


def _copy(path: Path, copy: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src, open(copy, "wb") as dst:
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
    return digest.hexdigest()


# A source up to this size is copied (and hashed while copied) before its object is looked up: one pass over its
# bytes instead of a hash and then a copy, the copy wasted only when the object exists already. A larger one is
# hashed first, so that an existing object costs no copy of it.
COPY_FIRST_BYTES = 64 << 20


def prepare(task: Task) -> Prepared:
    """Hash, parse, read, preprocess and publish one recording. Never raises for bad input (``prepare_batch``)."""
    return prepare_batch([task])[0]


def prepare_batch(tasks: list[Task], publish: bool = True) -> list[Prepared]:
    """Hash, parse, read, preprocess and publish each recording (of one cache); never raises for bad input: a file
    that cannot be prepared is returned failed with its reason, and the others go on.

    The key is always the digest of the bytes that were parsed: the annotation is read once and its bytes are both
    hashed and parsed; the EDF is parsed from a private copy hashed while it was made. A source whose inode, size,
    mtime or ctime changed while it was prepared is prepared again (``CHANGE_ATTEMPTS`` in all), then failed.

    The new objects are written in staging one by one and published together (``publish_prepared``): one flush of
    the filesystem for the batch instead of fsyncs per object, the largest fixed cost of a short file. With
    ``publish`` off they are left in staging (``Prepared.staged``) for the caller to publish: ingest's parent does,
    waiting for the disk while its workers compute."""
    results = []
    signals: dict = {}  # signal key -> (signal, its Prepared): staged, not yet published, reused by a later twin
    for task in tasks:
        results.append(_prepare_one(task, signals))
    if publish:
        publish_prepared(open_store(tasks[0].cache, tasks[0].store_url), results)
    return results


def _prepare_one(task: Task, signals: dict) -> Prepared:
    """One recording, its new object (if any) left in staging (``Prepared.staged``)."""
    changed: SourceChanged | None = None
    for _attempt in range(CHANGE_ATTEMPTS):
        result = Prepared(source_path=path_text(task.edf), rel_path=task.rel_path, status="failed",
                          info=recording_info(task.layout, task.rel_path))
        staged: list[tuple[Staged, str]] = []
        try:
            _prepare(task, result, staged, signals)
            result.status = "ingested"
            result.staged = staged[0] if staged else None
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
            _failed_io(result, exc)
        except MemoryError:
            result.reason = f"{task.edf.name}: out of memory while reading or preprocessing"
            _retry_next_run(result)
        except Exception as exc:  # noqa: BLE001 - a file nobody foresaw must fail alone, never end the run
            result.reason = f"{task.edf.name}: unexpected error while preparing it ({type(exc).__name__}: {exc})"
        finally:
            if result.status != "ingested":
                for s, _ in staged:  # never to be published: what was staged from a failed or changed source
                    shutil.rmtree(s.folder, ignore_errors=True)
        return result
    assert changed is not None
    result = Prepared(source_path=path_text(task.edf), rel_path=task.rel_path, status="failed",
                      info=recording_info(task.layout, task.rel_path))
    result.reason = changed.reason(CHANGE_ATTEMPTS)
    return result


def _failed_io(result: Prepared, exc: OSError) -> None:
    result.status, result.reason = "failed", f"{Path(result.source_path).name}: {exc.strerror or exc}"
    _retry_next_run(result)


def publish_prepared(store, results: list[Prepared]) -> None:
    """Publish the staged objects of prepared recordings together (``ObjectStore.publish``), then record each one's
    signal pointer and checksums; a recording whose object could not be made durable or published fails alone
    (retried by the next run). Never raises."""
    pending = [r for r in results if r.staged is not None]
    if not pending:
        return
    try:
        outcomes = store.publish([r.staged[0] for r in pending])
    except Exception as exc:  # noqa: BLE001 - never end the run; publish removed the staging
        outcomes = [exc] * len(pending)
    for result, done in zip(pending, outcomes, strict=True):
        (staged, signal_key), result.staged = result.staged, None
        try:
            if isinstance(done, Exception):
                raise done
            store.note_signal(signal_key, staged.key)
            result.checksums = done or store.checksums(staged.key)  # None: another writer published it first
        except OSError as exc:
            _failed_io(result, exc)
        except Exception as exc:  # noqa: BLE001
            result.status = "failed"
            result.reason = (f"{Path(result.source_path).name}: unexpected error while storing it "
                             f"({type(exc).__name__}: {exc})")


def _retry_next_run(result: Prepared) -> None:
    """A failure of the machine (I/O error, disk full, permissions, memory), not of the file: recorded without the
    file's size, so the next run reads it again (``_failed_unchanged`` never matches it)."""
    result.edf_size = result.edf_mtime_ns = None


def _prepare(task: Task, result: Prepared, staged: list, signals: dict) -> None:
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
    try:
        ann_path, ast, annotation, spec = _annotation_and_spec(task, result)
    except (EdfError, AnnotationError, bids.BidsError):
        if known is None:
            read_header(task.edf)  # a damaged EDF is named as such, not what is wrong beside it
        raise
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
        mask = _publish_object(task, result, spec, annotation, st, copy, copies, staged, signals)
    # The object (new or reused) is the bytes' own, whatever happens now; but the size and mtime recorded beside
    # the digests must be those of the bytes that were hashed, or a later run would call a changed file unchanged.
    if _stamp(task.edf.stat()) != _stamp(st):
        raise SourceChanged(task.edf)
    if _stamp(ann_path.stat()) != _stamp(ast):
        raise SourceChanged(ann_path, annotation_of=name)
    result.windows = _windows_for(mask, task.shapes)


def _annotation_and_spec(task: Task, result: Prepared):
    """The recording's annotation (path, stat, parsed from the bytes that are hashed) and the spec it is built with
    (BIDS: the notch for its declared power line); fills their fields of ``result``."""
    name = task.edf.name
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
    return ann_path, ast, parse_annotation(ann_path, decode_annotation(ann_path, ann_bytes)), spec


def _publish_object(task: Task, result: Prepared, spec: PreprocessSpec, annotation, st: os.stat_result,
                    copy: Path | None, copies: ExitStack, staged: list, signals: dict) -> np.ndarray:
    """Find or make the recording's object (stored already, or its signal stored or staged in this batch under
    other labels, or read and preprocessed from ``copy``, made here when it was not made before the digest);
    returns its label mask. A new object is left in staging, appended to ``staged`` with its signal key
    (``prepare_batch`` publishes it), and its signal kept in ``signals`` for a later recording of the batch."""
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
    elif signal_key in signals:  # staged by an earlier recording of this batch, not yet published
        signal, earlier = signals[signal_key]
        result.reader, result.orig_fs, result.filled = earlier.reader, earlier.orig_fs, earlier.filled
        result.channel_names = earlier.channel_names
        result.n_channels, result.n_samples = signal.shape
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
        signals[signal_key] = (signal, result)
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
    new = store.stage(result.object_key, signal, mask, attrs)
    if new is not None:
        staged.append((new, signal_key))
    else:  # stored meanwhile by another writer
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
