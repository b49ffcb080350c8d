"""``trainer fit --resume`` on a cache that changed under the run: the checkpoint's selection fingerprint (counts and
a digest of the ids per class, the recordings' content, the epoch size, the index) is compared with what the cache
selects now; a change is refused with what changed, unless ``--accept-changed-selection``, and then metrics.jsonl
says so. Real ``trainer`` subprocesses on a small cache with real objects."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_fixtures import real_cache

from trainer.fit import LAST, METRICS_FILE, TrainConfig, fit, load_checkpoint

FIT = ("--window", "4", "--stride", "2", "--val-split", "none", "--epochs", "3", "--batch-size", "4", "--quiet")


def _trainer(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainer", *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    real_cache(cache)
    out = tmp_path / "run"
    first = _trainer("fit", "--cache", cache, "--out", out, *FIT, "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    return cache, out


def _index(cache: Path, *statements: str) -> None:
    conn = sqlite3.connect(cache / "index.sqlite")
    with conn:
        for sql in statements:
            conn.execute(sql)
    conn.close()


def test_the_checkpoint_records_the_selection(run) -> None:
    cache, out = run
    fp = load_checkpoint(out / LAST)["selection"]
    assert {k: v["count"] for k, v in fp["classes"].items()} == {"partial_seizure": 7, "full_seizure": 6,
                                                                  "no_seizure": 11}
    assert all(len(v["ids_sha256"]) == 64 for v in fp["classes"].values())
    assert fp["recordings"]["count"] == 2 and fp["epoch_windows"] == 20
    assert fp["index"]["location"] == str((cache / "index.sqlite").resolve()) and fp["index"]["revision"]


def test_resume_on_a_changed_selection_is_refused_then_accepted_with_a_note(run) -> None:
    cache, out = run
    # two background windows of the training split disappear (16 -> 24 in the issue: the epoch changes size)
    _index(cache, "DELETE FROM windows WHERE id IN (SELECT w.id FROM windows w JOIN recordings r ON r.id = w.recording_id "
                  "WHERE r.split = 'train' AND w.label = 0 ORDER BY w.id DESC LIMIT 2)")
    refused = _trainer("fit", "--cache", cache, "--out", out, *FIT, "--resume")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "now selects other windows" in refused.stderr, refused.stderr
    assert "no_seizure: 11 → 9 windows" in refused.stderr and "windows per epoch: 20 → 18" in refused.stderr
    assert "--accept-changed-selection" in refused.stderr
    assert load_checkpoint(out / LAST)["epoch"] == 1, "the refused resume trained anyway"

    accepted = _trainer("fit", "--cache", cache, "--out", out, *FIT, "--resume", "--accept-changed-selection")
    assert accepted.returncode == 0, accepted.stderr
    assert "continuing on a changed selection" in accepted.stdout
    lines = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert "selection_changed" not in lines[0] and "selection_changed" not in lines[2]
    note = lines[1]["selection_changed"]
    assert note["accepted"] is True and note["after_epoch"] == 1
    assert note["before"]["epoch_windows"] == 20 and note["after"]["epoch_windows"] == 18
    assert any("no_seizure: 11 → 9" in c for c in note["changes"])
    assert lines[1]["windows"] == 18
    # the new checkpoint records the new selection: a further resume has nothing to accept
    assert load_checkpoint(out / LAST)["selection"]["epoch_windows"] == 18


def test_same_counts_but_other_windows_is_a_change(run) -> None:
    """A window replaced by an equal one under a new id (a re-ingest): counts are equal, the id digest is not."""
    cache, out = run
    _index(cache,
           "CREATE TEMP TABLE w0 AS SELECT * FROM windows WHERE label = 2 AND recording_id = "
           "(SELECT id FROM recordings WHERE split = 'train' ORDER BY id LIMIT 1) ORDER BY id LIMIT 1",
           "DELETE FROM windows WHERE id = (SELECT id FROM w0)",
           "INSERT INTO windows(recording_id, window_set_id, start_sample, seizure_samples, label) "
           "SELECT recording_id, window_set_id, start_sample, seizure_samples, label FROM w0")
    refused = _trainer("fit", "--cache", cache, "--out", out, *FIT, "--resume")
    assert refused.returncode == 1
    assert "full_seizure: 6 windows as before, but other ones (the ids differ)" in refused.stderr, refused.stderr


def test_unchanged_selection_resumes_without_a_flag_and_old_checkpoints_warn(run, tmp_path: Path) -> None:
    cache, out = run
    lines: list[str] = []
    config = TrainConfig(cache=str(cache), out=str(out), window_s=4, stride_s=2, val_split=None, epochs=3,
                         batch_size=4)
    state = load_checkpoint(out / LAST)
    del state["selection"]  # as written before checkpoints recorded the selection
    torch.save(state, out / LAST)
    result = fit(config, resume=True, stop_after=1, log=lines.append, progress=False)
    assert result.epochs_done == 2
    assert any("holds no selection fingerprint" in line for line in lines)
    assert all("selection_changed" not in r for r in result.history)
    lines.clear()
    fit(config, resume=True, log=lines.append, progress=False)  # the checkpoint of epoch 2 has one: no warning
    assert not any("fingerprint" in line or "changed selection" in line for line in lines)
