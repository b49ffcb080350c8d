"""The object store: one immutable Zarr v3 group per content key.

- ``layout``: how an object is laid out as Zarr (arrays, chunks, codecs) and the checksums of its files;
- ``base``: the ``ObjectStore`` contract; ``local`` (a folder, atomic rename) and ``remote`` (fsspec URLs, a
  ``COMPLETE`` marker written last) implement it;
- ``reader``: ``WindowReader``, the one path every window read takes;
- ``owner``: which index a store belongs to (``store.json``), so a copied index cannot collect another's objects.
"""

from __future__ import annotations

from pathlib import Path

from eegcache.store.base import (
    MARKER,
    OBJECTS,
    SIGNALS,
    STAGING,
    TRASH,
    ObjectStore,
    Staged,
    age,
    fsync_all,
    pid_alive,
    writer_alive,
)
from eegcache.store.layout import LABEL_CHUNK, SHARD_SAMPLES, SIGNAL_CHUNK, FileChecksum, fsync_tree, object_digest
from eegcache.store.local import LocalObjectStore

__all__ = ["LABEL_CHUNK", "MARKER", "OBJECTS", "SHARD_SAMPLES", "SIGNALS", "SIGNAL_CHUNK", "STAGING", "TRASH",
           "FileChecksum", "LocalObjectStore", "ObjectStore", "Staged", "age", "fsync_all", "fsync_tree",
           "object_digest", "open_store", "pid_alive", "writer_alive"]


def open_store(cache: Path, url: str | None = None) -> ObjectStore:
    """The object store of a cache: its own folder by default, or ``url`` (``file://…`` or an fsspec URL)."""
    url = url or None
    if url is None or url.startswith("file://"):
        return LocalObjectStore(Path(url.removeprefix("file://")) if url else cache)
    from eegcache.store.remote import FsspecObjectStore  # fsspec only for remote stores

    return FsspecObjectStore(cache, url)
