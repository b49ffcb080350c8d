"""The benchmark run: every contender on one corpus, in a fixed order, into one JSON-able dict of raw figures."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import braindecode_venv, contenders, index_scale, machine, per_file, reads
from bench.corpus import SEED, STRIDES_S, WINDOW_S, Corpus, make_corpus
from bench.timing import repeat, run_child, summary
from eegcache.index.db import INDEX_FILE
from eegcache.pipeline import keys
from eegcache.pipeline.spec import PreprocessSpec
from eegcache.pipeline.windows import seconds_to_samples

FS = PreprocessSpec().fs
WINDOW = seconds_to_samples(WINDOW_S, FS)
READ_STRIDE_S = 10.0  # reads, loaders and class counts use the densest window set


@dataclass
class BenchConfig:
    """Everything a run depends on; ``quick()`` is the under-3-minutes variant."""

    out: Path = Path("bench/out")
    hours: float = 20.0
    repeats: int = 3
    seed: int = SEED
    quick: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    tusz_windows: int = 350_000  # TUSZ at 60 s windows / 10 s stride
    index_windows: int = 10_000_000
    batch_size: int = 16
    max_reads: int = 3000
    read_budget_s: float = 3.0  # seconds per random-read run
    max_batches: int = 40
    loader_budget_s: float = 4.0
    only: str | None = None  # "reads" / "per-file": (re-)measure only these figures
    per_file_files: int = 2000  # the per-file-overhead tree: this many TUSZ-shaped files ...
    per_file_s: int = per_file.FILE_S  # ... of this many seconds each
    resume: bool = False  # skip the phases found in OUT/results.partial.json (a run that stopped part-way)
    with_braindecode: bool = False  # make braindecode's venv if absent and run it as a contender

    @classmethod
    def quick_config(cls, **overrides: Any) -> BenchConfig:
        values = {"hours": 2.0, "quick": True, "index_windows": 1_000_000, "read_budget_s": 0.5,
                  "loader_budget_s": 1.0, "max_reads": 1000, "max_batches": 15, "per_file_files": 300}
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _index_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.glob(INDEX_FILE + "*") if p.is_file())


def _cache_sizes(cache: Path) -> dict[str, int]:
    return {"objects": contenders.dir_size(cache / "objects"), "index": _index_bytes(cache),
            "total": contenders.dir_size(cache)}


def _window_set_id(cache: Path, stride_s: float) -> int:
    with sqlite3.connect(cache / INDEX_FILE) as con:
        return con.execute("SELECT id FROM window_sets WHERE window_s = ? AND stride_s = ?",
                           (WINDOW_S, stride_s)).fetchone()[0]


def braindecode_build(recordings: list[dict], folder: Path, n_jobs: int) -> dict[str, Any]:
    """One braindecode build (read, preprocess, window, save) in its own venv: same recordings, spec, windows."""
    spec = PreprocessSpec()
    return braindecode_venv.run("build", {
        "recordings": recordings, "out": str(_fresh(folder)), "fs": spec.fs,
        "bandpass_hz": list(spec.bandpass_hz) if spec.bandpass_hz else None, "notch_hz": list(spec.notch_hz),
        "window": WINDOW, "stride": seconds_to_samples(READ_STRIDE_S, FS), "n_jobs": n_jobs})


def build_contenders(corpus: Corpus, work: Path, cfg: BenchConfig, log: Callable,
                     braindecode_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every timed build, interleaved round by round (floor, eegcache, npz, npy) so that load from other tenants
    of a shared machine drifts over all contenders alike rather than over one of them.

    - floor and eegcache ingest (60 s windows, 10 s stride, fresh cache) run in child processes, each paying its
      own lazy imports (MNE for the TUSZ start-date files), with 1 worker and with all cores;
    - npz / npy caches at 10 s stride with all cores; the last of each and the last 1-worker eegcache cache are
      kept for the read figures; strides 60 and 15 are built once afterwards, for their disk size;
    - with braindecode's venv: braindecode's build (60 s / 10 s) on the recordings eegcache ingested, with
      ``n_jobs`` 1 and all cores, each round; the 1-job folder is kept for the read figures."""
    braindecode_info = braindecode_info or {}
    src = str(corpus.root)
    worker_counts = sorted({1, cfg.workers})
    runs: dict[str, list[dict]] = {}
    bd_installed = bool(braindecode_info.get("installed"))
    bd_recordings: list[dict] | None = None
    for r in range(cfg.repeats):
        for w in worker_counts:
            log(f"round {r + 1}/{cfg.repeats}: floor and eegcache ingest, {w} worker(s)")
            runs.setdefault(f"floor/{w}", []).append(run_child("floor", {"src": src, "workers": w}))
            cache = _fresh(work / f"eegcache-w{w}")
            runs.setdefault(f"eegcache/{w}", []).append(run_child("ingest", {
                "src": src, "cache": str(cache), "workers": w, "window_s": WINDOW_S, "stride_s": READ_STRIDE_S}))
            if bd_recordings is None and bd_installed:
                bd_recordings = braindecode_venv.recordings(cache, PreprocessSpec().channels)
            if bd_installed:
                log(f"round {r + 1}/{cfg.repeats}: braindecode build, n_jobs={w}")
                runs.setdefault(f"braindecode/{w}", []).append(braindecode_build(bd_recordings, work / f"braindecode-j{w}", w))
        for kind in ("npz", "npy"):
            log(f"round {r + 1}/{cfg.repeats}: {kind} cache at {READ_STRIDE_S:g} s stride, {cfg.workers} worker(s)")
            folder = _fresh(work / f"{kind}-s{READ_STRIDE_S:g}")
            runs.setdefault(f"{kind}/{READ_STRIDE_S:g}", []).append(
                contenders.build_window_cache(src, str(folder), kind, READ_STRIDE_S, cfg.workers))
    keep = _fresh(work / "eegcache-s10")
    os.rename(work / "eegcache-w1", keep)
    if bd_installed:
        os.rename(work / "braindecode-j1", _fresh(work / "braindecode-s10"))
        for w in worker_counts[1:]:
            shutil.rmtree(work / f"braindecode-j{w}", ignore_errors=True)
    for w in worker_counts[1:]:
        shutil.rmtree(work / f"eegcache-w{w}", ignore_errors=True)
    one_off = 1 if cfg.quick else cfg.workers  # spawning workers costs seconds: not worth it for a small corpus
    for kind in ("npz", "npy"):
        for stride in STRIDES_S:
            if stride != READ_STRIDE_S:
                log(f"{kind} cache at {stride:g} s stride (disk size), {one_off} worker(s)")
                folder = _fresh(work / f"{kind}-s{stride:g}")
                runs[f"{kind}/{stride:g}"] = [contenders.build_window_cache(src, str(folder), kind, stride, one_off)]
                shutil.rmtree(folder, ignore_errors=True)

    def entry(key: str, **extra: Any) -> dict[str, Any]:
        return {**extra, "seconds": summary([x["seconds"] for x in runs[key]]), "runs": runs[key]}

    if bd_installed:
        braindecode_info["build"] = {str(w): entry(f"braindecode/{w}") for w in worker_counts}
    return {
        "floor": {str(w): entry(f"floor/{w}") for w in worker_counts},
        "eegcache": {str(w): entry(f"eegcache/{w}") for w in worker_counts},
        "window_caches": {kind: {f"{s:g}": entry(f"{kind}/{s:g}", workers=cfg.workers if s == READ_STRIDE_S else one_off)
                                 for s in STRIDES_S} for kind in ("npz", "npy")},
    }


def eegcache_strides(corpus: Corpus, work: Path, workers: int, repeats: int, log: Callable) -> dict[str, Any]:
    """Ingest once at 60 s stride, add 15 s and 10 s from the stored masks (folder size after each), then time
    adding the 10 s set again (after deleting its rows) and re-ingesting the unchanged tree, all with the CLI's
    default of 1 worker; one re-ingest with ``workers``; the CLI itself with nothing to do (start-up and imports
    included); and the bound: sha256 of every EDF."""
    cache = _fresh(work / "eegcache-seq")
    src = str(corpus.root)
    sizes, steps = {}, {}
    for stride in STRIDES_S:
        log(f"eegcache: window set 60 s / {stride:g} s into one cache")
        steps[f"{stride:g}"] = contenders.eegcache_ingest(src, str(cache), 1, WINDOW_S, stride)
        sizes[f"{stride:g}"] = _cache_sizes(cache)
    new_stride = [steps[f"{READ_STRIDE_S:g}"]]
    ws_id = _window_set_id(cache, READ_STRIDE_S)
    for _ in range(repeats - 1):
        with sqlite3.connect(cache / INDEX_FILE) as con:
            con.execute("DELETE FROM windows WHERE window_set_id = ?", (ws_id,))
        new_stride.append(contenders.eegcache_ingest(src, str(cache), 1, WINDOW_S, READ_STRIDE_S))
    log(f"eegcache: re-ingest of the unchanged tree x{repeats}")
    unchanged = [contenders.eegcache_ingest(src, str(cache), 1, WINDOW_S, READ_STRIDE_S) for _ in range(repeats)]
    unchanged_n = contenders.eegcache_ingest(src, str(cache), workers, WINDOW_S, READ_STRIDE_S)
    log(f"eegcache: the CLI with nothing to do, in a fresh process x{repeats}")
    cli = [contenders.eegcache_cli_noop(src, str(cache), WINDOW_S, READ_STRIDE_S) for _ in range(repeats)]
    edfs = corpus.edfs()
    hashing, _ = repeat(lambda: [keys.file_digest(p) for p in edfs], repeats)
    return {
        "sizes": sizes, "steps": steps,
        "new_stride": {"seconds": summary([r["seconds"] for r in new_stride]), "runs": new_stride},
        "unchanged": {"seconds": summary([r["seconds"] for r in unchanged]), "runs": unchanged},
        "unchanged_all_workers": {"workers": workers, **unchanged_n},
        "unchanged_cli": {"seconds": summary(cli)},
        "hash_all_edfs": {"seconds": hashing, "bytes": sum(p.stat().st_size for p in edfs)},
    }


def corpus_counts(work: Path, repeats: int, log: Callable) -> dict[str, Any]:
    """Class counts at corpus size: SQL on the eegcache index; scan-to-manifest and manifest load for npz/npy."""
    log("class counts at corpus size")
    cache = work / "eegcache-s10"
    out: dict[str, Any] = {"eegcache": index_scale.time_counts(cache / INDEX_FILE, _window_set_id(cache, READ_STRIDE_S),
                                                               max(repeats, 5))}
    for kind in ("npz", "npy"):
        folder = work / f"{kind}-s{READ_STRIDE_S:g}"
        scan, runs = repeat(lambda f=folder, k=kind: contenders.build_manifest(f, k, WINDOW), repeats)
        load, counts = repeat(lambda f=folder: contenders.load_manifest_counts(f / contenders.MANIFEST), max(repeats, 5))
        out[kind] = {"scan": scan, "load": load, "counts": counts[-1]}
    return out


def scaled_counts(out_dir: Path, sizes: list[int], proportions: tuple[float, float, float], repeats: int,
                  log: Callable) -> dict[str, Any]:
    """Class counts (and the epoch draw, when the trainer exists) on synthetic indexes of each size."""
    result = {}
    for n in sizes:
        root = out_dir / f"index-{n}"
        log(f"synthetic index of {n:,} windows")
        built = index_scale.build_index(root, n, proportions)
        counts = index_scale.time_counts(root / INDEX_FILE, 1, max(repeats, 5) if n < 2_000_000 else repeats)
        manifest = index_scale.write_manifest(root / "manifest.json", root / INDEX_FILE)
        load, _ = repeat(lambda r=root: contenders.load_manifest_counts(r / "manifest.json"), repeats)
        epoch = index_scale.epoch_draw(root, repeats)
        result[str(n)] = {"index": built, "eegcache": counts, "npz_manifest": {**manifest, "load": load},
                          "epoch_draw": epoch}
    return result


def read_figures(corpus: Corpus, work: Path, cfg: BenchConfig, log: Callable) -> dict[str, Any]:
    """Random single-window reads and DataLoader batches/s, same windows for every store."""
    cache = work / "eegcache-s10"
    stride = seconds_to_samples(READ_STRIDE_S, FS)
    with sqlite3.connect(cache / INDEX_FILE) as con:
        refs = [reads.WindowRef(*row) for row in con.execute(
            "SELECT w.id, d.root || '/' || r.rel_path, r.object_key, w.start_sample, w.label FROM windows w "
            "JOIN recordings r ON r.id = w.recording_id JOIN datasets d ON d.id = r.dataset_id "
            "WHERE w.window_set_id = ? ORDER BY w.id",
            (_window_set_id(cache, READ_STRIDE_S),))]
    from eegcache.store.reader import available_backends

    general = [b for b in ("tensorstore", "zarr") if b in available_backends()]  # beside auto's default
    factories = {
        "eegcache": eegcache_dataset(cache, refs),
        **{f"eegcache-{b}": eegcache_dataset(cache, refs, reader=b) for b in general},
        "npz": lambda: reads.NpzWindows(work / "npz-s10", corpus.root, refs, WINDOW, stride),
        "npy": lambda: reads.NpyWindows(work / "npy-s10", corpus.root, refs, WINDOW, stride),
    }
    bd_folder = work / "braindecode-s10"
    with_bd = bd_folder.is_dir() and braindecode_venv.venv_python().exists()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*factories, *(["braindecode"] if with_bd else [])]}
    for r in range(cfg.repeats):  # rounds interleave the stores, so that load from other tenants falls on all
        for name, make in factories.items():
            log(f"random single-window reads, round {r + 1}/{cfg.repeats}: {name}")
            runs[name].append(reads.random_reads(make, cfg.max_reads, cfg.read_budget_s, 1, cfg.seed, first_run=r))
        if with_bd:
            log(f"random single-window reads, round {r + 1}/{cfg.repeats}: braindecode (its venv)")
            runs["braindecode"].append(braindecode_venv.run("reads", {
                "out": str(bd_folder), "max_reads": cfg.max_reads, "budget_s": cfg.read_budget_s, "repeats": 1,
                "seed": cfg.seed, "first_run": r, "workers": [], "n_batches": {}, "batch_size": cfg.batch_size,
                "loader_budget_s": 0.0})["random_reads"])
    random_reads = {name: {**summary([x["rates"][0] if "rates" in x else x["runs"][0] for x in got]),
                           "reads": [x["reads"][0] for x in got]} for name, got in runs.items()}
    bd_random = random_reads.pop("braindecode", None)
    loader: dict[str, Any] = {"batch_size": cfg.batch_size, "dataset": dataset_note(), "workers": {}}
    for w in sorted({0, 2, cfg.workers}):
        plan = {name: int(min(cfg.max_batches, max(max(1, w), round(
            cfg.loader_budget_s * random_reads[name]["median"] * max(1, w) / cfg.batch_size)))) for name in factories}
        stores = {name: make() for name, make in factories.items()}
        if hasattr(stores["eegcache"], "loader"):  # and the same dataset through DataLoader's default collate
            stores["eegcache-collate"], plan["eegcache-collate"] = reads.PlainCollate(stores["eegcache"]), plan["eegcache"]
        log(f"DataLoader, {w} worker(s): batches {plan} x{cfg.repeats}")
        loader["workers"][str(w)] = reads.loader_rates(stores, WINDOW, w, plan, cfg.batch_size, 5 * cfg.loader_budget_s,
                                                       cfg.repeats, cfg.seed)
    from eegcache.store.reader import choose_backend

    out = {"windows": len(refs), "random_reads": random_reads, "dataloader": loader,
           "reader": {"eegcache": choose_backend(), **{f"eegcache-{b}": b for b in general}}}
    if with_bd:
        out["braindecode"] = {**braindecode_loader(bd_folder, cfg, loader, log), "random_reads": bd_random}
    return out


def braindecode_loader(folder: Path, cfg: BenchConfig, loader: dict[str, Any], log: Callable) -> dict[str, Any]:
    """braindecode's DataLoader batches/s in its venv, as many batches as eegcache was given, and its memory."""
    workers = sorted(int(w) for w in loader["workers"])
    plan = {str(w): loader["workers"][str(w)]["eegcache"]["batches"][0] for w in workers}
    log(f"braindecode: DataLoader, {workers} worker(s), batches {plan} x{cfg.repeats}")
    got = braindecode_venv.run("reads", {
        "out": str(folder), "max_reads": 2, "budget_s": 0.0, "repeats": 1, "seed": cfg.seed, "workers": workers,
        "n_batches": plan, "batch_size": cfg.batch_size, "loader_budget_s": 5 * cfg.loader_budget_s,
        "loader_repeats": cfg.repeats})
    got.pop("random_reads")
    got["dataloader"] = {w: {**summary(v["rates"]), "batches": v["batches"]} for w, v in got["dataloader"].items()}
    return got


def trainer_dataset() -> Any:
    """``trainer.data.WindowDataset`` when the trainer provides it, else None."""
    try:
        from trainer.data import WindowDataset
    except ImportError:
        return None
    return WindowDataset


def eegcache_dataset(cache: Path, refs: list[reads.WindowRef], reader: str | None = None) -> Callable[[], Any]:
    """A factory of the eegcache dataset: the trainer's own when it exists, the bench's minimal one otherwise;
    ``reader`` None is the default window reader (``auto``), else a backend by name (eegcache.store.reader)."""
    cls = trainer_dataset()
    if cls is None:
        return lambda: reads.EegcacheWindows(cache, refs, WINDOW, reader)
    ids = [r.window_id for r in refs]
    return lambda: cls(cache, ids, reader=reader)


def dataset_note() -> str:
    if trainer_dataset() is not None:
        return ("eegcache: trainer.data.WindowDataset through its loader() (eegcache-collate: the same dataset in "
                "DataLoader with the default collate); npz/npy: bench.reads minimal map-style datasets")
    return "bench.reads minimal map-style datasets (trainer.data does not exist yet)"


def run_all(cfg: BenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run every figure; returns the raw results (``report`` turns them into targets and the table).

    After each phase the results so far are written to ``OUT/results.partial.json``; with ``cfg.resume`` a run of
    the same corpus skips the phases found there (their caches are still in ``OUT/work``)."""
    t_start = time.perf_counter()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    partial = out / "results.partial.json"
    log(f"corpus: {cfg.hours:g} EEG-hours, seed {cfg.seed}")
    t0 = time.perf_counter()
    corpus = make_corpus(out, cfg.hours, cfg.seed)
    results: dict[str, Any] = {}
    if cfg.resume and partial.is_file():
        old = json.loads(partial.read_text())
        if (old["config"]["hours"], old["config"]["seed"]) == (cfg.hours, cfg.seed):
            results = old
            log(f"resuming from {partial}: {', '.join(k for k in PHASES if k in results)} done")
    if not results:
        results = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "config": cfg.to_dict(),
            "machine": machine.machine(), "versions": machine.versions(),
            "corpus": {**corpus.to_dict(), "prepare_seconds": time.perf_counter() - t0},
            "braindecode": braindecode_venv.ensure(log) if cfg.with_braindecode else {
                "installed": False, "requested": False,
                "note": "braindecode: not measured (run with --with-braindecode)"},
        }

    def phase(key: str, fn: Callable[[], dict[str, Any]]) -> None:
        if key in results:
            return
        results.update(fn())
        partial.write_text(json.dumps(results, default=str))

    def builds() -> dict[str, Any]:
        built = build_contenders(corpus, work, cfg, log, results["braindecode"])
        return {**built, "eegcache_s10_sizes": _cache_sizes(work / "eegcache-s10")}

    def scaled() -> dict[str, Any]:
        eeg_counts = results["counts_corpus"]["eegcache"]["table"]["counts"]
        total = sum(eeg_counts.values()) or 1
        proportions = tuple(eeg_counts.get(k, 0) / total for k in ("no_seizure", "partial_seizure", "full_seizure"))
        if min(proportions) == 0:  # a corpus too small to have every class: TUSZ-like defaults
            proportions = (0.87, 0.09, 0.04)
        sizes = [cfg.tusz_windows, cfg.index_windows]
        return {"counts_scaled": scaled_counts(out, sizes, proportions, cfg.repeats, log)}

    phase("eegcache", builds)
    phase("eegcache_strides", lambda: {"eegcache_strides": eegcache_strides(corpus, work, cfg.workers, cfg.repeats, log)})
    phase("counts_corpus", lambda: {"counts_corpus": corpus_counts(work, cfg.repeats, log)})
    phase("counts_scaled", scaled)
    phase("reads", lambda: {"reads": read_figures(corpus, work, cfg, log)})
    phase("per_file", lambda: {"per_file": per_file_figures(cfg, log)})
    results["corpus"]["processed_eeg_hours"] = results["floor"]["1"]["runs"][0]["eeg_hours"]
    results["corpus"]["windows_at_10s_stride"] = results["reads"]["windows"]
    results["machine"]["load_average_at_end"] = machine.load_average()
    results["seconds_total"] = results.get("seconds_total", 0.0) + time.perf_counter() - t_start
    partial.unlink(missing_ok=True)
    return results


PHASES = ("eegcache", "eegcache_strides", "counts_corpus", "counts_scaled", "reads", "per_file")


def per_file_figures(cfg: BenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """The per-file overhead: ``cfg.per_file_files`` files of ``cfg.per_file_s`` s, floor and ingest, 1 worker and
    all cores (``bench.per_file``)."""
    return per_file.measure(Path(cfg.out).resolve(), cfg.per_file_files, cfg.workers, cfg.repeats, log,
                            cfg.per_file_s, cfg.seed)


def rerun_per_file(cfg: BenchConfig, results: dict[str, Any] | None, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """The per-file figures alone, merged into a previous run's results when there is one (same ``--out``)."""
    if results is None:
        results = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "config": cfg.to_dict(),
                   "machine": machine.machine(), "versions": machine.versions()}
    else:
        results.setdefault("reruns", []).append({"what": "per-file", "at": datetime.now(UTC).isoformat(
            timespec="seconds"), "load_average": machine.load_average()})
    results["per_file"] = per_file_figures(cfg, log)
    results["machine"]["load_average_at_end"] = machine.load_average()
    return results


def rerun_reads(cfg: BenchConfig, results: dict[str, Any], log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Measure the read figures again on the caches a previous run left in ``OUT/work`` (same corpus)."""
    out = Path(cfg.out).resolve()
    corpus = make_corpus(out, cfg.hours, cfg.seed)
    results["reads"] = read_figures(corpus, out / "work", cfg, log)
    results.setdefault("reruns", []).append({"what": "reads", "at": datetime.now(UTC).isoformat(timespec="seconds"),
                                             "load_average": machine.load_average()})
    return results
