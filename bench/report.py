"""From raw results to figures: derived rates, the issue's targets (PASS / MISS / PENDING) and the Markdown table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.timing import summary

TEN_M = 10_000_000


@dataclass(frozen=True)
class Target:
    key: str
    text: str  # what the issue asks
    value: float | None  # the measured ratio or seconds (medians)
    limit: float
    higher_is_better: bool
    detail: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "PENDING"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "PASS" if ok else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "target": self.text, "value": self.value, "limit": self.limit,
                "higher_is_better": self.higher_is_better, "status": self.status, "detail": self.detail}


# --- formatting ---------------------------------------------------------------------------------------------------


def num(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def secs(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def spread(s: dict[str, Any], fmt=num) -> str:
    """``median (min–max)``; just the median for a single run."""
    if s.get("median") is None:
        return "—"
    if len(s.get("runs", [])) <= 1:
        return f"{fmt(s['median'])} (1 run)"
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def mb(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e6:,.1f} MB"


# --- derived figures ----------------------------------------------------------------------------------------------


def hours(results: dict) -> float:
    """EEG-hours every contender processed (recordings that eegcache can ingest with the default spec)."""
    return results["floor"]["1"]["runs"][0]["eeg_hours"]


def rates(runs: list[dict], eeg_hours: float, cores: int) -> dict[str, Any]:
    """EEG-hours per second per core of each run."""
    return summary([eeg_hours / r["seconds"] / cores for r in runs])


def derived(results: dict) -> dict[str, Any]:
    """Per-core throughputs, bytes per EEG-hour, read ratios: the numbers the table and targets use."""
    h = hours(results)
    cpu = results["machine"]["cpu_count"] or 1
    d: dict[str, Any] = {"eeg_hours": h, "throughput": {}, "disk_per_hour": {}}
    for name in ("floor", "eegcache"):
        for w, entry in results[name].items():
            d["throughput"][f"{name}/{w}"] = rates(entry["runs"], h, min(int(w), cpu))
    workers = results["config"]["workers"]
    for kind, by_stride in results["window_caches"].items():
        d["throughput"][f"{kind}/{workers}"] = rates(by_stride["10"]["runs"], h, min(workers, cpu))
        for stride, entry in by_stride.items():
            d["disk_per_hour"][f"{kind}/{stride}"] = entry["runs"][-1]["bytes"] / h
    bd = results.get("braindecode", {})
    for w, entry in bd.get("build", {}).items():
        d["throughput"][f"braindecode/{w}"] = summary([r["eeg_hours"] / r["seconds"] / min(int(w), cpu)
                                                       for r in entry["runs"]])
        d["disk_per_hour"]["braindecode/10"] = entry["runs"][-1]["bytes"] / (entry["runs"][-1]["eeg_hours"] or 1)
    for stride, size in results["eegcache_strides"]["sizes"].items():
        d["disk_per_hour"][f"eegcache/{stride}"] = size["total"] / h
        d["disk_per_hour"][f"eegcache-objects/{stride}"] = size["objects"] / h
    if "per_file" in results:
        d["per_file"] = per_file_figures(results)
    return d


def per_file_figures(results: dict) -> dict[str, dict[str, Any]]:
    """The per-file-overhead figures by worker count (``bench.per_file``), from the medians: EEG-h/s per core of
    ingest and of the floor on the same short files, their ratio, and the overhead in ms per file,
    ``(ingest − floor) / files × workers`` (workers capped at the cores: a worker waiting for a core adds no work)."""
    pf = results["per_file"]
    cpu = results["machine"]["cpu_count"] or 1
    out = {}
    for w, ing in pf["eegcache"].items():
        flo = pf["floor"][w]
        cores = min(int(w), cpu)
        hours = flo["runs"][0]["eeg_hours"]  # what both processed: the files eegcache can ingest
        t_ing, t_floor = ing["seconds"]["median"], flo["seconds"]["median"]
        out[w] = {
            "workers": int(w), "files": pf["files"], "file_s": pf["file_s"], "eeg_hours": hours,
            "ingest_seconds": t_ing, "floor_seconds": t_floor,
            "ingest_rate": rates(ing["runs"], hours, cores), "floor_rate": rates(flo["runs"], hours, cores),
            "ratio_to_floor": t_floor / t_ing,
            "overhead_ms_per_file": (t_ing - t_floor) / pf["files"] * cores * 1e3,
        }
        cpu_s = [statistics.median(r["cpu_seconds"] for r in e["runs"]) for e in (ing, flo) if "cpu_seconds" in e["runs"][0]]
        if len(cpu_s) == 2:  # CPU overhead per file: steadier on a shared machine, blind to waits (fsync, locks)
            out[w]["cpu_overhead_ms_per_file"] = (cpu_s[0] - cpu_s[1]) / pf["files"] * 1e3
    return out


def per_file_targets(results: dict) -> list[Target]:
    """≥ 0.8× the floor and ≤ 5 ms of overhead per file on the short-file tree, per worker count."""
    out = []
    for w, f in per_file_figures(results).items():
        what = f"{f['files']:,} files of {f['file_s']} s, {w} worker{'s' if int(w) > 1 else ''}"
        detail = (f"ingest {secs(f['ingest_seconds'])} vs floor {secs(f['floor_seconds'])}; "
                  f"{f['overhead_ms_per_file']:.1f} ms overhead per file")
        if "cpu_overhead_ms_per_file" in f:
            detail += f" ({f['cpu_overhead_ms_per_file']:.1f} ms of it CPU)"
        out.append(Target(f"per_file_vs_floor_{w}", f"per-file: ingest ≥ 0.8× the floor ({what})", f["ratio_to_floor"], 0.8,
                          True, detail))
        out.append(Target(f"per_file_overhead_{w}", f"per-file overhead ≤ 5 ms per file ({what})",
                          f["overhead_ms_per_file"], 5.0, False, detail))
    return out


def per_file_rows(results: dict) -> list[tuple[str, str, str, list[str]]]:
    """(figure, eegcache cell, floor cell, target keys) of the per-file rows."""
    rows = []
    for w, f in per_file_figures(results).items():
        rows.append((f"Per-file overhead: {f['files']:,} files of {f['file_s']} s, EEG-h/s per core, "
                     f"{w} worker{'s' if int(w) > 1 else ''}",
                     f"{spread(f['ingest_rate'])}; {f['ratio_to_floor']:.2f}× the floor, "
                     f"{f['overhead_ms_per_file']:.1f} ms per file over it", spread(f["floor_rate"]),
                     [f"per_file_vs_floor_{w}", f"per_file_overhead_{w}"]))
    return rows


def per_file_report(results: dict) -> str:
    """The per-file figures alone (``python -m bench --only per-file`` without a full run's results)."""
    ts = {t.key: t for t in per_file_targets(results)}
    m = results["machine"]
    lines = [f"Machine: {m['cpu_count']} × {m['cpu_model']}; load average (1/5/15 min) "
             f"{m.get('load_average_at_start')} at start, {m.get('load_average_at_end')} at end.",
             f"Repeats: {results['config']['repeats']} (median, min–max).", ""]
    lines += [f"- **{t.status}** {t.text}: {num(t.value)} — {t.detail}" for t in ts.values()]
    lines += ["", "| Figure | eegcache | floor (read + preprocess) | Target |", "|---|---|---|---|"]
    lines += [f"| {fig} | {eeg} | {floor} | {_tcell(ts, *keys)} |" for fig, eeg, floor, keys in per_file_rows(results)]
    return "\n".join(lines)


def _median(s: dict) -> float | None:
    return s.get("median")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def _big(results: dict) -> tuple[str, dict]:
    key = str(results["config"]["index_windows"])
    return key, results["counts_scaled"][key]


def targets(results: dict) -> list[Target]:
    """The issue's targets, measured on this run (medians)."""
    d = derived(results)
    t = d["throughput"]
    workers = results["config"]["workers"]
    out = [
        Target("ingest_vs_floor_1", "ingest ≥ 0.8× the floor (1 worker)",
               _ratio(_median(t["eegcache/1"]), _median(t["floor/1"])), 0.8, True),
    ]
    if workers != 1:
        out.append(Target(f"ingest_vs_floor_{workers}", f"ingest ≥ 0.8× the floor ({workers} workers)",
                          _ratio(_median(t[f"eegcache/{workers}"]), _median(t[f"floor/{workers}"])), 0.8, True))
    out.append(Target("ingest_vs_npz_10s", f"ingest ≥ 3× the npz pipeline at 10 s stride ({workers} workers)",
                      _ratio(_median(t[f"eegcache/{workers}"]), _median(t[f"npz/{workers}"])), 3.0, True))
    for stride, size in results["eegcache_strides"]["sizes"].items():
        out.append(Target(f"disk_{stride}s", f"disk ≤ 1.1× the stored signal + mask at {stride} s stride",
                          size["total"] / size["objects"], 1.1, False,
                          f"{mb(size['total'])} total, {mb(size['objects'])} objects"))
    tusz_key = str(results["config"]["tusz_windows"])
    tusz = results["counts_scaled"][tusz_key]["eegcache"]
    big_key, big = _big(results)
    scale = int(tusz_key) / int(big_key)
    for q in ("table", "view"):
        out.append(Target(f"counts_tusz_{q}", f"class counts ≤ 50 ms at {int(tusz_key):,} windows ({q} query)",
                          _median(tusz[q]), 0.05, False))
        out.append(Target(f"counts_tusz_{q}_est", f"class counts ≤ 50 ms at {int(tusz_key):,} windows ({q} query, "
                          f"linear estimate from {int(big_key):,})", _median(big["eegcache"][q]) * scale, 0.05, False))
        est = "" if int(big_key) == TEN_M else f" (estimated ×{TEN_M / int(big_key):g} from {int(big_key):,})"
        out.append(Target(f"counts_10M_{q}", f"class counts ≤ 1 s at 10 M windows ({q} query){est}",
                          _median(big["eegcache"][q]) * TEN_M / int(big_key), 1.0, False))
    epoch = big["epoch_draw"]
    est = "" if int(big_key) == TEN_M else f" (measured at {int(big_key):,})"
    first = epoch.get("first_epoch", {}).get("median")
    later = epoch.get("draw_only", {}).get("median")
    out.append(Target("epoch_10M", f"epoch draw ≤ 1 s at 10 M windows (a later epoch: numpy only){est}", later, 1.0,
                      False, epoch.get("status", "")))
    out.append(Target("epoch_10M_first", f"epoch draw ≤ 1 s at 10 M windows (first epoch: per-class id queries + "
                      f"draw){est}", first, 1.0, False, epoch.get("status", "")))
    rr = results["reads"]["random_reads"]
    out.append(Target("reads_vs_npz", "random window reads ≥ 100× the compressed npz",
                      _ratio(_median(rr["eegcache"]), _median(rr["npz"])), 100.0, True))
    out.append(Target("reads_vs_npy", "random window reads ≥ 0.5× the memory-mapped npy",
                      _ratio(_median(rr["eegcache"]), _median(rr["npy"])), 0.5, True))
    read_cache = results["eegcache_s10_sizes"]["total"]
    npy_bytes = results["window_caches"]["npy"]["10"]["runs"][-1]["bytes"]
    out.append(Target("disk_vs_npy", "… at ≤ 0.6× the npy cache's disk size (10 s stride)",
                      _ratio(read_cache, npy_bytes), 0.6, False))
    out += braindecode_targets(results)
    if "per_file" in results:
        out += per_file_targets(results)
    s = results["eegcache_strides"]
    out.append(Target("reingest_unchanged", "re-ingest of an unchanged tree ≤ hashing every EDF byte",
                      _ratio(_median(s["unchanged"]["seconds"]), _median(s["hash_all_edfs"]["seconds"])), 1.0, False,
                      f"EDFs read: {[r['edf_read'] for r in s['unchanged']['runs']]}"))
    if "unchanged_cli" in s:
        out.append(Target("noop_cli", "`eegcache ingest` with nothing to do ≤ 0.5 s wall (a fresh process)",
                          _median(s["unchanged_cli"]["seconds"]), 0.5, False))
    out.append(Target("new_stride_no_edf", "a new stride reads no EDF (EDF files read)",
                      float(max(r["edf_read"] for r in s["new_stride"]["runs"])), 0.0, False))
    return out


def braindecode_targets(results: dict) -> list[Target]:
    """Issue 15's targets against braindecode (PENDING where braindecode was not measured) and the per-core read
    rate, which needs no braindecode."""
    rr = results["reads"]["random_reads"]
    reader = results["reads"].get("reader", {}).get("eegcache", "zarr")
    bd = results.get("braindecode", {})
    bdr = results["reads"].get("braindecode", {})
    workers = results["config"]["workers"]
    out = [Target("reads_per_core", f"random window reads ≥ 1,500/s per core, page cache warm (reader: {reader})",
                  _median(rr["eegcache"]), 1500.0, True,
                  f"zarr-python fallback {num(_median(rr.get('eegcache-zarr', {})))}/s")]
    out.append(Target("reads_vs_braindecode", "random window reads ≥ 2× braindecode's lazy reads",
                      _ratio(_median(rr["eegcache"]), _median(bdr.get("random_reads", {}))), 2.0, True,
                      "zarr-python fallback: "
                      f"{num(_ratio(_median(rr.get('eegcache-zarr', {})), _median(bdr.get('random_reads', {}))))}×"))
    dl, bdl = results["reads"]["dataloader"]["workers"], bdr.get("dataloader", {})
    if "2" in dl:
        out.append(Target("loader_vs_braindecode", "DataLoader batches/s ≥ 2× braindecode's (batch 16, 2 workers)",
                          _ratio(_median(dl["2"]["eegcache"]), _median(bdl.get("2", {}))), 2.0, True))
    build = bd.get("build", {})
    for w in sorted({1, workers}):
        e, b = results["eegcache"][str(w)]["seconds"], build.get(str(w), {}).get("seconds", {})
        out.append(Target(f"build_vs_braindecode_{w}", f"build ≤ 0.6× braindecode's time ({w} worker(s) / n_jobs={w})",
                          _ratio(_median(e), _median(b)), 0.6, False,
                          "" if not b else f"{secs(_median(e))} vs {secs(_median(b))}"))
    if build:
        d = derived(results)["disk_per_hour"]
        out.append(Target("disk_vs_braindecode", "disk ≤ braindecode's (60 s windows / 10 s stride)",
                          _ratio(d["eegcache/10"], d["braindecode/10"]), 1.0, False,
                          f"{mb(d['eegcache/10'])} vs {mb(d['braindecode/10'])} per EEG-hour"))
    else:
        out.append(Target("disk_vs_braindecode", "disk ≤ braindecode's (60 s windows / 10 s stride)", None, 1.0, False))
    return out


# --- the table ----------------------------------------------------------------------------------------------------


def _tcell(ts: dict[str, Target], *keys: str) -> str:
    parts = []
    for k in keys:
        if k in ts:
            v = ts[k].value
            parts.append(f"{ts[k].text.split(' (')[0]}: **{ts[k].status}**" + ("" if v is None else f" ({num(v)})"))
    return "; ".join(parts) or "—"


def table(results: dict) -> str:
    """The Markdown table: a row per figure, a column per contender, the target beside it."""
    d = derived(results)
    ts = {t.key: t for t in targets(results)}
    t = d["throughput"]
    w = results["config"]["workers"]
    bd = results["braindecode"]
    measured = "build" in bd
    bdr = results["reads"].get("braindecode", {})
    rows: list[list[str]] = []

    def row(figure: str, eeg: str, npz: str, npy: str, floor: str, target: str, bdc: str = "—") -> None:
        rows.append([figure, eeg, npz, npy, bdc if measured or rows else bd["note"], floor, target])

    def bd_build(workers: int) -> str:
        return spread(t[f"braindecode/{workers}"]) + f" (n_jobs={workers})" if f"braindecode/{workers}" in t else "—"

    row("Build, EEG-h/s per core, 1 worker", spread(t["eegcache/1"]), "—", "—", spread(t["floor/1"]),
        _tcell(ts, "ingest_vs_floor_1", "build_vs_braindecode_1"), bd_build(1))
    if w != 1:
        row(f"Build, EEG-h/s per core, {w} workers (npz/npy incl. manifest)", spread(t[f"eegcache/{w}"]),
            spread(t[f"npz/{w}"]), spread(t[f"npy/{w}"]), spread(t[f"floor/{w}"]),
            _tcell(ts, f"ingest_vs_floor_{w}", "ingest_vs_npz_10s", f"build_vs_braindecode_{w}"), bd_build(w))
    for stride in ("60", "15", "10"):
        bd_disk = mb(d["disk_per_hour"].get("braindecode/10")) if stride == "10" else "—"
        row(f"Disk per EEG-hour, 60 s windows / {stride} s stride", mb(d["disk_per_hour"][f"eegcache/{stride}"]),
            mb(d["disk_per_hour"].get(f"npz/{stride}")), mb(d["disk_per_hour"].get(f"npy/{stride}")), "—",
            _tcell(ts, f"disk_{stride}s", *(("disk_vs_braindecode",) if stride == "10" else ())), bd_disk)
    cc = results["counts_corpus"]
    n_corpus = sum(cc["eegcache"]["table"]["counts"].values())
    row(f"Class counts, corpus ({n_corpus:,} windows)",
        f"table {spread(cc['eegcache']['table'], secs)} · view {spread(cc['eegcache']['view'], secs)}",
        f"scan {spread(cc['npz']['scan'], secs)} · load json {spread(cc['npz']['load'], secs)}",
        f"scan {spread(cc['npy']['scan'], secs)} · load json {spread(cc['npy']['load'], secs)}", "—", "—")
    for key, entry in sorted(results["counts_scaled"].items(), key=lambda kv: int(kv[0])):
        e = entry["eegcache"]
        if key == str(results["config"]["index_windows"]):
            tkeys = ("counts_10M_table", "counts_10M_view", "counts_tusz_table_est", "counts_tusz_view_est")
        else:
            tkeys = ("counts_tusz_table", "counts_tusz_view")
        row(f"Class counts, synthetic index of {int(key):,} windows",
            f"table {spread(e['table'], secs)} · view {spread(e['view'], secs)}",
            f"load json {spread(entry['npz_manifest']['load'], secs)}", "—", "—", _tcell(ts, *tkeys))
    big_key, big = _big(results)
    ep = big["epoch_draw"]
    ep_cell = ep.get("status", "—") if "first_epoch" not in ep else (
        f"first epoch {spread(ep['first_epoch'], secs)} · later draw {spread(ep['draw_only'], secs)} "
        f"({ep['epoch_windows']:,} windows)")
    row(f"Epoch draw (trainer), balanced, {int(big_key):,} windows", ep_cell, "—", "—", "—",
        _tcell(ts, "epoch_10M", "epoch_10M_first"))
    rr = results["reads"]["random_reads"]
    reader = results["reads"].get("reader", {}).get("eegcache", "zarr")

    def eeg(by: dict) -> str:
        cell = f"{spread(by['eegcache'])} ({reader})"
        for backend, label in (("tensorstore", "tensorstore"), ("zarr", "zarr-python"),
                               ("collate", "DataLoader(ds), default collate")):
            if f"eegcache-{backend}" in by:
                cell += f" · {label} {spread(by[f'eegcache-{backend}'])}"
        return cell

    row("Random single-window reads/s, one process", eeg(rr), spread(rr["npz"]), spread(rr["npy"]), "—",
        _tcell(ts, "reads_vs_npz", "reads_vs_npy", "disk_vs_npy", "reads_per_core", "reads_vs_braindecode"),
        spread(bdr["random_reads"]) if "random_reads" in bdr else "—")
    dl = results["reads"]["dataloader"]
    for workers, by in dl["workers"].items():
        label = f"{workers} workers" + (" (all cores)" if int(workers) == w else "")
        bdc = bdr.get("dataloader", {}).get(workers)
        row(f"DataLoader batches/s (batch {dl['batch_size']}), {label}", eeg(by), spread(by["npz"]),
            spread(by["npy"]), "—", _tcell(ts, "loader_vs_braindecode") if workers == "2" else "—",
            spread(bdc) if bdc else "—")
    wc = results["window_caches"]

    def rss(name: str) -> str:
        cell = f"1 worker {num(max(r['rss_mb']['process'] for r in results[name]['1']['runs']))} MB"
        if w != 1:
            cell += f" · {w} workers: {num(max(r['rss_mb']['workers'] for r in results[name][str(w)]['runs']))} MB each"
        return cell

    row("Peak resident memory per worker (largest process of a run)", rss("eegcache"),
        f"{w} workers: {num(max(r['worker_peak_rss_mb'] or 0 for r in wc['npz']['10']['runs']))} MB each",
        f"{w} workers: {num(max(r['worker_peak_rss_mb'] or 0 for r in wc['npy']['10']['runs']))} MB each", rss("floor"),
        "—", bd_rss(results))
    s = results["eegcache_strides"]
    un = s["unchanged_all_workers"]
    row("Re-ingest of the unchanged tree (1 worker, the CLI default)",
        f"{spread(s['unchanged']['seconds'], secs)}; {un['workers']} workers: {secs(un['seconds'])}"
        + (f"; the CLI in a fresh process {spread(s['unchanged_cli']['seconds'], secs)}" if "unchanged_cli" in s else ""),
        "no reuse: full rebuild", "no reuse: full rebuild",
        f"sha256 of every EDF: {spread(s['hash_all_edfs']['seconds'], secs)}", _tcell(ts, "reingest_unchanged", "noop_cli"))
    edf_read = max(r["edf_read"] for r in s["new_stride"]["runs"])
    row("Add a new stride (10 s to a cache with 60 s and 15 s)",
        f"{spread(s['new_stride']['seconds'], secs)}, EDFs read: {edf_read}",
        f"rebuild: {spread(wc['npz']['10']['seconds'], secs)}", f"rebuild: {spread(wc['npy']['10']['seconds'], secs)}",
        "—", _tcell(ts, "new_stride_no_edf"))
    if "per_file" in results:
        for figure, eeg_cell, floor_cell, keys in per_file_rows(results):
            row(figure, eeg_cell, "—", "—", floor_cell, _tcell(ts, *keys))
    header = ["Figure", "eegcache", "npz (compressed)", "npy (mmap)", "braindecode", "floor (read + preprocess)",
              "Target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def bd_rss(results: dict) -> str:
    """braindecode's largest build process, and its loader workers (the largest of the read child's workers)."""
    build = results["braindecode"].get("build")
    if not build:
        return "—"
    cells = [f"build n_jobs={w}: {num(max(r['rss_mb']['process'] for r in e['runs']))} MB" for w, e in build.items()]
    bdr = results["reads"].get("braindecode", {})
    if "rss_mb" in bdr:
        cells.append(f"reads: {num(bdr['rss_mb']['process'])} MB, loader workers {num(bdr['rss_mb']['workers'])} MB")
    return " · ".join(cells)


def summary_lines(results: dict) -> str:
    """Corpus, machine and the PASS/MISS list, printed above the table."""
    c, m, v = results["corpus"], results["machine"], results["versions"]
    lines = [
        f"Corpus: {c['eeg_hours_total']:.2f} EEG-hours in {c['edf_files']} EDFs ({c['bytes'] / 1e6:,.0f} MB), "
        f"{c.get('processed_eeg_hours', 0):.2f} h ingestable with the default spec; "
        f"{c.get('windows_at_10s_stride', 0):,} windows at 60 s / 10 s.",
        f"Machine: {m['cpu_count']} × {m['cpu_model']}, {m['memory_gib']} GiB; load average (1/5/15 min) "
        f"{m.get('load_average_at_start')} at start, {m.get('load_average_at_end')} at end.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"Repeats: {results['config']['repeats']} (median, min–max); total {results['seconds_total']:.0f} s.",
        "",
    ]
    lines += [f"- **{t.status}** {t.text}: {num(t.value)}" + (f" — {t.detail}" if t.detail else "")
              for t in targets(results)]
    return "\n".join(lines)
