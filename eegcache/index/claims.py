"""Leases on source files, so concurrent ingest processes divide a tree instead of duplicating it.

A process claims a file before preparing it and releases the claim in the transaction that registers the
result. A background thread renews the process's claims; when a process dies its claims expire after the lease
and another process takes the files over (at once, when the dead process ran on the same host).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

from sqlalchemy import Engine, bindparam, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from eegcache.index.db import writer
from eegcache.index.models import Claim
from eegcache.store import pid_alive

DEFAULT_LEASE_S = 300.0  # how long a claim outlives its owner; the CLI's --claim-lease / $EEGCACHE_CLAIM_LEASE_S


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def dead_here(owner: str) -> bool:
    """True when the owner is a process of this host that no longer runs (a killed earlier run): its claims need
    not wait for their lease. Owners on other hosts can only expire."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    return host == socket.gethostname() and pid_text.isdigit() and not pid_alive(int(pid_text))


class Claims:
    """This process's claims; use as a context manager to keep them renewed."""

    def __init__(self, engine: Engine, lease_s: float | None = None, owner: str | None = None) -> None:
        self.engine = engine
        self.lease_s = DEFAULT_LEASE_S if lease_s is None else float(lease_s)
        self.owner = owner or new_owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_claim(self, source_path: str) -> bool:
        """Take the file unless another live process holds it."""
        return source_path in self.try_claim_many([source_path])

    def try_claim_many(self, source_paths: list[str]) -> set[str]:
        """Take each of these files that no other live process holds, in one transaction (a transaction per
        file cost more than the claim itself on a tree of short files). Returns the ones taken."""
        now = time.time()
        with writer(self.engine).begin() as conn:
            held = {r.source_path: r for r in conn.execute(
                select(Claim.source_path, Claim.owner, Claim.expires_at).where(Claim.source_path.in_(source_paths)))}
            taken = {p for p in source_paths if p not in held or held[p].owner == self.owner
                     or held[p].expires_at <= now or dead_here(held[p].owner)}
            values = {"owner": self.owner, "expires_at": now + self.lease_s}
            if new := [{"source_path": p, **values} for p in taken if p not in held]:
                conn.execute(Claim.__table__.insert(), new)
            if old := [{"path": p, **values} for p in taken if p in held]:
                conn.execute(update(Claim).where(Claim.source_path == bindparam("path")), old)
        return taken

    def release(self, source_path: str) -> None:
        self.release_many([source_path])

    def release_many(self, source_paths: list[str]) -> None:
        with writer(self.engine).begin() as conn:
            conn.execute(delete(Claim).where(Claim.source_path.in_(source_paths), Claim.owner == self.owner))

    def release_all(self) -> None:
        with writer(self.engine).begin() as conn:
            conn.execute(delete(Claim).where(Claim.owner == self.owner))

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with writer(self.engine).begin() as conn:
                    conn.execute(update(Claim).where(Claim.owner == self.owner)
                                 .values(expires_at=time.time() + self.lease_s))
            except Exception:  # noqa: BLE001 - a missed renewal only risks duplicate work, never wrong data
                pass

    def __enter__(self) -> Claims:
        self._thread = threading.Thread(target=self._renew, name="eegcache-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.release_all()
        except SQLAlchemyError:  # the index is unwritable (disk full): the claims expire, or die with this process
            pass


_RELEASE = delete(Claim).where(Claim.source_path == bindparam("path"))  # built once: it runs once per file


def release_in(conn, source_path: str) -> None:
    """Drop a file's claim inside the transaction that registers its result."""
    conn.execute(_RELEASE, {"path": source_path})
