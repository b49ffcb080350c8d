"""Ingest: EDF tree → preprocessed objects in the store → one index transaction per batch of recordings.

This module is the orchestration: ``plan`` the files that need work, claim them a few at a time (so that concurrent
runs divide the work), have worker processes ``prepare`` them a batch at a time (``eegcache.ops.prepare``), publish
each batch's objects and ``register`` the batch in the parent, the only writer to the index
(``eegcache.ops.register``). A kill at any moment leaves at most an unreferenced object or staging folder, which
the next run reuses or ``gc`` removes.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from eegcache.index.claims import Claims
from eegcache.index.db import open_index
from eegcache.ops.plan import plan
from eegcache.ops.prepare import (  # noqa: F401 - CHANGE_ATTEMPTS re-exported
    CHANGE_ATTEMPTS,
    Prepared,
    Task,
    prepare,
    prepare_batch,
    publish_prepared,
)
from eegcache.ops.register import (  # noqa: F401 - reingest_recordings re-exported
    ObjectVanished,
    Target,
    cover_missing_sources,
    mark_sources,
    register,
    register_many,
    reingest_recordings,
    settle_twins,
    window_counts,
    window_shape,
)
from eegcache.pipeline.names import resolve_pipeline
from eegcache.pipeline.spec import IngestConfig
from eegcache.sources.datasets import layout_and_root, recordings_of, resolve_dataset, scanned_prefix
from eegcache.sources.tree import discover, path_text
from eegcache.store import LocalObjectStore, ObjectStore, open_store
from eegcache.store.owner import NotOwner, require_owner


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
        # A local store's objects are published here, in a thread, while the next batch is prepared: the wait for
        # the disk (the flush) overlaps the workers' computing. Workers publish to a remote store themselves.
        workers_publish = not isinstance(store, LocalObjectStore)
        with Claims(engine, claim_lease_s) as claims, \
                ThreadPoolExecutor(1, thread_name_prefix="eegcache-publish") as publisher:
            replan = lambda batch: plan(engine, store, target, [t.edf for t in batch], requested, True)[0]  # noqa: E731
            previous = None  # the batch before: (pairs, its publication)
            for pairs in _schedule(tasks, config.workers, claims, replan, target, workers_publish):
                publishing = publisher.submit(publish_prepared, store, [i for _, i in pairs if i is not None])
                if previous is not None:
                    _register_and_tally(engine, store, target, summary, bar, *previous)
                previous = (pairs, publishing)
            if previous is not None:
                _register_and_tally(engine, store, target, summary, bar, *previous)
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


def _register_and_tally(engine: Engine, store: ObjectStore, target: Target, summary: IngestSummary, bar,
                        pairs: list[tuple[Task, Prepared | None]], publishing) -> None:
    """Once a batch's objects are published: register it, count it."""
    publishing.result()  # publish_prepared never raises: a recording it could not publish is failed
    statuses = _register_batch(engine, store, target, [(t, i) for t, i in pairs if i is not None])
    for task, item in pairs:
        if item is None:  # another process ingested it meanwhile
            summary.unchanged += 1
        else:
            _tally(summary, task, item, statuses[id(item)], bar)
        bar.update(1)


def _register_batch(engine: Engine, store: ObjectStore, target: Target,
                    pairs: list[tuple[Task, Prepared]]) -> dict[int, str]:
    """Register a batch of prepared recordings in one transaction (``register_many``); when that fails (an index
    error, an object gc collected meanwhile), it is rolled back whole and each recording is registered on its own,
    so that only the one at fault fails. Returns the status recorded for each, by ``id`` of its Prepared."""
    if len(pairs) > 1:
        try:
            statuses = register_many(engine, store, target, [item for _, item in pairs])
            return {id(item): status for (_, item), status in zip(pairs, statuses, strict=True)}
        except (ObjectVanished, SQLAlchemyError, OSError):
            pass
    return {id(item): _register_or_redo(engine, store, target, task, item) for task, item in pairs}


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


def _take(queue: deque, files: int, nbytes: int) -> list[Task]:
    """Up to ``files`` tasks from the front of ``queue``, and only while their EDFs come to under ``nbytes``."""
    batch, size = [], 0
    while queue and len(batch) < files and (not batch or size < nbytes):
        task = queue.popleft()
        batch.append(task)
        try:
            size += task.edf.stat().st_size
        except OSError:  # prepare says what is wrong with it
            pass
    return batch


# A worker prepares a few files at a time, whose objects are published together (``prepare_batch``: one flush of
# the filesystem for the batch): up to this many, and only while they are small (short segments, where the flush is
# a large part of a file's cost); a long recording goes alone, so workers still share a tree of long files evenly.
PREPARE_BATCH_FILES = 8
PREPARE_BATCH_BYTES = 8 << 20


def _schedule(tasks: list[Task], workers: int, claims: Claims, replan, target: Target, publish: bool):
    """Yield lists of (task, Prepared), a batch at a time, for the tasks this process claims and prepares (their
    objects published when ``publish``, else left staged: ``prepare_batch``), and of (task, None) for tasks
    another process finished while this one waited. Tasks claimed elsewhere wait until
    their owner registers them or its claim expires. ``replan(tasks)`` gives the tasks, among these just claimed,
    that still need work."""
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
                    batch = _take(pending, CLAIM_BATCH_FILES, CLAIM_BATCH_BYTES)
                    try:
                        claimed = claims.try_claim_many([target.claim(t.rel_path) for t in batch])
                        mine = [t for t in batch if target.claim(t.rel_path) in claimed]
                        # another process may have finished some of them meanwhile
                        fresh = {t.rel_path: t for t in replan(mine)} if mine else {}
                        if done_elsewhere := [t for t in mine if t.rel_path not in fresh]:
                            claims.release_many([target.claim(t.rel_path) for t in done_elsewhere])
                    except SQLAlchemyError as exc:  # the index cannot be written (disk full...): fail these, go on
                        yield [(task, _failed(task, f"{task.edf.name}: the index is not writable "
                                                    f"({getattr(exc, 'orig', exc)})")) for task in batch]
                        continue
                    waiting.extend(t for t in batch if target.claim(t.rel_path) not in claimed)
                    ready.extend(fresh[t.rel_path] for t in mine if t.rel_path in fresh)
                    if done_elsewhere:
                        yield [(task, None) for task in done_elsewhere]
                    continue
                tasks_now = _take(ready, PREPARE_BATCH_FILES, PREPARE_BATCH_BYTES)
                if pool is None:
                    yield list(zip(tasks_now, prepare_batch(tasks_now, publish), strict=True))
                else:
                    in_flight[pool.submit(prepare_batch, tasks_now, publish)] = tasks_now
            if in_flight:
                done, _ = wait(in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    tasks_done = in_flight.pop(future)
                    yield list(zip(tasks_done, _results(future, tasks_done), strict=True))
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


def _results(future, tasks: list[Task]) -> list[Prepared]:
    try:
        return future.result()
    except BrokenProcessPool:
        return [_failed(task, f"{task.edf.name}: a worker process died while this file was being prepared "
                              "(killed or out of memory); the next run retries it") for task in tasks]
    except Exception as exc:  # noqa: BLE001 - a crashed worker must not end the run
        return [_failed(task, f"{task.edf.name}: worker crashed ({type(exc).__name__}: {exc})") for task in tasks]
