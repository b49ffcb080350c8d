"""Recipes: the shipped files, their round trip through a run's config, flags overriding and recorded, the
seizure-transformer draw (1 / 0.7 / 2.0), read-time window filters, and the reference's evaluation options with the
count of unscored recordings."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import copy_cache
from trainer_fixtures import add_recording, hand_index, migrated_index, real_cache

from eegcache.pipeline.preprocess import window_filter
from eegcache.pipeline.spec import PreprocessSpec, WindowFilter, load_config
from eegcache.recipes import RecipeError, load_recipe, shipped
from trainer.cli import main
from trainer.fit import LAST, TrainConfig, load_checkpoint
from trainer.postprocess import Cover, PostProcess, binarize, stitch


def test_shipped_recipes_and_default_equals_todays_defaults():
    assert {"default", "seizure-transformer"} <= set(shipped())
    default = load_recipe("default")
    assert default.ident == "default/1"
    base = TrainConfig(cache="c", out="o")
    for key, value in default.train_settings().items():
        if key == "pipeline":  # the trainer's default reads the cache's only pipeline
            continue
        assert getattr(base, key) == value, key
    assert load_config(None, recipe=default).spec == PreprocessSpec()
    with pytest.raises(RecipeError, match="no recipe named 'nope'.*seizure-transformer"):
        load_recipe("nope")


def test_seizure_transformer_recipe_values():
    r = load_recipe("seizure-transformer")
    assert r.ident == "seizure-transformer/1"
    t = r.train_settings()
    assert (t["model"], t["optimizer"], t["lr"], t["weight_decay"], t["schedule"], t["grad_clip"]) == (
        "seizure-transformer", "radam", 1e-4, 2e-5, "constant", 0.0)
    assert (t["batch_size"], t["epochs"], t["redraw"], t["precision"]) == (86, 100, "once", "fp32")
    assert (t["window_s"], t["stride_s"], t["threshold"], t["strict_threshold"], t["eval_tail"], t["skip_short"]) == (
        60.0, 15.0, 0.8, True, "zero-pad", True)
    config = load_config(None, recipe=r)
    assert (config.pipeline, config.window_s, config.stride_s) == ("seizure-transformer", 60.0, 15.0)
    spec = config.spec
    assert (spec.montage, spec.chain, spec.resample, spec.bandpass_hz, spec.notch_hz) == (
        "double-banana", "zscore-first", "fft", None, ())
    assert spec.window_filter == WindowFilter((0.5, 120.0), 3, (1.0, 60.0), 30.0)
    # a flag overrides a recipe field
    assert load_config(None, {"stride": 60.0}, recipe=r).stride_s == 60.0


def test_sample_with_the_recipe_draws_1_07_2(tmp_path):
    template = migrated_index(tmp_path / "template")
    hand = hand_index(template, tmp_path / "hand", {1: 100, 2: 100, 0: 300})
    conn = sqlite3.connect(hand.folder / "index.sqlite")
    conn.execute("UPDATE pipelines SET name = 'seizure-transformer'")
    conn.execute("UPDATE window_sets SET stride_s = 15.0, stride_samples = 3840")
    conn.commit()
    conn.close()
    runner = CliRunner()
    res = runner.invoke(main, ["sample", "--cache", str(hand.folder), "--recipe", "seizure-transformer", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["draw"]["drawn"] == {"no_seizure": 200, "partial_seizure": 100, "full_seizure": 70}
    assert data["redraw"] == "once" and data["ratios"] == {"partial": 1.0, "full": 0.7, "background": 2.0}
    again = json.loads(runner.invoke(main, ["sample", "--cache", str(hand.folder), "--recipe", "seizure-transformer",
                                            "--json", "--ids", "--epoch", "3"]).output)
    first = json.loads(runner.invoke(main, ["sample", "--cache", str(hand.folder), "--recipe", "seizure-transformer",
                                            "--json", "--ids"]).output)
    assert sorted(again["draw"]["ids"]) == sorted(first["draw"]["ids"]) and again["draw"]["ids"] != first["draw"]["ids"]
    # a flag overrides the recipe's ratios
    res = runner.invoke(main, ["sample", "--cache", str(hand.folder), "--recipe", "seizure-transformer", "--json",
                               "--ratios", "partial=1,full=0.3,background=2.5"])
    assert json.loads(res.output)["draw"]["drawn"] == {"no_seizure": 250, "partial_seizure": 100, "full_seizure": 30}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small") / "cache"
    recs, _ = real_cache(folder, lengths=(5000, 9000, 20000, 600))
    return folder, recs


@pytest.fixture(scope="module")
def recipe_run(small, tmp_path_factory):
    cache, _ = small
    out = tmp_path_factory.mktemp("runs") / "st"
    args = ["fit", "--cache", str(cache), "--out", str(out), "--recipe", "seizure-transformer", "--pipeline", "default",
            "--window", "4", "--stride", "2", "--model", "tiny", "--epochs", "1", "--batch-size", "2",
            "--max-windows-per-epoch", "4", "--val-split", "none", "--split", "all", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_recipe_round_trips_through_the_run_config(recipe_run):
    out, output = recipe_run
    assert "recipe seizure-transformer/1" in output and "overridden by flags" in output
    state = load_checkpoint(out / LAST)
    stored = state["config"]
    assert stored["recipe"] == "seizure-transformer/1" and stored["recipe_file"].endswith("seizure-transformer.toml")
    overridden = set(stored["overrides"])
    assert overridden == {"pipeline", "window_s", "stride_s", "model", "epochs", "batch_size", "val_split", "split"}
    recipe = load_recipe("seizure-transformer").train_settings()
    for key, value in recipe.items():
        if key not in overridden:
            expected = value if key != "ratios" else "partial=1,full=0.7,background=2"
            assert stored[key] == expected, key
    assert (stored["model"], stored["epochs"], stored["batch_size"], stored["val_split"]) == ("tiny", 1, 2, None)
    config = TrainConfig.from_dict(stored)
    assert config.to_dict() == stored and dataclasses.replace(config) == config
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4  # RAdam, constant: unchanged after the epoch


def test_read_time_filter_equals_the_filter_applied_to_the_stored_window(small, tmp_path):
    cache, recs = small
    wf = WindowFilter((0.5, 120.0), 3, (1.0, 60.0))
    spec = PreprocessSpec(bandpass_hz=None, notch_hz=(), window_filter=wf)
    copy = tmp_path / "cache"
    copy_cache(cache, copy)
    conn = sqlite3.connect(copy / "index.sqlite")
    conn.execute("UPDATE pipelines SET spec_json = ?", (spec.canonical_json(),))
    conn.commit()
    conn.close()
    import eegcache
    from eegcache.torch import WindowDataset as PublicDataset
    from trainer.data import WindowDataset, pipeline_transform

    with eegcache.open(copy) as handle:
        sel = handle.windows(None, 4.0, 2.0)
    public = PublicDataset(sel)
    ours = WindowDataset(copy, sel.ids, selection=sel, read_transform=pipeline_transform(copy, None))
    for i in (0, 3, len(sel) - 1):
        raw, _ = public.read(i)
        expected = window_filter(raw.astype(np.float32), 256.0, wf)
        assert np.array_equal(public[i][0].numpy(), expected)
        assert np.array_equal(ours[i][0].numpy(), expected)
        assert not np.allclose(expected, raw)
    # the stored objects are those of the unfiltered spec: the read-time step is not part of their key
    from eegcache.pipeline import keys

    assert keys.object_key("e" * 64, spec, "l") == keys.object_key("e" * 64, spec.stored(), "l")


def test_cover_zero_pad_and_strict_threshold():
    cover = Cover("zero-pad")
    assert cover.starts(2500, 1000).tolist() == [0, 1000, 2000]
    assert Cover().starts(2500, 1000).tolist() == [0, 1000, 1500]
    probs = np.stack([np.full(1000, 0.1), np.full(1000, 0.2), np.full(1000, 0.3)])
    assert np.allclose(stitch(probs, cover.starts(2500, 1000), 2500)[2000:], 0.3)
    at = np.full(2560, 0.8, dtype=np.float32)
    assert binarize(at, 256.0, PostProcess()).all()
    assert not binarize(at, 256.0, PostProcess(strict=True)).any()


def test_evaluate_counts_the_recordings_it_did_not_score(small, recipe_run, tmp_path):
    cache, _ = small
    out, _ = recipe_run
    conn = sqlite3.connect(cache / "index.sqlite")
    add_recording(conn, "broken", split="train", status="failed", reason="broken.edf: truncated")
    conn.commit()
    conn.close()
    res = CliRunner().invoke(main, ["evaluate", "--cache", str(cache), "--checkpoint", str(out / LAST), "--split",
                                    "all", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)["metrics"]
    # the run's recipe: skip recordings shorter than one window (rec3: 600 samples < 1024)
    assert metrics["unscored"] == {"count": 2, "by_reason": {"failed": 1, "shorter than one window": 1}}
    assert metrics["recordings"] == 3
    res = CliRunner().invoke(main, ["evaluate", "--cache", str(cache), "--checkpoint", str(out / LAST), "--split",
                                    "all", "--no-skip-short", "--tail", "end-aligned"])
    assert res.exit_code == 0, res.output
    assert "not scored: 1 recording(s) of the split (1 failed)" in res.output
