"""The fsyncs that make an object durable before it is published are issued together (``fsync_all``, and a batch's
in ``ObjectStore.publish``): every file and folder is still flushed before any rename, an error still stops the
publish (of that object alone), and a forked process still gets its own threads (and its own private folder for
source copies, which go to /dev/shm when they can)."""

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
from eegcache.store import base as base_mod


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


def _staged_batch(store: LocalObjectStore, n: int) -> list:
    rng = np.random.default_rng(n)
    return [store.stage(f"{i:02x}" * 32, rng.standard_normal((3, 5000)).astype(np.float32),
                        (rng.random(5000) > 0.7).astype(np.uint8), {"i": i}) for i in range(n)]


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync each"])
def test_a_batch_is_durable_before_any_of_it_is_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          syncfs: bool) -> None:
    """``publish`` of several staged objects flushes them before the first rename into objects/ and flushes the
    renames before it returns: with one syncfs of the filesystem each time (Linux), or, where there is none,
    with an fsync of every file and folder of every object, then of every objects/<k[:2]> folder."""
    if syncfs and base_mod._libc() is None:
        pytest.skip("no syncfs in this C library")
    if not syncfs:
        monkeypatch.setattr(base_mod, "_libc", lambda: None)
    store = LocalObjectStore(tmp_path)
    staged = _staged_batch(store, 4)
    files = {str(s.folder / c.path) for s in staged for c in s.checksums}
    events, real_fsync, real_rename, real_flush = [], os.fsync, os.rename, base_mod.flush_filesystem
    lock = threading.Lock()

    def fsync(fd: int) -> None:
        with lock:
            events.append(("fsync", _where(fd)))
        real_fsync(fd)

    def rename(a, b) -> None:
        with lock:
            events.append(("rename", str(a)))
        real_rename(a, b)

    def flush(path) -> bool:
        done = real_flush(path)
        events.append(("syncfs" if done else "no syncfs", str(path)))
        return done

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(base_mod, "flush_filesystem", flush)
    done = store.publish(staged)
    assert done == [s.checksums for s in staged]
    renames = [i for i, (what, _) in enumerate(events) if what == "rename"]
    before, after = events[:renames[0]], events[renames[-1]:]
    if syncfs:
        assert ("syncfs", str(staged[0].folder)) in before and any(what == "syncfs" for what, _ in after)
        # one flush for the batch, not one per file (objects/ itself is fsynced when a new objects/<k[:2]> is made)
        assert {path for what, path in events if what == "fsync"} <= {str(tmp_path / "objects")}
    else:
        flushed = {path for what, path in before if what == "fsync"}
        assert files <= flushed and {str(s.folder) for s in staged} <= flushed
        assert {str(store.path(s.key).parent) for s in staged} <= {p for what, p in after if what == "fsync"}
    assert all(store.exists(s.key) for s in staged) and not any(s.folder.exists() for s in staged)


def test_syncfs_flushes_this_filesystem(tmp_path: Path) -> None:
    """On Linux the batch flush is a real syncfs(2) call that succeeds on a writable filesystem."""
    if base_mod._libc() is None:
        pytest.skip("no syncfs in this C library")
    (tmp_path / "f").write_bytes(b"x" * 4096)
    assert base_mod.flush_filesystem(tmp_path) is True


@pytest.mark.parametrize("bad_file", [True, False], ids=["one object's file", "elsewhere on the filesystem"])
def test_a_failed_flush_fails_only_the_objects_that_cannot_be_made_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_file: bool) -> None:
    """The syncfs of a batch reports a write-back error (EIO): every file and folder is then fsynced on its own.
    When one file of one object fails its fsync, that object is not published and its staging is removed, the
    others are published; when the error was elsewhere on the filesystem (every fsync succeeds), all are."""
    store = LocalObjectStore(tmp_path)
    staged = _staged_batch(store, 3)
    bad, real = str(staged[1].folder / "signal" / "c.0.0"), os.fsync

    def syncfs_error(path) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    def fsync(fd: int) -> None:
        if bad_file and _where(fd) == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(base_mod, "flush_filesystem", syncfs_error)
    monkeypatch.setattr(os, "fsync", fsync)
    done = store.publish(staged)
    if bad_file:
        assert isinstance(done[1], OSError) and done[1].errno == errno.EIO
        assert done[0] == staged[0].checksums and done[2] == staged[2].checksums
        assert [store.exists(s.key) for s in staged] == [True, False, True]
    else:
        assert done == [s.checksums for s in staged] and all(store.exists(s.key) for s in staged)
    assert not any(s.folder.exists() for s in staged)


def test_a_small_source_is_copied_to_memory_and_a_full_dev_shm_falls_back(tmp_path: Path, monkeypatch) -> None:
    """The private copy of a small source is made in /dev/shm (RAM: no file created on disk) with the source's
    name and sha256; when /dev/shm cannot take it (a container's is 64 MB: ENOSPC) the copy is made in $TMPDIR,
    same bytes, same digest; neither copy outlives its use."""
    import hashlib

    if not os.access(prepare_mod.SHM, os.W_OK):
        pytest.skip("no writable /dev/shm here")
    source = tmp_path / "rec_s001_t000.edf"
    source.write_bytes(os.urandom(300_000))
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    with prepare_mod._private_copy(source) as (copy, digest):
        assert copy.parent.parent == prepare_mod.SHM and copy.name == source.name
        assert digest == want and copy.read_bytes() == source.read_bytes()
    assert not copy.exists()

    real = prepare_mod._copy

    def shm_full(src: Path, dst: Path) -> str:
        if dst.is_relative_to(prepare_mod.SHM):
            with open(dst, "wb") as f:
                f.write(b"x" * 1000)  # half written, then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(prepare_mod, "_copy", shm_full)
    with prepare_mod._private_copy(source) as (copy, digest):
        assert not copy.is_relative_to(prepare_mod.SHM) and copy.name == source.name
        assert digest == want and copy.read_bytes() == source.read_bytes()
    assert not copy.exists()
    assert not any(prepare_mod._read_dir(in_memory=True).iterdir())  # the torn copy in /dev/shm is gone
