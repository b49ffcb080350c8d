"""push / pull between two cache folders and to/from an S3 API (moto server on loopback)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import servers
from servers import cli, new_bucket, snapshot

from eegcache.sources.synth import synthesize

s3_env = servers.s3_env  # the fixture, used by name


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A cache built from a small synthetic tree."""
    root = tmp_path_factory.mktemp("transfer")
    synthesize(root / "tree", hours=0.4, seed=5)
    cli("ingest", str(root / "tree"), "--cache", str(root / "cache"), "--quiet", "--missing-electrodes", "zero")
    cli("ingest", str(root / "tree"), "--cache", str(root / "cache"), "--stride", "30", "--quiet",
        "--missing-electrodes", "zero")
    return root / "cache"


def _json(proc) -> dict:
    return json.loads(proc.stdout)


def _subset(rows: set, split: str) -> set:
    return {r for r in rows if dict(r)["split"] == split}


def test_push_to_a_folder_then_nothing_to_send(source, tmp_path):
    remote = tmp_path / "remote"
    first = _json(cli("push", "--cache", str(source), str(remote), "--json", "--quiet"))
    assert first["objects_sent"] > 0 and first["bytes_sent"] > 0 and not first["failed"]
    assert snapshot(remote) == snapshot(source)
    assert cli("verify", "--cache", str(remote)).returncode == 0
    second = _json(cli("push", "--cache", str(source), str(remote), "--json", "--quiet"))
    assert second["objects_sent"] == 0 and second["bytes_sent"] == 0
    assert second["objects_skipped"] == first["objects_sent"]
    assert snapshot(remote) == snapshot(source), "a second push adds no duplicate rows"


def test_partial_pull_by_split_and_where(source, tmp_path):
    local = tmp_path / "local"
    summary = _json(cli("pull", "--cache", str(local), str(source), "--split", "dev", "--json", "--quiet"))
    assert summary["recordings"] > 0
    windows, recordings = snapshot(local)
    assert windows == _subset(snapshot(source)[0], "dev")
    assert cli("verify", "--cache", str(local)).returncode == 0
    before = len(windows)
    cli("pull", "--cache", str(local), str(source), "--where", "label = 'full_seizure'", "--quiet")
    after, _ = snapshot(local)
    assert len(after) >= before
    assert {dict(r)["recording"] for r in snapshot(source)[0] if dict(r)["label"] == "full_seizure"} <= {
        dict(r)["recording"] for r in after}


def test_pull_where_cannot_write(source, tmp_path):
    before = snapshot(source)
    proc = cli("pull", "--cache", str(tmp_path / "x"), str(source), "--where", "1=1); DELETE FROM windows; --",
               check=False)
    assert proc.returncode != 0 and "--where" in proc.stderr
    assert snapshot(source) == before


def test_corrupt_remote_object_is_detected_and_named(source, tmp_path):
    remote = tmp_path / "remote"
    cli("push", "--cache", str(source), str(remote), "--quiet")
    chunk = sorted(remote.glob("objects/*/*/signal/c.0.0"))[0]
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0x01
    chunk.write_bytes(bytes(data))
    key = chunk.parents[1].name
    proc = cli("pull", "--cache", str(tmp_path / "local"), str(remote), "--quiet", check=False)
    assert proc.returncode == 1
    assert key[:12] in proc.stderr and "corrupt" in proc.stderr
    assert cli("verify", "--cache", str(tmp_path / "local")).returncode == 0, "nothing corrupt was registered"
    pulled = {dict(r)["recording"] for r in snapshot(tmp_path / "local")[1]}
    assert pulled and len(pulled) < len(snapshot(source)[1]), "only the damaged object's recordings are missing"


def test_killed_push_resumes_without_resending(source, tmp_path):
    remote = tmp_path / "remote"
    proc = subprocess.Popen([sys.executable, "-m", "eegcache", "push", "--cache", str(source), str(remote), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(remote.glob("objects/*/*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    published = {p.name for p in remote.glob("objects/*/*")}
    if (remote / "index.sqlite").exists():
        assert cli("verify", "--cache", str(remote)).returncode == 0, "the remote index only names objects it holds"
    resumed = _json(cli("push", "--cache", str(source), str(remote), "--json", "--quiet"))
    total = resumed["objects_sent"] + resumed["objects_skipped"]
    assert resumed["objects_skipped"] >= len(published), "complete objects are never sent again"
    assert total == len({p.name for p in source.glob("objects/*/*")})
    assert snapshot(remote) == snapshot(source)
    assert cli("verify", "--cache", str(remote)).returncode == 0


def test_push_and_partial_pull_through_s3(source, tmp_path, s3_env):
    bucket = new_bucket()
    first = _json(cli("push", "--cache", str(source), bucket, "--json", "--quiet", env=s3_env))
    assert first["objects_sent"] > 0
    again = _json(cli("push", "--cache", str(source), bucket, "--json", "--quiet", env=s3_env))
    assert again["objects_sent"] == 0 and again["bytes_sent"] == 0
    local = tmp_path / "local"
    cli("pull", "--cache", str(local), bucket, "--split", "eval", "--quiet", env=s3_env)
    assert snapshot(local)[0] == _subset(snapshot(source)[0], "eval")
    assert cli("verify", "--cache", str(local)).returncode == 0
    missing = cli("pull", "--cache", str(tmp_path / "y"), new_bucket(), check=False, env=s3_env)
    assert missing.returncode != 0 and "no eegcache index" in missing.stderr


def test_remote_with_a_newer_schema_is_refused(source, tmp_path):
    import shutil
    import sqlite3

    remote = tmp_path / "remote"
    shutil.copytree(source, remote)
    with sqlite3.connect(remote / "index.sqlite") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'zzzz'")
    for args in (["pull", "--cache", str(tmp_path / "local"), str(remote)],
                 ["push", "--cache", str(source), str(remote)]):
        proc = cli(*args, "--quiet", check=False)
        assert proc.returncode != 0
        assert "zzzz" in proc.stderr and "upgrade eegcache" in proc.stderr
        assert "Traceback" not in proc.stderr
