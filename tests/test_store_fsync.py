"""The fsyncs that make an object durable before it is published are issued together (``fsync_all``): every file
and folder is still flushed, an error still stops the publish, and a forked process still gets its own threads
(and its own private folder for source copies)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from eegcache.ops import prepare as prepare_mod
from eegcache.store import LocalObjectStore, fsync_all


def _tree(root: Path) -> set[str]:
    for rel in ("a", "sub/b", "sub/deeper/c"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 10)
    return {str(root), str(root / "sub"), str(root / "sub/deeper"), *(str(root / r) for r in ("a", "sub/b", "sub/deeper/c"))}


def _where(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_every_file_and_folder_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _tree(tmp_path / "obj")
    seen, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (seen.append(_where(fd)), real(fd)))
    fsync_all(tmp_path / "obj")
    assert sorted(seen) == sorted(want)


def test_a_failed_fsync_raises_after_the_others_have_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One fsync fails (EIO): fsync_all raises it, and only once no other fsync is still running on the folder the
    caller is about to remove."""
    _tree(tmp_path / "obj")
    running, real = [0], os.fsync
    lock = threading.Lock()

    def fsync(fd: int) -> None:
        path = _where(fd)
        if path.endswith("/a"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        with lock:
            running[0] += 1
        time.sleep(0.05)
        real(fd)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as err:
        fsync_all(tmp_path / "obj")
    assert err.value.errno == errno.EIO and running == [0]


def test_after_fork_the_child_fsyncs_and_copies_on_its_own(tmp_path: Path) -> None:
    """The parent's fsync threads and private read folder do not exist in a forked child: it makes its own, and
    leaves the parent's folder alone when it exits."""
    store = LocalObjectStore(tmp_path / "store")
    store.write("ab" * 32, np.zeros((2, 100), np.float32), np.zeros(100, np.uint8), {})
    parent_dir = prepare_mod._read_dir()
    pid = os.fork()
    if pid == 0:  # the child: exit status says what went wrong
        code = 0
        try:
            store.write("cd" * 32, np.zeros((2, 100), np.float32), np.zeros(100, np.uint8), {})
            code = 0 if store.exists("cd" * 32) and prepare_mod._read_dir() != parent_dir else 2
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            prepare_mod._remove_read_dir(os.getpid(), prepare_mod._read_dir())  # what its atexit does
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(pid, 9)
        raise AssertionError("the forked child hung in fsync_all")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert parent_dir.is_dir() and prepare_mod._read_dir() == parent_dir
