"""Real servers and CLI helpers shared by the scale-out and transfer tests: moto's S3 server on loopback, and
running ``eegcache`` in a subprocess the way a user does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """An S3 API on loopback (moto server) and the environment that points boto/s3fs at it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


def new_bucket() -> str:
    import s3fs

    name = f"b{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}/cache"


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "eegcache", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"eegcache {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(cache: Path, db: str | None = None) -> tuple[set, set]:
    """What a user sees: every window_labels row (without ids) and every recording_status row."""
    def rows(query: str) -> set:
        args = ["sql", "--cache", str(cache), query, "--json", "--limit", "1000000"]
        if db:
            args += ["--db", db]
        return {tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in r.items()))
                for r in json.loads(cli(*args).stdout)}

    windows = rows("SELECT recording, split, window_s, stride_s, start_s, label, seizure_fraction FROM window_labels")
    recordings = rows("SELECT recording, status, n_windows FROM recording_status")
    return windows, recordings




def pg_available(url: str) -> bool:
    """Whether the PostgreSQL server of ``url`` answers (tests that need it are skipped otherwise)."""
    from sqlalchemy import create_engine, text

    try:
        with create_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001
        return False
