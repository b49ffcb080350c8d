"""Training end to end on a synthetic TUSZ corpus: the loss falls, --resume equals an uninterrupted run, refusals
exit non-zero with their message, and evaluate writes metrics, .csv_bi predictions and a plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from trainer_fixtures import synthetic_cache

from eegcache.sources.annotations import parse_annotation
from trainer.cli import main
from trainer.fit import BEST, LAST, METRICS_FILE, FitError, TrainConfig, fit, load_checkpoint


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_cache(tmp_path_factory.getbasetemp())


def _config(cache, out, **overrides) -> TrainConfig:
    values = dict(cache=str(cache), out=str(out), epochs=4, batch_size=4, lr=3e-3, allow_incomplete=True, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = fit(_config(synth, out), log=lambda _line: None, progress=False)
    return out, result


def test_loss_falls_and_run_folder_is_complete(trained):
    out, result = trained
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0] * 0.8, losses
    lines = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert {"train_loss", "windows_per_s", "drawn", "val", "lr"} <= set(r)
        assert r["val"]["event_ref"] > 0 and "event_f1" in r["val"] and "sample_f1" in r["val"]
        assert r["drawn"]["partial_seizure"] > 0
    state = load_checkpoint(out / LAST)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config", "model_config"} <= set(state)
    assert state["epoch"] == 4 and set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["config"]["model"] == "tiny" and state["config"]["epochs"] == 4
    best = load_checkpoint(out / BEST)
    assert best["epoch"] == result.best_epoch


def test_resume_reproduces_an_uninterrupted_run(synth, tmp_path):
    quiet = dict(log=lambda _line: None, progress=False)
    common = dict(epochs=2, max_windows_per_epoch=8, val_split="dev")
    whole = fit(_config(synth, tmp_path / "whole", **common), **quiet)
    first = fit(_config(synth, tmp_path / "parts", workers=2, **common), stop_after=1, **quiet)
    assert first.epochs_done == 1 and load_checkpoint(tmp_path / "parts" / LAST)["epoch"] == 1
    resumed = fit(_config(synth, tmp_path / "parts", **common), resume=True, **quiet)
    assert resumed.epochs_done == 2
    a = load_checkpoint(tmp_path / "whole" / LAST)
    b = load_checkpoint(tmp_path / "parts" / LAST)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, v in a["optimizer"]["state"].items():
        assert all(torch.equal(v[n], b["optimizer"]["state"][k][n]) for n in v)
    strip = ("windows_per_s", "train_seconds", "val_seconds")
    lines_a = [{k: v for k, v in r.items() if k not in strip} for r in whole.history]
    lines_b = [{k: v for k, v in r.items() if k not in strip} for r in resumed.history]
    assert lines_a == lines_b


def test_fit_refuses_to_overwrite_or_to_resume_a_different_run(trained, synth, tmp_path):
    out, _ = trained
    with pytest.raises(FitError, match="already holds a run"):
        fit(_config(synth, out), progress=False)
    with pytest.raises(FitError, match="nothing to resume"):
        fit(_config(synth, tmp_path / "empty"), resume=True, progress=False)
    with pytest.raises(FitError, match=r"these options differ from it: epochs 5 \(stored 4\)"):
        fit(_config(synth, out, epochs=5), resume=True, progress=False)


def _run(args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_cli_fit_refusals_exit_non_zero_with_their_message(synth, tmp_path):
    res = _run(["fit", "--cache", synth, "--out", tmp_path / "a", "--epochs", "1", "--quiet"])
    assert res.exit_code == 1
    assert "refusing to train on an incomplete selection" in res.output and "failed" in res.output
    assert not (tmp_path / "a" / LAST).exists()
    res = _run(["fit", "--cache", synth, "--out", tmp_path / "b", "--window", "30", "--stride", "5", "--allow-incomplete"])
    assert res.exit_code == 1 and "no window set of 30 s windows at 5 s stride" in res.output
    assert "60 s windows at 60 s stride" in res.output
    res = _run(["fit", "--cache", synth, "--out", tmp_path / "c", "--split", "eval", "--where", "montage = 'none'",
                "--allow-incomplete"])
    assert res.exit_code == 1 and "no seizure windows in the selection" in res.output
    res = _run(["fit", "--cache", synth, "--out", tmp_path / "d", "--resume"])
    assert res.exit_code == 1 and "nothing to resume" in res.output
    res = _run(["fit", "--cache", tmp_path / "nocache", "--out", tmp_path / "e"])
    assert res.exit_code == 1 and "not an eegcache cache" in res.output


def test_cli_fit_and_resume(synth, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "--cache", synth, "--out", out, "--allow-incomplete", "--epochs", "2", "--batch-size", "4",
            "--max-windows-per-epoch", "4", "--val-split", "none", "--quiet"]
    res = _run(args, env={"EEGCACHE_READER": "bogus"})  # the CLI reads the environment, and checks it
    assert res.exit_code == 2 and "--reader" in res.output and "bogus" in res.output
    res = _run(args, env={"EEGCACHE_READER": "zarr"})
    assert res.exit_code == 0, res.output
    assert "available: partial_seizure" in res.output and "per epoch:" in res.output and "epoch 2:" in res.output
    assert load_checkpoint(out / LAST)["config"]["reader"] == "zarr"
    res = _run(["fit", "--cache", synth, "--out", out, "--resume", "--epochs", "3"])
    assert res.exit_code == 1 and "epochs 3 (stored 2)" in res.output
    res = _run(["fit", "--cache", synth, "--out", out, "--resume", "--workers", "1", "--reader", "auto"])
    assert res.exit_code == 0 and "done: 2 epochs" in res.output  # the reader may change on resume: same bytes


def test_evaluate_writes_metrics_predictions_and_plot(trained, synth, tmp_path):
    out, _ = trained
    from trainer.predict import split_recordings

    name = split_recordings(synth, "dev")[0].name
    res = _run(["evaluate", "--cache", synth, "--checkpoint", out / BEST, "--split", "dev", "--out", tmp_path,
                "--plot", name, "--baselines", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["metrics"]["recordings"] == len(split_recordings(synth, "dev"))
    assert data["baselines"]["all_zero"]["event_f1"] == 0
    assert data["baselines"]["all_one"]["event_sensitivity"] == 1
    csvs = sorted(tmp_path.glob("*.csv_bi"))
    assert len(csvs) == data["metrics"]["recordings"]
    for path in csvs:
        parse_annotation(path)  # the predictions read back with the corpus's own parser
        assert path.read_text().startswith(f"# version = csv_v1.0.0\n# bname = {path.stem}\n")
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["split"] == "dev"
    res = _run(["evaluate", "--cache", synth, "--checkpoint", out / BEST, "--split", "dev", "--plot", "nosuch"])
    assert res.exit_code == 1 and "no ingested recording named nosuch" in res.output


def test_python_dash_m_trainer():
    res = subprocess.run([sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "fit" in res.stdout and "sample" in res.stdout and "evaluate" in res.stdout
