"""Smoke test of the benchmark harness: a tiny corpus, one repeat, a 10 k-window index. Speed is never asserted."""

from __future__ import annotations

import copy
import json

import pytest

from bench import braindecode_venv, per_file, report
from bench.__main__ import main, parse_args
from bench.run import BenchConfig
from bench.timing import summary


def test_bench_writes_every_figure(tmp_path, capsys):
    cfg = BenchConfig.quick_config(out=tmp_path, hours=0.1, repeats=1, tusz_windows=5_000, index_windows=10_000,
                                   read_budget_s=0.1, loader_budget_s=0.2, max_batches=2, max_reads=50, per_file_files=6)
    main(config=cfg)
    r = json.loads((tmp_path / "results.json").read_text())

    for key in ("machine", "versions", "corpus", "braindecode", "config", "seconds_total"):
        assert key in r
    assert r["machine"]["cpu_count"] >= 1 and r["versions"]["numpy"]
    w = str(cfg.workers)
    assert set(r["floor"]) == set(r["eegcache"]) == {"1", w}
    for runs in (r["eegcache"]["1"]["runs"], r["eegcache"][w]["runs"]):
        assert runs[0]["rss_mb"]["process"] > 0 and runs[0]["edf_read"] > 0
    for kind in ("npz", "npy"):
        assert set(r["window_caches"][kind]) == {"60", "15", "10"}
        assert r["window_caches"][kind]["10"]["runs"][0]["bytes"] > 0
    strides = r["eegcache_strides"]
    assert set(strides["sizes"]) == {"60", "15", "10"}
    assert all(run["edf_read"] == 0 for run in strides["new_stride"]["runs"] + strides["unchanged"]["runs"])
    assert strides["hash_all_edfs"]["seconds"]["median"] > 0 and strides["unchanged_cli"]["seconds"]["median"] > 0
    counts = r["counts_corpus"]
    # Same windows, same labels: the npz manifest agrees with the index.
    assert counts["npz"]["counts"] == counts["eegcache"]["table"]["counts"] == counts["npy"]["counts"]
    assert set(counts["eegcache"]) == {"view", "table"}
    for n in ("5000", "10000"):
        scaled = r["counts_scaled"][n]
        assert sum(scaled["eegcache"]["table"]["counts"].values()) == int(n)
        assert scaled["npz_manifest"]["load"]["median"] > 0 and "status" in scaled["epoch_draw"]
    assert set(r["reads"]["random_reads"]) == {"eegcache", "eegcache-tensorstore", "eegcache-zarr", "npz", "npy"}
    # the default reader, beside the general ones (dev installs the fast extra)
    assert r["reads"]["reader"] == {"eegcache": "direct", "eegcache-tensorstore": "tensorstore", "eegcache-zarr": "zarr"}
    # braindecode was not asked for: said so, its targets pending, and nothing of its venv touched.
    assert r["braindecode"]["installed"] is False and "--with-braindecode" in r["braindecode"]["note"]
    pending = {t["key"]: t["status"] for t in r["targets"]}
    assert pending["reads_vs_braindecode"] == pending["build_vs_braindecode_1"] == "PENDING"
    assert pending["reads_per_core"] in ("PASS", "MISS")
    assert {"0", "2", w} <= set(r["reads"]["dataloader"]["workers"])
    for by_store in r["reads"]["dataloader"]["workers"].values():
        stores = ("eegcache", "eegcache-collate", "eegcache-tensorstore", "eegcache-zarr", "npz", "npy")
        assert all(by_store[s]["median"] > 0 for s in stores), by_store
    keys = {t["key"] for t in r["targets"]}
    assert {"ingest_vs_floor_1", "ingest_vs_npz_10s", "disk_10s", "counts_10M_table", "counts_tusz_view", "epoch_10M",
            "reads_vs_npz", "reads_vs_npy", "disk_vs_npy", "reingest_unchanged", "noop_cli", "new_stride_no_edf"} <= keys
    assert all(t["status"] in ("PASS", "MISS", "PENDING") for t in r["targets"])
    table = capsys.readouterr().out.rsplit("| Figure |", 1)[1]
    for row in ("Build, EEG-h/s", "Disk per EEG-hour", "Class counts, corpus", "Epoch draw", "Random single-window",
                "DataLoader", "Peak resident memory", "Re-ingest", "Add a new stride", "Per-file overhead: 6 files of 30 s"):
        assert row in table
    pf = r["per_file"]
    assert pf["files"] == pf["corpus"]["edf_files"] == 6 and pf["file_s"] == 30
    assert set(pf["floor"]) == set(pf["eegcache"]) == {"1", w}
    assert all(run["edf_read"] > 0 and run["cpu_seconds"] > 0 for run in pf["eegcache"]["1"]["runs"])
    assert {f"per_file_vs_floor_{n}" for n in ("1", w)} | {f"per_file_overhead_{n}" for n in ("1", w)} <= keys

    _report_with_braindecode(r)


def _report_with_braindecode(r: dict) -> None:
    """The report fills braindecode's column and targets from its figures (made up here: no venv in tests)."""
    r = copy.deepcopy(r)
    w = str(r["config"]["workers"])
    hours = r["floor"]["1"]["runs"][0]["eeg_hours"]
    run = {"seconds": 10.0, "eeg_hours": hours, "bytes": 70_000_000 * hours, "windows": 1, "rss_mb": {"process": 800.0}}
    r["braindecode"] = {"installed": True, "version": "1.8.1", "note": "braindecode 1.8.1",
                        "build": {k: {"seconds": {"median": 10.0, "min": 10.0, "max": 10.0, "runs": [10.0]}, "runs": [run]}
                                  for k in {"1", w}}}
    one = {"median": 5.0, "min": 5.0, "max": 5.0, "runs": [5.0]}
    r["reads"]["braindecode"] = {"random_reads": one, "dataloader": {k: one for k in r["reads"]["dataloader"]["workers"]},
                                 "rss_mb": {"process": 700.0, "workers": 650.0}}
    status = {t.key: t for t in report.targets(r)}
    for key in ("reads_vs_braindecode", "loader_vs_braindecode", "build_vs_braindecode_1", "disk_vs_braindecode"):
        assert status[key].status in ("PASS", "MISS") and status[key].value is not None
    table = report.table(r)
    assert "(n_jobs=1)" in table and "build n_jobs=1: 800 MB" in table and "5 (1 run)" in table


def test_braindecode_venv_absent_is_reported_not_fatal(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EEGCACHE_BENCH_CACHE", str(tmp_path))
    assert braindecode_venv.venv_dir() == tmp_path / "braindecode-venv"
    got = braindecode_venv.status()
    assert got["installed"] is False and "absent" in got["note"]
    assert parse_args(["--quick", "--with-braindecode"]).with_braindecode is True
    assert parse_args(["--quick"]).with_braindecode is False


def _per_file_results(floor_s: list[float], ingest_s: list[float], workers: int = 2, cpu: int = 2) -> dict:
    """Made-up per-file results, shaped as ``bench.per_file.measure`` writes them."""
    def entry(seconds: list[float]) -> dict:
        return {"seconds": summary(seconds), "runs": [{"seconds": x, "eeg_hours": 2.0, "cpu_seconds": x / 2}
                                                      for x in seconds]}

    ws = sorted({"1", str(workers)})
    return {"machine": {"cpu_count": cpu, "cpu_model": "test", "load_average_at_start": None},
            "config": {"repeats": len(floor_s)},
            "per_file": {"files": 1000, "file_s": 30, "corpus": {},
                         "floor": {k: entry(floor_s) for k in ws}, "eegcache": {k: entry(ingest_s) for k in ws}}}


def test_per_file_arithmetic() -> None:
    """Ratio = floor / ingest (medians); overhead = (ingest − floor) / files × workers, workers capped at the cores."""
    r = _per_file_results([10.0, 12.0, 11.0], [16.0, 14.0, 15.0], workers=4, cpu=2)
    f = report.per_file_figures(r)
    assert f["1"]["ratio_to_floor"] == pytest.approx(11 / 15)
    assert f["1"]["overhead_ms_per_file"] == pytest.approx(4.0)  # (15 − 11) s / 1000 files × 1
    assert f["4"]["overhead_ms_per_file"] == pytest.approx(8.0)  # × 2 cores, not 4 workers
    assert f["1"]["ingest_rate"]["median"] == pytest.approx(2.0 / 15)
    assert f["4"]["floor_rate"]["median"] == pytest.approx(2.0 / 11 / 2)
    assert f["1"]["cpu_overhead_ms_per_file"] == pytest.approx(2.0)  # CPU seconds of all processes, not per core
    status = {t.key: t.status for t in report.per_file_targets(r)}
    assert status == {"per_file_vs_floor_1": "MISS", "per_file_overhead_1": "PASS",
                      "per_file_vs_floor_4": "MISS", "per_file_overhead_4": "MISS"}
    fast = {t.key: t.status for t in report.per_file_targets(_per_file_results([10.0], [10.004], workers=1))}
    assert fast == {"per_file_vs_floor_1": "PASS", "per_file_overhead_1": "PASS"}


def test_only_per_file_alone(tmp_path, monkeypatch, capsys) -> None:
    """``--only per-file`` without a previous run reports the per-file figures alone (measure stubbed: no timing)."""
    made = _per_file_results([10.0], [12.0])["per_file"]
    monkeypatch.setattr(per_file, "measure", lambda out, files, workers, *a, **k: {**made, "files": files})
    cfg = parse_args(["--only", "per-file", "--out", str(tmp_path), "--per-file-files", "1000", "--repeats", "1",
                      "--workers", "2"])
    assert (cfg.only, cfg.per_file_files) == ("per-file", 1000)
    r = main(config=cfg)
    assert {t["key"] for t in r["targets"]} == {"per_file_vs_floor_1", "per_file_overhead_1", "per_file_vs_floor_2",
                                                "per_file_overhead_2"}
    assert json.loads((tmp_path / "results.json").read_text())["derived"]["per_file"]["1"]["overhead_ms_per_file"] == \
        pytest.approx(2.0)
    assert "| Per-file overhead: 1,000 files of 30 s, EEG-h/s per core, 1 worker |" in capsys.readouterr().out
    assert parse_args(["--quick"]).per_file_files == 300 and parse_args([]).per_file_files == 2000
