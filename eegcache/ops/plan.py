"""Which files of a tree need work (``plan``): each file's size, mtime, annotation and spec against its index row,
so that a run over an unchanged tree reads no EDF, and a file that failed and has not changed is not read again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from eegcache.index.models import Recording, SeizureEvent, StoredObject, Window
from eegcache.ops.prepare import Task, WindowShape
from eegcache.ops.register import Target, _all_shapes
from eegcache.pipeline import keys
from eegcache.sources import bids
from eegcache.sources.annotations import find_annotation
from eegcache.sources.tree import path_text
from eegcache.store import ObjectStore


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
