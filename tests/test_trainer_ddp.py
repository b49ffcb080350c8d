"""Distributed training with real processes: torchrun (and ``trainer fit --nproc``) starts two gloo ranks on the
CPU; each trains on its own shard of the SQL-drawn epoch, rank 0 writes a run folder whose checkpoints load into a
plain model, validation equals the single-process validation of the same weights, and ``--resume`` after one of two
epochs ends where an uninterrupted two-rank run ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from trainer_fixtures import synthetic_cache

from trainer.cli import main
from trainer.distributed import DEBUG_SHARDS_ENV, assign, launch_command
from trainer.fit import LAST, METRICS_FILE, FitError, TrainConfig, fit, load_checkpoint
from trainer.model import ModelConfig, SeizureTransformer, build_model
from trainer.postprocess import PostProcess
from trainer.predict import RecordingRef, split_recordings, validate
from trainer.sampling import EpochSampler, Ratios, Selection

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCH = 2, 4
TIMINGS = ("windows_per_s", "train_seconds", "val_seconds", "data_wait_s", "step_s")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_cache(tmp_path_factory.getbasetemp())


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: keep gloo on the loopback interface
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    env.update(extra)
    return env


def _fit_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["--cache", str(cache), "--out", str(out), "--device", "cpu", "--model", "tiny", "--allow-incomplete",
            "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", "3e-3", "--quiet", *extra]


def _torchrun(args: list[str], **env) -> subprocess.CompletedProcess:
    res = subprocess.run(launch_command(2, args), cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(synth, tmp_path_factory):
    """An uninterrupted two-rank, two-epoch run, with each rank's window ids logged per epoch."""
    out = tmp_path_factory.mktemp("ddp") / "whole"
    res = _torchrun(_fit_args(synth, out), **{DEBUG_SHARDS_ENV: "1"})
    return out, res


def _sampler(cache: Path) -> EpochSampler:
    return EpochSampler(cache, Selection(allow_incomplete=True), Ratios(), 0)


def test_two_ranks_write_one_run_folder_from_rank_0(whole):
    out, res = whole
    assert res.stdout.count("done: 2 epochs") == 1  # rank 0 alone reports
    lines = _lines(out)
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert r["world_size"] == 2
        assert r["windows"] == 18 and r["windows_per_s"] > 0  # the whole epoch, both shards
        assert r["data_wait_s"] >= 0 and r["step_s"] > 0
        assert r["drawn"] == {"partial_seizure": 5, "full_seizure": 0, "no_seizure": 13}
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not list(out.glob(".*.tmp"))


def test_the_ranks_train_on_disjoint_shards_of_the_epoch_draw(whole, synth):
    out, _ = whole
    sampler = _sampler(synth)
    for epoch in range(EPOCHS):
        draw = sampler.draw(epoch)
        assert draw.ids.size % 2 == 0  # no padding: the shards can be strictly disjoint
        shards = [json.loads((out / f"shards-epoch{epoch}-rank{r}.json").read_text()) for r in (0, 1)]
        ids = [s["ids"] for s in shards]
        assert [s["rank"] for s in shards] == [0, 1] and all(s["world_size"] == 2 for s in shards)
        assert len(ids[0]) == len(ids[1]) == draw.ids.size // 2
        assert not set(ids[0]) & set(ids[1])
        assert sorted(ids[0] + ids[1]) == sorted(draw.ids.tolist())
        assert ids[0] == draw.ids[0::2].tolist() and ids[1] == draw.ids[1::2].tolist()
    assert sampler.draw(0).ids.tolist() != sampler.draw(1).ids.tolist()


def test_the_checkpoint_loads_into_a_plain_model_and_validation_matches_one_process(whole, synth):
    out, _ = whole
    state = load_checkpoint(out / LAST)
    assert state["epoch"] == 2 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model"])
    model = SeizureTransformer(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])  # strict: the same keys as a single-process checkpoint
    config = TrainConfig.from_dict(state["config"])
    recordings = split_recordings(synth, "dev")
    val = validate(model, synth, recordings, state["window_set"]["window_samples"],
                   post=PostProcess(config.threshold, config.morph_samples, config.min_event_s))
    assert val == _lines(out)[-1]["val"]


def test_resume_under_two_ranks_equals_an_uninterrupted_run(whole, synth, tmp_path):
    ref, _ = whole
    out = tmp_path / "parts"
    # ``trainer fit --nproc 2`` launches torchrun itself; stop after the first of two epochs.
    res = subprocess.run([sys.executable, "-m", "trainer", "fit", *_fit_args(synth, out), "--nproc", "2",
                          "--stop-after", "1"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "stopped after 1 epoch(s)" in res.stdout
    assert load_checkpoint(out / LAST)["epoch"] == 1 and len(_lines(out)) == 1
    _torchrun(["--cache", str(synth), "--out", str(out), "--resume", "--quiet"])
    a, b = load_checkpoint(ref / LAST), load_checkpoint(out / LAST)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6, msg=key)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, v in a["optimizer"]["state"].items():
        for name in v:
            torch.testing.assert_close(v[name], b["optimizer"]["state"][k][name], rtol=0, atol=1e-6)
    assert a["scheduler"] == b["scheduler"]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMINGS}  # noqa: E731
    assert [strip(r) for r in _lines(ref)] == [strip(r) for r in _lines(out)]


def test_resume_with_another_number_of_processes_is_refused(whole, synth):
    out, _ = whole
    config = TrainConfig(cache=str(synth), out=str(out), epochs=EPOCHS, batch_size=BATCH, lr=3e-3, allow_incomplete=True)
    with pytest.raises(FitError, match=r"trained by 2 process\(es\) and this is 1"):
        fit(config, resume=True, progress=False, log=lambda _line: None)


def test_single_process_lines_carry_world_size_and_timings(synth, tmp_path):
    config = TrainConfig(cache=str(synth), out=str(tmp_path / "one"), epochs=1, batch_size=4, allow_incomplete=True,
                         max_windows_per_epoch=4, val_split=None)
    result = fit(config, progress=False, log=lambda _line: None)
    (line,) = _lines(tmp_path / "one")
    assert line["world_size"] == 1 and line["windows"] == 4
    assert line["data_wait_s"] >= 0 and line["step_s"] > 0
    assert result.profiles == [{"data_wait_s": line["data_wait_s"], "step_s": line["step_s"]}]
    assert "data_wait_s" not in result.history[0] and result.world_size == 1
    assert load_checkpoint(tmp_path / "one" / LAST)["world_size"] == 1


def test_nproc_under_torchrun_must_match_its_world(synth, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    res = CliRunner().invoke(main, ["fit", *_fit_args(synth, tmp_path / "x"), "--nproc", "3"], env=env)
    assert res.exit_code == 1 and "--nproc 3 under torchrun with WORLD_SIZE 2" in res.output


def test_validation_recordings_are_divided_evenly_and_deterministically():
    recs = [RecordingRef(i, f"r{i}", "k", n, 256.0) for i, n in enumerate([10, 50, 30, 30, 5, 40])]
    shares = assign(recs, 2)
    assert sorted(shares[0] + shares[1]) == list(range(6)) and not set(shares[0]) & set(shares[1])
    loads = [sum(recs[i].n_samples for i in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= 10
    assert assign(recs, 2) == shares and assign(recs, 1) == [[1, 5, 2, 3, 0, 4]]
    assert assign(recs[:1], 3) == [[0], [], []]


def _validation_worker(rank: int, port: int, cache: str, out: str) -> None:
    """One of two gloo ranks: the same untrained model, rank 1's BatchNorm statistics disturbed (as the last
    training step leaves them: each rank updates its own copy), validation split across the ranks."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    from trainer import distributed

    world, _ = distributed.init("cpu")
    torch.manual_seed(0)
    model = build_model("tiny")
    post = PostProcess(0.5, 1, 0.0)  # no smoothing: the sample counts follow every probability near 0.5
    recordings = split_recordings(Path(cache), "dev")
    reference = validate(model, Path(cache), recordings, 15360, post=post) if rank == 0 else None
    if rank == 1:
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.mul_(1e-4)
    unsynced = distributed.validate(model, Path(cache), recordings, 15360, world, post=post)
    distributed.sync_buffers(world, model)
    synced = distributed.validate(model, Path(cache), recordings, 15360, world, post=post)
    states = [None, None]
    torch.distributed.all_gather_object(states, model.state_dict())
    if rank == 0:
        same = all(torch.equal(states[0][k], states[1][k]) for k in states[0])
        Path(out).write_text(json.dumps({"reference": reference, "unsynced": unsynced, "synced": synced,
                                         "recordings": len(recordings), "same_state": same}))
    distributed.shutdown(world)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_validation_split_across_ranks_equals_one_process_on_rank_0s_weights(synth, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "val.json"
    mp.spawn(_validation_worker, args=(_free_port(), str(synth), str(out)), nprocs=2, join=True)
    data = json.loads(out.read_text())
    assert data["recordings"] >= 2  # both ranks score some
    assert data["reference"]["sample_sensitivity"] and data["reference"]["event_fp"]  # scores that tell models apart
    assert data["same_state"]  # after sync_buffers every rank holds rank 0's weights and statistics
    assert data["synced"] == data["reference"]
    assert data["unsynced"] != data["reference"]  # without sync_buffers rank 1 would score other weights


def test_shard_padding_repeats_are_logged_and_recorded(synth, tmp_path):
    """Regression (issue 13): padding the last row of the shards repeated windows within an epoch without saying
    so. 7 windows over 2 ranks: one window is seen twice; the run's output and metrics.jsonl say 1."""
    out = tmp_path / "pad"
    res = _torchrun(_fit_args(synth, out, "--max-windows-per-epoch", "7", "--val-split", "none", "--epochs", "1"),
                    **{DEBUG_SHARDS_ENV: "1"})
    assert "padding: each epoch repeats 1 of its 7 windows so that the 2 ranks get equal shards of 4" in res.stdout
    assert "1 window(s) repeated to pad the shards" in res.stdout
    (line,) = _lines(out)
    assert line["padded_windows"] == 1 and line["windows"] == 8
    ids = [i for rank in (0, 1) for i in json.loads((out / f"shards-epoch0-rank{rank}.json").read_text())["ids"]]
    assert len(ids) - len(set(ids)) == line["padded_windows"]
    assert sum(line["drawn"].values()) == 7  # the class counts are of the epoch itself, repeats not counted twice
