"""The object store, ``verify`` (+ ``--repair``) and ``gc`` on real Zarr objects and a real index.

Damage is done to copies of the standard cache with plain file operations, the way a disk or a person would."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import DUPLICATE_STEM, INGESTED, NO_A1A2, OVERLAP, SHORT, Standard
from edf_factory import cli, object_dirs, query, run_cli

from eegcache.store import LABEL_CHUNK, SIGNAL_CHUNK, LocalObjectStore, object_digest
from eegcache.store.layout import shard_samples


def _key(cache: Path, stem: str) -> str:
    return query(cache, "SELECT object_key FROM recordings WHERE name = ?", (stem,))[0][0]


def _folder(cache: Path, key: str) -> Path:
    return cache / "objects" / key[:2] / key


def _signal_chunks(cache: Path, key: str) -> list[Path]:
    return sorted(p for p in (_folder(cache, key) / "signal").rglob("*") if p.is_file() and p.name != "zarr.json")


def _window_rows(cache: Path) -> list[tuple]:
    return query(cache, "SELECT * FROM window_labels ORDER BY window_id")


# --- the store --------------------------------------------------------------------------------------------------


def test_object_layout(standard: Standard) -> None:
    """objects/<k[:2]>/<k>/ holds a Zarr v3 group: signal (channels x time) and the uint8 label mask, each one
    shard file of short inner chunks along time (a 60 s window decodes about its own bytes), every inner chunk and
    the shard index CRC32C-checked; staging is empty."""
    for rec in INGESTED:
        key = _key(standard.cache, rec.stem)
        folder = _folder(standard.cache, key)
        for name, chunk in (("signal", [19, SIGNAL_CHUNK]), ("labels", [LABEL_CHUNK])):
            meta = json.loads((folder / name / "zarr.json").read_text())
            assert meta["zarr_format"] == 3
            assert meta["chunk_grid"]["configuration"]["chunk_shape"][-1] == shard_samples(rec.n_samples, chunk[-1])
            (sharding,) = meta["codecs"]
            assert sharding["name"] == "sharding_indexed" and sharding["configuration"]["chunk_shape"] == chunk
            assert [c["name"] for c in sharding["configuration"]["codecs"]][-1] == "crc32c"
            assert [c["name"] for c in sharding["configuration"]["index_codecs"]] == ["bytes", "crc32c"]
        assert SIGNAL_CHUNK < 60 * 256
        assert [p.name for p in (folder / "signal").glob("c*")] == ["c.0.0"]
        group = zarr.open_group(str(folder), mode="r")
        assert group["labels"].dtype == np.uint8 and group["labels"].shape == (rec.n_samples,)
    staging = standard.cache / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_index_checksums_are_the_files(standard: Standard) -> None:
    """Per object, the index lists exactly the files on disk with their size and sha256, and a digest over them."""
    for (key,) in query(standard.cache, "SELECT key FROM objects"):
        folder = _folder(standard.cache, key)
        on_disk = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        rows = query(standard.cache, "SELECT path, size, sha256 FROM object_files WHERE object_key = ?", (key,))
        assert {p: (s, h) for p, s, h in rows} == {p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in on_disk.items()}
        ((digest, nbytes),) = query(standard.cache, "SELECT digest, nbytes FROM objects WHERE key = ?", (key,))
        assert digest == object_digest(LocalObjectStore(standard.cache).checksums(key))
        assert nbytes == sum(len(b) for b in on_disk.values())


def test_store_write_is_atomic_and_idempotent(tmp_path: Path) -> None:
    """write() publishes a complete object and leaves no staging folder; writing the same key again is a no-op."""
    store = LocalObjectStore(tmp_path)
    signal = np.random.default_rng(0).standard_normal((3, 40_000)).astype(np.float32)
    labels = (np.arange(40_000) % 1000 < 100).astype(np.uint8)
    key = "ab" * 32
    assert store.write(key, signal, labels, {"k": 1}) is not None
    files = {p: p.read_bytes() for p in store.path(key).rglob("*") if p.is_file()}
    assert store.write(key, signal * 2, labels, {"k": 2}) is None
    assert {p: p.read_bytes() for p in store.path(key).rglob("*") if p.is_file()} == files
    assert not any((tmp_path / "staging").iterdir())
    group = store.open(key)
    np.testing.assert_array_equal(group["signal"][...], signal)
    np.testing.assert_array_equal(group["labels"][...], labels)


def test_corrupt_chunk_fails_on_read(tmp_path: Path) -> None:
    """A flipped byte in a chunk makes zarr refuse the read (CRC32C) instead of returning wrong samples."""
    store = LocalObjectStore(tmp_path)
    key = "cd" * 32
    store.write(key, np.ones((2, 20_000), dtype=np.float32), np.zeros(20_000, dtype=np.uint8), {})
    chunk = sorted(p for p in (store.path(key) / "signal").rglob("*") if p.is_file() and p.name != "zarr.json")[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)checksum"):
        store.open(key)["signal"][...]


# --- verify and repair ------------------------------------------------------------------------------------------


def test_verify_passes_on_a_fresh_cache(standard: Standard) -> None:
    done = run_cli("verify", "--cache", standard.cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problem(s)" in done.stdout and "DAMAGED" not in done.stdout
    as_json = json.loads(run_cli("verify", "--cache", standard.cache, "--json").stdout)
    assert as_json["problems"] == [] and as_json["objects"] == len(INGESTED)


def _flip(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "corrupt"


def _truncate(path: Path) -> str:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return "truncated"


def _delete(path: Path) -> str:
    path.unlink()
    return "missing"


DAMAGE = {"flipped byte": _flip, "truncated chunk": _truncate, "deleted chunk": _delete}


@pytest.mark.parametrize("how", [*DAMAGE, "deleted object folder"])
def test_verify_names_damage_and_repair_restores(standard: Standard, cache_copy: Path, how: str) -> None:
    """verify exits 1 naming the object, its recording and the file; verify --repair rebuilds the object from
    the source; then verify passes and window_labels is exactly as before."""
    key = _key(cache_copy, OVERLAP.stem)
    windows_before = _window_rows(cache_copy)
    files_before = query(cache_copy, "SELECT object_key, path, size, sha256 FROM object_files ORDER BY 1, 2")
    if how == "deleted object folder":
        shutil.rmtree(_folder(cache_copy, key))
        relpath, word = f"{key[:2]}/{key}", "missing"
    else:
        chunk = _signal_chunks(cache_copy, key)[0]  # the signal's one shard
        relpath = chunk.relative_to(_folder(cache_copy, key)).as_posix()
        word = DAMAGE[how](chunk)
    done = cli("verify", "--cache", cache_copy)
    assert done.returncode == 1
    damaged = [line for line in done.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1, done.stdout
    assert key[:12] in damaged[0] and OVERLAP.stem in damaged[0] and relpath in damaged[0] and word in damaged[0]
    fixed = cli("verify", "--cache", cache_copy, "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "after repair: 0 problem(s)" in fixed.stdout
    assert cli("verify", "--cache", cache_copy).returncode == 0
    assert _window_rows(cache_copy) == windows_before
    assert query(cache_copy, "SELECT object_key, path, size, sha256 FROM object_files ORDER BY 1, 2") == files_before


def test_repair_of_an_object_shared_by_two_paths(cache_copy: Path) -> None:
    """The object of a byte-identical pair: verify names both recordings; repair rebuilds it once and keeps one
    recording ingested and the copy skipped."""
    key = _key(cache_copy, NO_A1A2.stem)
    status_before = query(cache_copy, "SELECT * FROM recording_status ORDER BY source_path")
    windows_before = _window_rows(cache_copy)
    _flip(_signal_chunks(cache_copy, key)[0])
    done = cli("verify", "--cache", cache_copy)
    assert done.returncode == 1 and f"{NO_A1A2.stem}, {DUPLICATE_STEM}" in done.stdout
    assert cli("verify", "--cache", cache_copy, "--repair").returncode == 0
    assert cli("verify", "--cache", cache_copy).returncode == 0
    assert query(cache_copy, "SELECT * FROM recording_status ORDER BY source_path") == status_before
    assert _window_rows(cache_copy) == windows_before


def test_repair_without_source_says_so(tree, tmp_path: Path) -> None:
    """When the source EDF is gone, --repair cannot rebuild: it says which object and which source, exit 1."""
    root, edfs = tree(SHORT)
    cache = tmp_path / "cache"
    assert cli("ingest", root, "--cache", cache, "--quiet").returncode == 0
    key = _key(cache, SHORT.stem)
    _flip(_signal_chunks(cache, key)[0])
    edfs[SHORT].unlink()
    done = cli("verify", "--cache", cache, "--repair")
    assert done.returncode == 1
    assert f"cannot repair object {key[:12]}" in done.stdout and str(edfs[SHORT]) in done.stdout


# --- gc -----------------------------------------------------------------------------------------------------------


def _plant_garbage(cache: Path) -> tuple[Path, Path]:
    """A staging leftover (as a killed writer leaves it) and an unreferenced object folder (published, never
    registered)."""
    staging = cache / "staging" / f"{'ee' * 32}.12345.abcd1234"
    (staging / "signal").mkdir(parents=True)
    (staging / "signal" / "zarr.json").write_text("{}")
    key = _key(cache, SHORT.stem)
    orphan = cache / "objects" / "ff" / ("ff" * 32)
    orphan.parent.mkdir(exist_ok=True)
    shutil.copytree(_folder(cache, key), orphan)
    return staging, orphan


def test_gc_dry_run_removes_nothing(cache_copy: Path) -> None:
    staging, orphan = _plant_garbage(cache_copy)
    before = sorted(p for p in cache_copy.rglob("*"))
    done = cli("gc", "--cache", cache_copy, "--dry-run", "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert f"would remove staging/{staging.name}" in done.stdout and f"would remove object {orphan.name}" in done.stdout
    assert sorted(p for p in cache_copy.rglob("*") if "index.sqlite" not in p.name) == \
        [p for p in before if "index.sqlite" not in p.name]


def test_gc_grace_period_protects_young_leftovers(cache_copy: Path) -> None:
    """With the default grace period a fresh staging folder and a just-published object survive (a concurrent
    writer may own them)."""
    staging, orphan = _plant_garbage(cache_copy)
    done = cli("gc", "--cache", cache_copy)
    assert done.returncode == 0
    assert staging.is_dir() and orphan.is_dir()
    assert "removed 0 staging folder(s), 0 object(s)" in done.stdout


def test_gc_removes_garbage_and_never_a_referenced_object(cache_copy: Path) -> None:
    staging, orphan = _plant_garbage(cache_copy)
    referenced = {k for (k,) in query(cache_copy, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    windows = _window_rows(cache_copy)
    done = run_cli("gc", "--cache", cache_copy, "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert f"removed staging/{staging.name}" in done.stdout and f"removed object {orphan.name}" in done.stdout
    assert not staging.exists() and not orphan.exists()
    assert object_dirs(cache_copy) == referenced
    assert _window_rows(cache_copy) == windows
    assert cli("verify", "--cache", cache_copy).returncode == 0
    again = cli("gc", "--cache", cache_copy, "--grace", "0")
    assert "removed 0 staging folder(s), 0 object(s)" in again.stdout


def test_gc_removes_a_registered_object_no_recording_uses(tree, tmp_path: Path) -> None:
    """The pipeline rebuilt with another spec (float16, --replace), the recording points at a new object; the old
    one stays registered but unreferenced until gc deletes its rows and its folder."""
    root, _ = tree(SHORT)
    cache = tmp_path / "cache"
    assert cli("ingest", root, "--cache", cache, "--quiet").returncode == 0
    old = _key(cache, SHORT.stem)
    assert cli("ingest", root, "--cache", cache, "--quiet", "--dtype", "float16", "--replace").returncode == 0
    new = _key(cache, SHORT.stem)
    assert new != old and object_dirs(cache) == {old, new}
    done = cli("gc", "--cache", cache, "--grace", "0")
    assert f"removed object {old}" in done.stdout
    assert object_dirs(cache) == {new}
    assert query(cache, "SELECT key FROM objects") == [(new,)]
    assert query(cache, "SELECT count(*) FROM object_files WHERE object_key = ?", (old,)) == [(0,)]
    assert cli("verify", "--cache", cache).returncode == 0


def test_gc_puts_back_a_referenced_object_left_in_trash(cache_copy: Path) -> None:
    """A gc killed between withdrawing an object and committing leaves it in trash/; the next gc restores any
    folder whose object is still registered."""
    key = _key(cache_copy, OVERLAP.stem)
    trash = cache_copy / "trash"
    trash.mkdir()
    os.rename(_folder(cache_copy, key), trash / f"{key}.99999")
    assert cli("verify", "--cache", cache_copy).returncode == 1
    done = cli("gc", "--cache", cache_copy, "--grace", "0")
    assert done.returncode == 0
    assert _folder(cache_copy, key).is_dir() and not any(trash.iterdir())
    assert cli("verify", "--cache", cache_copy).returncode == 0
