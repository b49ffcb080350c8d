"""The handle a notebook or training script holds: ``eegcache.open(path)``. Its methods are the CLI's commands.

One object owns the index engine and the store location, as ``sqlite_utils.Database`` or a Hugging Face dataset
does; the CLI and the trainer are thin clients of the same functions. Settings come as arguments only: environment
variables (``EEGCACHE_DB``...) are the CLI's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from eegcache.index.db import INDEX_FILE, open_index, open_index_for_reading


class Cache:
    """A cache folder (``index.sqlite`` + ``objects/``), or any index URL (``db``) and object store (``store``).

    The index is opened on first use: for reading only when the cache is not writable by this user (see README,
    "Read-only caches"); created and migrated by the first ``ingest`` otherwise."""

    def __init__(self, path: str | Path, *, db: str | None = None, store: str | None = None) -> None:
        self.path = Path(path)
        self.db = db
        self.store = store
        self._engine: Engine | None = None

    # -- plumbing -------------------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            if self.db is None and not (self.path / INDEX_FILE).is_file():
                from eegcache.selection import SelectionError

                raise SelectionError(f"{self.path} is not an eegcache cache (no {INDEX_FILE}); ingest something first")
            self._engine = open_index_for_reading(self.path, self.db)
        return self._engine

    @property
    def index(self) -> str:
        """What ``eegcache.index.query`` reads: the SQLite file, or the server URL."""
        return self.db if self.db is not None else str(self.path / INDEX_FILE)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<eegcache.Cache {self.path}{' db=' + self.db if self.db else ''}>"

    # -- the commands ---------------------------------------------------------------------------------------

    def ingest(self, src: str | Path, *, window_s: float | None = None, stride_s: float | None = None,
               workers: int | None = None, pipeline: str | None = None, dataset: str | None = None,
               replace: bool = False, retry_failed: bool = False, config: str | Path | None = None,
               progress: bool = False, claim_lease_s: float | None = None, **preprocess: Any):
        """``eegcache ingest``. ``preprocess`` settings (``fs=200.0``, ``dtype="float16"``...) and ``config`` (a TOML
        file) mean what the flags and ``--config`` mean: settings not given are the pipeline's stored ones."""
        from eegcache.ops.ingest import ingest
        from eegcache.pipeline.spec import load_config

        settings = load_config(Path(config) if config else None, {
            "window": window_s, "stride": stride_s, "workers": workers, "pipeline": pipeline, "dataset": dataset,
            "replace": replace or None, "retry_failed": retry_failed or None, **preprocess})
        self.close()  # ingest opens (and may create or migrate) the index itself
        return ingest(Path(src), self.path, settings, db_url=self.db, store_url=self.store, progress=progress,
                      claim_lease_s=claim_lease_s)

    def stats(self, pipeline: str | None = None) -> dict:
        """``eegcache stats --json``."""
        from eegcache.ops.stats import stats

        return stats(self.engine, self.path, pipeline)

    def sql(self, query: str, params: dict | None = None, *, limit: int = 1000, timeout_s: float = 30.0):
        """``eegcache sql``: one read-only statement; ``.columns``, ``.rows``, ``.truncated``."""
        from eegcache.index.query import run_query

        self.engine  # noqa: B018 - upgrades an older schema (when writable) so the views exist
        return run_query(self.index, query, params or {}, limit=limit, timeout_s=timeout_s)

    def verify(self, *, repair: bool = False):
        """``eegcache verify [--repair]``; returns the report after the repair when one was asked for."""
        from eegcache.ops.repair import repair as run_repair
        from eegcache.ops.verify import verify

        engine = open_index(self.path, self.db)
        try:
            report = verify(engine, self.path, self.store)
            if repair and report.problems:
                run_repair(engine, self.path, report, self.store)
                report = verify(engine, self.path, self.store)
            return report
        finally:
            engine.dispose()

    def gc(self, *, grace_s: float = 3600.0, dry_run: bool = False):
        """``eegcache gc``."""
        from eegcache.ops.gc import gc

        engine = open_index(self.path, self.db)
        try:
            return gc(engine, self.path, grace_s=grace_s, dry_run=dry_run, store_url=self.store)
        finally:
            engine.dispose()

    def remove(self, *, missing: bool = False, dataset: str | None = None, pipeline: str | None = None,
               dry_run: bool = False):
        """``eegcache remove``."""
        from eegcache.ops.remove import remove
        from eegcache.store import open_store

        engine = open_index(self.path, self.db)
        try:
            return remove(engine, open_store(self.path, self.store), dataset=dataset, pipeline=pipeline,
                          missing=missing, dry_run=dry_run)
        finally:
            engine.dispose()

    def push(self, remote: str, *, overwrite: bool = False, progress: bool = False):
        """``eegcache push``."""
        from eegcache.ops.transfer import push

        return push(self.path, remote, overwrite=overwrite, db_url=self.db, store_url=self.store, progress=progress)

    def pull(self, remote: str, *, split: str | None = None, where: str | None = None, overwrite: bool = False,
             progress: bool = False, claim_lease_s: float | None = None):
        """``eegcache pull``."""
        from eegcache.ops.transfer import pull

        self.close()
        return pull(self.path, remote, split=split, where=where, overwrite=overwrite, db_url=self.db,
                    store_url=self.store, progress=progress, claim_lease_s=claim_lease_s)

    def windows(self, split: str | None = None, window_s: float = 60.0, stride_s: float = 60.0, *,
                pipeline: str | None = None, dataset: str | None = None, where: str | None = None,
                params: dict | None = None):
        """A :class:`~eegcache.selection.WindowSelection`: the windows of one window set of one pipeline (the only
        one when ``pipeline`` is None), of a split and a dataset when given, matching ``where`` (SQL over
        ``window_labels``, with ``:name`` placeholders bound from ``params``)."""
        from eegcache.selection import WindowSelection

        return WindowSelection(self.engine, index=self.index, window_s=window_s, stride_s=stride_s, split=split,
                               pipeline=pipeline, dataset=dataset, where=where, params=params, name=str(self.path),
                               store=(self.path, self.store))

    def reader(self, backend: str | None = None):
        """The store's window reader (see ``eegcache.torch.WindowDataset``)."""
        from eegcache.store import open_store

        return open_store(self.path, self.store).reader(backend)


def open(path: str | Path, *, db: str | None = None, store: str | None = None) -> Cache:  # noqa: A001 - the API name
    """Open a cache: ``with eegcache.open("demo/cache") as cache: ...``."""
    return Cache(path, db=db, store=store)
