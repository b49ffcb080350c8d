"""Objects under an fsspec URL (``s3://bucket/prefix``), read and written through zarr's FsspecStore.

There is no atomic rename on an object store, so an object is complete when its ``COMPLETE`` marker exists: the
marker (holding the file checksums) is written after every other file, and readers and the index only trust objects
that have it. Staging stays local, in the cache folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from eegcache.store.base import MARKER, OBJECTS, SIGNALS, ObjectStore
from eegcache.store.layout import FileChecksum, folder_checksums

if TYPE_CHECKING:
    import zarr


class FsspecObjectStore(ObjectStore):
    """Immutable objects under an fsspec URL; ``root`` is the local cache folder that holds the staging."""

    def __init__(self, root: Path, url: str) -> None:
        import fsspec

        super().__init__(root)
        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url)

    def _remote(self, key: str) -> str:
        return f"{self.base}/{OBJECTS}/{key[:2]}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(f"{self._remote(key)}/{MARKER}")

    def _publish(self, key: str, staging: Path) -> bool:
        checksums = folder_checksums(staging)
        target = self._remote(key)
        for c in checksums:
            self.fs.put_file(str(staging / c.path), f"{target}/{c.path}")
        self.fs.pipe_file(f"{target}/{MARKER}", json.dumps([c.__dict__ for c in checksums]).encode())
        return True

    def checksums(self, key: str) -> list[FileChecksum]:
        out = []
        for relpath in self._files(key):
            data = self.read_file(key, relpath)
            out.append(FileChecksum(relpath, len(data), hashlib.sha256(data).hexdigest()))
        return sorted(out, key=lambda c: c.path)

    def _files(self, key: str) -> list[str]:
        root = self._remote(key)
        return sorted(p[len(root) + 1:] for p in self.fs.find(root) if not p.endswith(f"/{MARKER}"))

    def has_folder(self, key: str) -> bool:
        return bool(self.fs.find(self._remote(key)))

    def read_file(self, key: str, relpath: str) -> bytes:
        return self.fs.cat_file(f"{self._remote(key)}/{relpath}")

    def open(self, key: str) -> zarr.Group:
        import zarr
        from zarr.storage import FsspecStore

        protocol = self.url.split("://", 1)[0]
        store = FsspecStore.from_url(f"{protocol}://{self._remote(key)}", read_only=True)
        return zarr.open_group(store, mode="r")

    def remove(self, key: str) -> None:
        if self.fs.exists(self._remote(key)):
            self.fs.rm(self._remote(key), recursive=True)

    def _read_pointer(self, signal_key: str) -> str:
        return self.fs.cat_file(f"{self.base}/{SIGNALS}/{signal_key[:2]}/{signal_key}").decode()

    def note_signal(self, signal_key: str, key: str) -> None:
        self.fs.pipe_file(f"{self.base}/{SIGNALS}/{signal_key[:2]}/{signal_key}", key.encode())

    def object_ages(self, now: float) -> dict[str, float]:
        newest: dict[str, float] = {}
        for path, info in self.fs.find(f"{self.base}/{OBJECTS}", detail=True).items():
            parts = path[len(self.base) + 1:].split("/")
            if len(parts) < 4:
                continue
            modified = info.get("LastModified") or info.get("mtime")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or now)
            newest[parts[2]] = max(newest.get(parts[2], 0.0), stamp)
        return {key: now - stamp for key, stamp in newest.items()}

    def withdraw(self, key: str):
        marker = f"{self._remote(key)}/{MARKER}"
        saved = self.fs.cat_file(marker) if self.fs.exists(marker) else None
        if saved is not None:
            self.fs.rm_file(marker)
        return saved

    def restore(self, key: str, token) -> None:
        if token is not None:
            self.fs.pipe_file(f"{self._remote(key)}/{MARKER}", token)

    def purge(self, key: str, token) -> None:
        self.remove(key)

    def recover_withdrawn(self, registered: set[str]) -> None:
        """Nothing to do: a withdrawn object lacks its marker, so it is unregistered garbage or gets rebuilt."""
