"""Objects in a local folder (the cache folder by default), published by atomic rename.

Layout under the root::

    objects/<k[:2]>/<k>/            one object's Zarr group
    signals/<s[:2]>/<s>             signal pointer: the key of an object holding signal key s
    staging/<k>.<pid>.<random>/     objects being written; never read, removed by gc after a grace period
    trash/<k>.<pid>                 objects gc withdrew in its open transaction

An object is written completely in ``staging/``, made durable (``base.make_durable``: a syncfs of the filesystem, or
an fsync of every file and folder), and the folder is renamed into ``objects/``: a folder in ``objects/`` is always
complete; whether it is *referenced* is the index's business.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from eegcache.store.base import OBJECTS, SIGNALS, TRASH, ObjectStore, age, make_durable
from eegcache.store.layout import FileChecksum, folder_checksums, fsync_dir

if TYPE_CHECKING:
    import zarr


class LocalObjectStore(ObjectStore):
    """Immutable objects in a local folder."""

    def path(self, key: str) -> Path:
        return self.root / OBJECTS / key[:2] / key

    def exists(self, key: str) -> bool:
        return (self.path(key) / "zarr.json").is_file()

    def _publish(self, key: str, staging: Path) -> bool:
        final = self.path(key)
        try:
            try:
                os.rename(staging, final)
            except FileNotFoundError:  # the first object under this prefix: make objects/<k[:2]>, durably
                final.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(final.parent.parent)
                os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and self.exists(key):
                return False
            raise
        return True

    def _settle(self, keys: list[str]) -> dict[str, OSError]:
        """Flush the objects/<k[:2]> folders the renames changed (``make_durable``)."""
        errors = make_durable(sorted({self.path(k).parent for k in keys}), below=False)
        return {k: errors[self.path(k).parent] for k in keys if self.path(k).parent in errors}

    def checksums(self, key: str) -> list[FileChecksum]:
        return folder_checksums(self.path(key))

    def has_folder(self, key: str) -> bool:
        return self.path(key).is_dir()

    def read_file(self, key: str, relpath: str) -> bytes:
        return (self.path(key) / relpath).read_bytes()

    def open(self, key: str) -> zarr.Group:
        import zarr
        from zarr.storage import LocalStore

        return zarr.open_group(LocalStore(self.path(key), read_only=True), mode="r")

    def remove(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def _pointer(self, signal_key: str) -> Path:
        return self.root / SIGNALS / signal_key[:2] / signal_key

    def _read_pointer(self, signal_key: str) -> str:
        return self._pointer(signal_key).read_text().strip()

    def note_signal(self, signal_key: str, key: str) -> None:
        target = self._pointer(signal_key)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            tmp.write_text(key)
        except FileNotFoundError:  # the first pointer under this prefix
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(key)
        os.replace(tmp, target)

    def object_ages(self, now: float) -> dict[str, float]:
        ages = {}
        for p in (self.root / OBJECTS).glob("??/*"):
            try:
                ages[p.name] = age(p, now)
            except FileNotFoundError:  # withdrawn by another gc since the listing
                continue
        return ages

    def withdraw(self, key: str) -> Path:
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        target = trash / f"{key}.{os.getpid()}"
        os.rename(self.path(key), target)
        return target

    def restore(self, key: str, token: Path) -> None:
        os.rename(token, self.path(key))

    def purge(self, key: str, token: Path) -> None:
        shutil.rmtree(token, ignore_errors=True)

    def recover_withdrawn(self, registered: set[str]) -> None:
        trash = self.root / TRASH
        for leftover in sorted(trash.iterdir()) if trash.is_dir() else []:
            key = leftover.name.split(".")[0]
            if key in registered and not self.path(key).exists():
                os.rename(leftover, self.path(key))
            else:
                shutil.rmtree(leftover, ignore_errors=True)
