"""push / pull: copy a cache to another place by content key, objects first, then the index rows.

A remote is another cache folder (its own ``index.sqlite`` and ``objects/``) or an object-store prefix
(``s3://bucket/prefix``) holding ``objects/`` and a copy of the index as ``index.sqlite``. The receiver's index
only ever names objects it already holds: every object is copied into staging, checked file by file against
the sender's sha256s, published, and only then are the rows that refer to it inserted. Objects the receiver
already has are never sent again, and rows merge without duplicates, so an interrupted transfer is resumed by
running it again, and a second run transfers nothing.

The receiving side runs only with the index that owns its store (``eegcache.store.owner``). While a transfer runs it
holds a claim in the receiver's index, so the receiver's gc leaves its copied-but-unregistered objects alone (as it
does an ingest's); and each recording's rows are merged in a transaction that first checks that its object is
still there (gc withdraws objects under the same write lock), copying it again if it is not, so no row ever names
an object the receiver lacks.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from tqdm import tqdm

from eegcache.errors import StateError
from eegcache.index.claims import Claims
from eegcache.index.db import INDEX_FILE, IndexError_, open_index, writer
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
from eegcache.index.query import QueryError, run_query
from eegcache.index.sql import insert_ignore
from eegcache.store import ObjectStore, Staged, open_store
from eegcache.store.owner import require_owner

RETRIES = 2
MERGE_ATTEMPTS = 5  # an object collected before its rows could be merged is copied again, this many times in all


class TransferError(StateError):
    pass


class ObjectGone(RuntimeError):
    """The receiver's object of a recording vanished (collected by a gc) before its rows were merged."""


def _checkpoint(step: str) -> None:
    """Between the copies and the merges (``copied``): a no-op the tests replace to run a gc at that moment."""


@dataclass
class Side:
    engine: Engine
    store: ObjectStore
    travelling: bool = False  # an object-store remote's index, fetched into a temporary folder: the store's own


@dataclass
class TransferSummary:
    objects_sent: int = 0
    objects_skipped: int = 0
    bytes_sent: int = 0
    recordings: int = 0
    conflicts: list[str] = field(default_factory=list)  # same identity, other bytes: skipped unless overwrite
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _is_url(remote: str) -> bool:
    return "://" in remote and not remote.startswith("file://")


@contextmanager
def open_remote(remote: str, *, create: bool):
    """A remote cache as a Side. For an object-store remote the index travels as a file: it is fetched into a
    temporary folder and, when ``create`` (push), uploaded back after the rows are merged."""
    if not _is_url(remote):
        folder = Path(remote.removeprefix("file://"))
        if not create and not (folder / INDEX_FILE).is_file():
            raise TransferError(f"{folder} is not an eegcache cache (no {INDEX_FILE})")
        engine = _open_remote_index(remote, folder)
        try:
            yield Side(engine, open_store(folder))
        finally:
            engine.dispose()
        return
    with tempfile.TemporaryDirectory(prefix="eegcache-remote-") as tmp:
        store = open_store(Path(tmp), remote)
        index_url = f"{store.base}/{INDEX_FILE}"
        if store.fs.exists(index_url):
            store.fs.get_file(index_url, str(Path(tmp) / INDEX_FILE))
        elif not create:
            raise TransferError(f"{remote} holds no eegcache index ({INDEX_FILE})")
        engine = _open_remote_index(remote, Path(tmp))
        try:
            yield Side(engine, store, travelling=True)
            engine.dispose()
            if create:
                snapshot = Path(tmp) / "upload.sqlite"
                _sqlite_snapshot(Path(tmp) / INDEX_FILE, snapshot)
                store.fs.put_file(str(snapshot), index_url)
        finally:
            engine.dispose()


def _open_remote_index(remote: str, folder: Path) -> Engine:
    try:
        return open_index(folder)
    except IndexError_ as exc:
        raise TransferError(f"remote {remote}: {exc}") from None


def _sqlite_snapshot(index: Path, target: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(index)
    try:
        conn.execute("VACUUM INTO ?", (str(target),))
    finally:
        conn.close()


def _selected(src: Side, split: str | None, where: str | None) -> list[int]:
    """Recording ids to transfer: all, or those with windows matching ``--split``/``--where`` (read-only SQL)."""
    with src.engine.connect() as conn:
        if split is None and where is None:
            return list(conn.execute(select(Recording.id)).scalars())
        query = "SELECT DISTINCT r.id FROM recordings r WHERE 1=1"
        params: dict = {}
        if split is not None:
            query += " AND r.split = :split"
            params["split"] = split
        if where is not None:
            query += (" AND r.id IN (SELECT w.recording_id FROM windows w WHERE w.id IN "
                      "(SELECT window_id FROM window_labels WHERE " + where + "))")
        url = src.engine.url.render_as_string(hide_password=False)
        try:
            result = run_query(url, query, params, limit=100_000_000)
        except QueryError as exc:
            raise TransferError(f"--where: {exc}") from None
        return [row[0] for row in result.rows]


def _copy_object(src: Side, dst: Side, key: str, files: list, bar) -> int:
    """Copy one object's files into the receiver's staging, check every sha256, publish. Returns bytes."""
    staging = dst.store._staging(key)
    try:
        total = 0
        for f in files:
            for attempt in range(RETRIES + 1):
                data = src.store.read_file(key, f.path)
                if len(data) == f.size and hashlib.sha256(data).hexdigest() == f.sha256:
                    break
                if attempt == RETRIES:
                    raise TransferError(f"object {key[:12]}: file {f.path} arrived corrupt {RETRIES + 1} times "
                                        "(sha256 mismatch with the sender's index)")
            target = staging / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            total += len(data)
            bar.update(len(data))
        (done,) = dst.store.publish([Staged(key, staging, list(files))])
        if isinstance(done, OSError):
            raise done
        return total
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rows(conn, model, *where):
    return [dict(r._mapping) for r in conn.execute(select(model.__table__).where(*where))]


@dataclass
class Maps:
    """Sender ids → receiver ids, matched by name (datasets, pipelines) and shape (window sets)."""

    datasets: dict[int, int] = field(default_factory=dict)
    dataset_names: dict[int, str] = field(default_factory=dict)
    pipelines: dict[int, int] = field(default_factory=dict)
    window_sets: dict[int, int] = field(default_factory=dict)


def _maps(src: Side, dst: Side, summary: TransferSummary) -> Maps:
    """Datasets and pipelines by name (created on the receiver when new; a dataset keeps the receiver's root),
    then window sets by (pipeline, window, stride). A pipeline of the same name and another spec is a conflict:
    its recordings are not transferred."""
    maps = Maps()
    with src.engine.connect() as conn:
        datasets, pipelines, sets = _rows(conn, Dataset), _rows(conn, Pipeline), _rows(conn, WindowSet)
        samples = {d["id"]: conn.execute(select(Recording.rel_path, Recording.edf_sha256)
                                         .where(Recording.dataset_id == d["id"]).limit(16)).all() for d in datasets}
    with writer(dst.engine).begin() as conn:
        for d in datasets:
            known = conn.execute(select(Dataset.id).where(Dataset.name == d["name"])).scalar_one_or_none()
            if known is None:
                known = _same_tree(conn, samples[d["id"]])
            if known is None:
                known = conn.execute(Dataset.__table__.insert().values(
                    **{k: v for k, v in d.items() if k != "id"})).inserted_primary_key[0]
            maps.datasets[d["id"]] = known
            maps.dataset_names[d["id"]] = d["name"]
        for p in pipelines:
            conn.execute(insert_ignore(conn, Pipeline.__table__).values(**{k: v for k, v in p.items() if k != "id"}))
            mine = conn.execute(select(Pipeline.id, Pipeline.spec_digest).where(Pipeline.name == p["name"])).one()
            if mine.spec_digest != p["spec_digest"]:
                summary.conflicts.append(f"pipeline {p['name']!r} has another preprocessing spec here; its recordings "
                                         "were not transferred (transfer into a cache without it)")
                continue
            maps.pipelines[p["id"]] = mine.id
        for ws in sets:
            if ws["pipeline_id"] not in maps.pipelines:
                continue
            shape = {"pipeline_id": maps.pipelines[ws["pipeline_id"]], "window_s": ws["window_s"],
                     "stride_s": ws["stride_s"]}
            conn.execute(insert_ignore(conn, WindowSet.__table__).values(
                **shape, fs=ws["fs"], window_samples=ws["window_samples"], stride_samples=ws["stride_samples"]))
            maps.window_sets[ws["id"]] = conn.execute(select(WindowSet.id).filter_by(**shape)).scalar_one()
    return maps


def _same_tree(conn, sample) -> int | None:
    """The receiver's dataset holding most of a sample of (relative path, EDF digest), when it holds at least half:
    the sender named the same tree otherwise."""
    if not sample:
        return None
    hits: dict[int, int] = {}
    for rel, digest in sample:
        for ds in conn.execute(select(Recording.dataset_id).where(Recording.rel_path == rel,
                                                                  Recording.edf_sha256 == digest).distinct()).scalars():
            hits[ds] = hits.get(ds, 0) + 1
    best = max(hits.items(), key=lambda kv: kv[1], default=None)
    return best[0] if best and 2 * best[1] >= len(sample) else None


CONTENT = ("edf_sha256", "annotation_sha256", "object_key", "status")


def _merge_recording(src_conn, dst: Side, rec: dict, maps: Maps, overwrite: bool) -> str:
    """Merge one recording by (dataset, relative path, pipeline) with its object rows, events and windows in ONE
    receiver transaction. Returns "merged", or "conflict" when the receiver holds other bytes under that identity
    (kept unless ``overwrite``)."""
    with writer(dst.engine).begin() as conn:
        ident = {"dataset_id": maps.datasets[rec["dataset_id"]], "rel_path": rec["rel_path"],
                 "pipeline_id": maps.pipelines[rec["pipeline_id"]]}
        existing = conn.execute(select(Recording.id, *(getattr(Recording, c) for c in CONTENT)).filter_by(**ident)).first()
        same = existing is not None and all(getattr(existing, c) == rec[c] for c in CONTENT)
        if existing is not None and not same and not overwrite:
            return "conflict"
        key = rec["object_key"]
        if key is not None:
            # Under the write lock, as gc withdraws objects: the object is there now and stays until this commits.
            if not dst.store.exists(key):
                raise ObjectGone(key)
            conn.execute(UnreferencedObject.__table__.delete().where(UnreferencedObject.object_key == key))
            for row in _rows(src_conn, StoredObject, StoredObject.key == key):
                conn.execute(insert_ignore(conn, StoredObject.__table__).values(**row))
            files = _rows(src_conn, ObjectFile, ObjectFile.object_key == key)
            if files:
                conn.execute(insert_ignore(conn, ObjectFile.__table__), files)
        values = {**{k: v for k, v in rec.items() if k != "id"}, **ident}
        if existing is None:
            rec_id = conn.execute(Recording.__table__.insert().values(**values)).inserted_primary_key[0]
        else:
            rec_id = existing.id
            if not same:  # --overwrite: the sender's version of this recording replaces the receiver's rows
                conn.execute(Window.__table__.delete().where(Window.recording_id == rec_id))
                conn.execute(SeizureEvent.__table__.delete().where(SeizureEvent.recording_id == rec_id))
                conn.execute(Recording.__table__.update().where(Recording.id == rec_id).values(**values))
        if not conn.execute(select(SeizureEvent.id).where(SeizureEvent.recording_id == rec_id).limit(1)).first():
            events = [{"recording_id": rec_id, "start_s": e["start_s"], "stop_s": e["stop_s"],
                       "event_type": e.get("event_type")}
                      for e in _rows(src_conn, SeizureEvent, SeizureEvent.recording_id == rec["id"])]
            if events:
                conn.execute(SeizureEvent.__table__.insert(), events)
        windows = [{"recording_id": rec_id, "window_set_id": maps.window_sets[w["window_set_id"]],
                    "start_sample": w["start_sample"], "seizure_samples": w["seizure_samples"], "label": w["label"]}
                   for w in _rows(src_conn, Window, Window.recording_id == rec["id"])]
        if windows:
            conn.execute(insert_ignore(conn, Window.__table__), windows)
    return "merged"


def transfer(src: Side, dst: Side, *, split: str | None = None, where: str | None = None, overwrite: bool = False,
             progress: bool = True, command: str = "transfer", claim_lease_s: float | None = None) -> TransferSummary:
    """Copy the selected recordings' objects the receiver lacks, then their rows, merged by (dataset, relative
    path, pipeline): the same recording built at another path merges, never doubles."""
    require_owner(dst.engine, dst.store, command, travelling=dst.travelling)
    with Claims(dst.engine, claim_lease_s) as claims:  # the receiver's gc leaves unregistered objects alone while this is live
        claims.try_claim(f"transfer:{claims.owner}")
        return _transfer(src, dst, split=split, where=where, overwrite=overwrite, progress=progress)


def _transfer(src: Side, dst: Side, *, split: str | None, where: str | None, overwrite: bool,
              progress: bool) -> TransferSummary:
    from eegcache.ops.register import settle_twins

    t0 = time.perf_counter()
    summary = TransferSummary()
    ids = _selected(src, split, where)
    maps = _maps(src, dst, summary)
    with src.engine.connect() as conn:
        wanted = set(ids)
        recs = [r for r in _rows(conn, Recording) if r["id"] in wanted and r["pipeline_id"] in maps.pipelines]
        keys = sorted({r["object_key"] for r in recs if r["object_key"]})
        files: dict[str, list] = {}
        for row in conn.execute(select(ObjectFile.object_key, ObjectFile.path, ObjectFile.size, ObjectFile.sha256)
                                .where(ObjectFile.object_key.in_(keys))) if keys else []:
            files.setdefault(row.object_key, []).append(row)
        todo = [k for k in keys if not dst.store.exists(k)]
        summary.objects_skipped = len(keys) - len(todo)
        total = sum(f.size for k in todo for f in files.get(k, []))
        bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=f"objects 0/{len(todo)}")
        broken: set[str] = set()

        def copy(key: str) -> bool:
            try:
                summary.bytes_sent += _copy_object(src, dst, key, files.get(key, []), bar)
                summary.objects_sent += 1
                return True
            except (TransferError, OSError) as exc:
                broken.add(key)
                summary.failed.append(str(exc))
                return False

        for i, key in enumerate(todo, 1):
            copy(key)
            bar.set_description(f"objects {i}/{len(todo)}")
        bar.close()
        _checkpoint("copied")
        for rec in recs:
            if rec["object_key"] in broken:
                continue
            for _attempt in range(MERGE_ATTEMPTS):
                try:
                    outcome = _merge_recording(conn, dst, rec, maps, overwrite)
                    break
                except ObjectGone:  # collected meanwhile (a gc that ignores claims, an expired lease): copy again
                    if not copy(rec["object_key"]):
                        outcome = "broken"
                        break
            else:
                outcome = "gone"
                summary.failed.append(
                    f"{maps.dataset_names[rec['dataset_id']]}/{rec['rel_path']}: its object {rec['object_key'][:12]} "
                    f"was collected by a gc {MERGE_ATTEMPTS} times before its rows could be merged; not merged (run "
                    "the transfer again)")
            if outcome == "conflict":
                summary.conflicts.append(
                    f"{maps.dataset_names[rec['dataset_id']]}/{rec['rel_path']}: the receiver holds other bytes under "
                    "this recording; kept (pass --overwrite to replace it)")
                continue
            if outcome == "merged":
                summary.recordings += 1
    for pipeline_id in set(maps.pipelines.values()):
        settle_twins(dst.engine, dst.store, pipeline_id)
    summary.seconds = time.perf_counter() - t0
    return summary


def push(cache: Path, remote: str, *, overwrite: bool = False, db_url: str | None = None,
         store_url: str | None = None, progress: bool = True) -> TransferSummary:
    engine = open_index(cache, db_url)
    try:
        with open_remote(remote, create=True) as dst:
            return transfer(Side(engine, open_store(cache, store_url)), dst, overwrite=overwrite, progress=progress,
                            command="push")
    finally:
        engine.dispose()


def pull(cache: Path, remote: str, *, split: str | None = None, where: str | None = None, overwrite: bool = False,
         db_url: str | None = None, store_url: str | None = None, progress: bool = True,
         claim_lease_s: float | None = None) -> TransferSummary:
    engine = open_index(cache, db_url)
    try:
        with open_remote(remote, create=False) as src:
            return transfer(src, Side(engine, open_store(cache, store_url)), split=split, where=where,
                            overwrite=overwrite, progress=progress, command="pull", claim_lease_s=claim_lease_s)
    finally:
        engine.dispose()
