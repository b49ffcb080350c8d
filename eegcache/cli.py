"""The ``eegcache`` command line: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import csv
import gc as garbage  # `gc` is the command below
import json
import sys
from decimal import Decimal
from pathlib import Path

import click

from eegcache.errors import InputError
from eegcache.index.db import (
    INDEX_FILE,
    IndexError_,
    current_revision,
    head_revision,
    open_index,
    open_index_for_reading,
)

cache_option = click.option(
    "--cache", "cache", required=True, type=click.Path(file_okay=False, path_type=Path),
    envvar="EEGCACHE_CACHE", help="Cache folder (index.sqlite + objects/). Env: EEGCACHE_CACHE.",
)


db_option = click.option(
    "--db", "db_url", envvar="EEGCACHE_DB", default=None, metavar="URL",
    help="SQLAlchemy URL of the index (e.g. postgresql://user@host/db, psycopg 3). Default: CACHE/index.sqlite. "
         "Env: EEGCACHE_DB.",
)


store_option = click.option(
    "--store", "store_url", envvar="EEGCACHE_STORE", default=None, metavar="URL",
    help="Where objects live: a folder (default: the cache folder) or s3://bucket/prefix. Env: EEGCACHE_STORE.",
)


claim_lease_option = click.option(
    "--claim-lease", "claim_lease", type=click.FloatRange(min=1.0), envvar="EEGCACHE_CLAIM_LEASE_S", default=None,
    metavar="SECONDS", help="How long this run's claims on files outlive it if it dies, before another run may take "
                            "them over (default 300; keep it longer than the slowest file). Env: EEGCACHE_CLAIM_LEASE_S.",
)


def _open(cache: Path, db_url: str | None = None, *, create: bool = False, read_only: bool = False):
    """The index engine; ``read_only`` commands also open a cache this user cannot write (see
    ``open_index_for_reading``); the others refuse such a cache with a message."""
    if not create and db_url is None and not (cache / INDEX_FILE).is_file():
        raise click.ClickException(f"{cache} is not an eegcache cache (no {INDEX_FILE}); run eegcache ingest first")
    try:
        return open_index_for_reading(cache, db_url) if read_only else open_index(cache, db_url)
    except IndexError_ as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. an unreachable database server
        raise click.ClickException(f"cannot open the index: {exc}") from None


def _jsonable(value):
    if isinstance(value, Decimal):  # PostgreSQL numeric
        return float(value)
    return str(value)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=_jsonable))


def _table(columns: list[str], rows: list) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eegcache")
def main() -> None:
    """Content-addressed cache of preprocessed EEG windows with a transactional SQL index."""


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@cache_option
@db_option
@store_option
@click.option("--window", type=float, help="Window length in seconds (default 60).")
@click.option("--stride", type=float, help="Stride between window starts in seconds (default 60).")
@click.option("--workers", type=click.IntRange(1, 256), help="Preprocessing worker processes (default 1).")
@click.option("--recipe", metavar="NAME|FILE",
              help="A recipe (shipped: default, seizure-transformer; or a recipe file): the pipeline's name, montage, "
                   "preprocessing and window set. --config and flags override its fields.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file: [preprocess] settings and window/stride/workers.")
@click.option("--fs", type=float, help="Target sampling rate in Hz (default 256).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), help="Stored signal type (default float32).")
@click.option("--missing-electrodes", type=click.Choice(["fail", "zero"]),
              help="A recording lacking a required electrode fails (default) or gets a zero-filled channel.")
@click.option("--montage", type=click.Choice(["referential", "average", "double-banana", "tcp"]),
              help="Stored channels: the 19 electrodes as recorded (referential, default), their common average, "
                   "SzCORE's 18 bipolar pairs (double-banana) or TUSZ's 22 TCP pairs (tcp).")
@click.option("--compute", type=click.Choice(["float32-fft", "float64"]),
              help="How the preprocessing is computed. float32-fft (a new pipeline's default): float32, the "
                   "zero-phase filters applied by FFT; float64 within 1e-4 x std + 4e-6 x peak, in 0.35-0.7x its "
                   "CPU time. float64: every earlier release's output, what a pipeline stored before keeps.")
@click.option("--layout", type=click.Choice(["auto", "bids", "folder"]),
              help="The source tree's layout (default auto: TUSZ, BIDS by its dataset_description.json, else a "
                   "folder of EDFs). bids forces BIDS-EEG.")
@click.option("--dataset", help="Name of the dataset SRC belongs to (default: recognised from the tree, else named "
                                "after its root folder).")
@click.option("--pipeline", help="Name of the preprocessing pipeline to build (default: default). Settings not "
                                 "given are the pipeline's stored ones.")
@click.option("--replace", is_flag=True, default=None,
              help="Rebuild the pipeline with changed settings instead of refusing them.")
@click.option("--retry-failed", is_flag=True, default=None,
              help="Read again files that failed before and have not changed since (by default they are not).")
@claim_lease_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ingest(src, cache, db_url, store_url, window, stride, workers, recipe, config_file, fs, dtype, missing_electrodes,
           montage, compute, layout, dataset, pipeline, replace, retry_failed, claim_lease, as_json, quiet):
    """Ingest every EDF under SRC into the cache. Bad files are reported and skipped; exit 1 if any failed."""
    from eegcache.ops.ingest import ingest as run_ingest
    from eegcache.pipeline.spec import load_config
    from eegcache.recipes import load_recipe

    try:
        chosen = load_recipe(recipe) if recipe else None
        config = load_config(config_file, recipe=chosen, overrides={
                                           "window": window, "stride": stride, "workers": workers, "fs": fs,
                                           "dtype": dtype, "missing_electrodes": missing_electrodes,
                                           "montage": montage, "compute": compute, "layout": layout,
                                           "dataset": dataset,
                                           "pipeline": pipeline, "replace": replace, "retry_failed": retry_failed})
        summary = run_ingest(src, cache, config, db_url=db_url, store_url=store_url, progress=not quiet,
                             claim_lease_s=claim_lease)
    except (ValueError, FileNotFoundError, IndexError_, InputError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(summary.to_dict())
    else:
        if summary.moved_from:
            click.echo(f"dataset {summary.dataset!r} moved: last seen at {summary.moved_from}, now at "
                       f"{Path(src).resolve()}; recordings keep their identity and stored data")
        click.echo(
            f"ingested {summary.ingested}, reused {summary.reused}, unchanged {summary.unchanged}, "
            f"new window set from stored masks {summary.windows_added}, failed {summary.failed}, "
            f"skipped {summary.skipped} in {summary.seconds:.1f} s; EDF files read: {summary.edf_read} "
            f"(dataset {summary.dataset!r}, pipeline {summary.pipeline!r})"
        )
        if summary.failed_unchanged:
            click.echo(f"{summary.failed_unchanged} file(s) failed before and have not changed since: not read again "
                       "(--retry-failed reads them)")
        if summary.sources_missing:
            click.echo(f"{summary.sources_missing} recording(s) of the dataset have no source file under {src} any "
                       "more: their data and windows are kept (eegcache remove --missing drops them)")
        for line in summary.warnings:
            click.echo(f"warning: {line}", err=True)
        counts = ", ".join(f"{k} {v}" for k, v in summary.window_counts.items())
        click.echo(f"windows ({config.window_s:g} s / {config.stride_s:g} s stride): {counts}")
        if summary.windows_added and not summary.edf_read:
            click.echo("the new window set was computed from stored label masks: no EDF was read or preprocessed")
        for path, reason in summary.failures:
            click.echo(f"FAILED {path}: {reason}", err=True)
    sys.exit(1 if summary.failed else 0)


@main.command()
@cache_option
@db_option
@click.option("--pipeline", help="The pipeline to summarise (default: the only one).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(cache, db_url, pipeline, as_json):
    """Recordings by status, windows per class per split and window set, seizure hours, bytes on disk."""
    from eegcache.ops.stats import stats as compute
    from eegcache.pipeline.names import PipelineError

    try:
        data = compute(_open(cache, db_url, read_only=True), cache, pipeline)
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(data)
        return
    if data["pipeline"]:
        datasets = ", ".join(f"{d['dataset']} ({d['recordings']} at {d['root']})" for d in data["datasets"])
        click.echo(f"pipeline: {data['pipeline']}; datasets: {datasets or 'none'}")
    click.echo("recordings: " + ", ".join(f"{k} {v}" for k, v in data["recordings"].items())
               + (f"; {data['sources_missing']} with their source file gone" if data["sources_missing"] else ""))
    click.echo(f"EEG hours ingested: {data['eeg_hours']:.2f}, seizure hours: {data['seizure_hours']:.3f}")
    click.echo("windows: " + ", ".join(f"{k} {v}" for k, v in data["windows"].items()))
    if data["windows_by_set"]:
        rows = [(r["window_s"], r["stride_s"], r["split"], r["label"], r["windows"]) for r in data["windows_by_set"]]
        click.echo(_table(["window_s", "stride_s", "split", "label", "windows"], rows))
    b = data["bytes"]
    click.echo(f"objects: {data['objects']}, {b['objects'] / 1e6:.1f} MB; index {b['index'] / 1e6:.1f} MB")


@main.command()
@cache_option
@db_option
@click.argument("query")
@click.option("--json", "fmt", flag_value="json", help="A JSON list of row objects.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@click.option("--table", "fmt", flag_value="table", default=True, help="An aligned text table (default).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind :NAME in the query to VALUE (repeatable); values never enter the SQL text.")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="Row cap.")
@click.option("--timeout", type=click.FloatRange(0.01), default=30.0, show_default=True, help="Time limit (s).")
def sql(cache, db_url, query, fmt, params, limit, timeout):
    """Run a read-only SQL QUERY over the index (views: window_labels, recording_status, seizure_events)."""
    from eegcache.index.query import QueryError, run_query

    bound = {}
    for p in params:
        name, sep, value = p.partition("=")
        if not sep:
            raise click.BadParameter(f"{p!r} is not NAME=VALUE", param_hint="--param")
        bound[name] = value
    _open(cache, db_url, read_only=True).dispose()  # upgrades an older schema so the views exist (if writable)
    try:
        result = run_query(db_url or cache / INDEX_FILE, query, bound, limit=limit, timeout_s=timeout)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        twice = sorted({c for c in result.columns if result.columns.count(c) > 1})
        if twice:  # a JSON object holds one value per name: one of the columns would vanish without a word
            raise click.ClickException(
                "--json prints one object per row, so column names must differ; the query returns "
                + ", ".join(f"{c!r} {result.columns.count(c)} times" for c in twice)
                + ". Name them apart with AS, or use --csv or --table, which keep every column")
        _print_json([dict(zip(result.columns, row, strict=True)) for row in result.rows])
    elif fmt == "csv":
        out = csv.writer(sys.stdout)
        out.writerow(result.columns)
        out.writerows(result.rows)
    else:
        click.echo(_table(result.columns, result.rows))
    if result.truncated:
        click.echo(f"(stopped at {limit} rows; raise --limit for more)", err=True)


@main.command()
@cache_option
@db_option
@store_option
@click.option("--repair", is_flag=True, help="Re-ingest the recordings of damaged objects from their sources.")
@click.option("--json", "as_json", is_flag=True)
def verify(cache, db_url, store_url, repair, as_json):
    """Re-read every object against its checksums; name each missing or corrupt one; exit 1 if any."""
    from eegcache.ops.repair import repair as run_repair
    from eegcache.ops.verify import verify as run_verify

    engine = _open(cache, db_url)
    report = run_verify(engine, cache, store_url)
    if as_json:
        _print_json({"objects": report.objects, "files": report.files, "bytes": report.bytes,
                     "problems": [str(p) for p in report.problems]})
    else:
        for problem in report.problems:
            click.echo(f"DAMAGED {problem}")
        click.echo(f"checked {report.objects} objects, {report.files} files, {report.bytes / 1e6:.1f} MB: "
                   f"{len(report.problems)} problem(s)")
    if report.problems and repair:
        try:
            outcome = run_repair(engine, cache, report, store_url)
        except IndexError_ as exc:  # this index does not own the store (eegcache.store.owner)
            raise click.ClickException(str(exc)) from None
        for line in outcome.messages:
            click.echo(line)
        report = run_verify(engine, cache, store_url)
        click.echo(f"after repair: {len(report.problems)} problem(s)")
    sys.exit(0 if report.ok else 1)


@main.command()
@cache_option
@db_option
@store_option
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--grace", type=click.FloatRange(0), default=3600.0, show_default=True,
              help="Only remove objects that an earlier gc found unreferenced at least this many seconds ago, and "
                   "staging folders older than this (protects concurrent writers and readers of older snapshots).")
def gc(cache, db_url, store_url, dry_run, grace):
    """Remove staging leftovers and objects that no recording references (only with the store's own index)."""
    from eegcache.ops.gc import gc as run_gc

    try:
        report = run_gc(_open(cache, db_url), cache, grace_s=grace, dry_run=dry_run, store_url=store_url)
    except IndexError_ as exc:  # e.g. this index does not own the store (a snapshot): eegcache.store.owner
        raise click.ClickException(str(exc)) from None
    verb = "would remove" if dry_run else "removed"
    for name in report.staging:
        click.echo(f"{verb} staging/{name}")
    for key in report.objects:
        click.echo(f"{verb} object {key}")
    click.echo(f"{verb} {len(report.staging)} staging folder(s), {len(report.objects)} object(s), "
               f"{report.bytes / 1e6:.1f} MB")


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--hours", type=click.FloatRange(0.01), default=2.0, show_default=True, help="EEG-hours to write.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(out, hours, seed):
    """Write a synthetic TUSZ-like tree (EDF + .csv + .csv_bi) to OUT."""
    from eegcache.sources.synth import synthesize

    recs = synthesize(out, hours=hours, seed=seed)
    total = sum(r.duration_s for r in recs) / 3600
    seizure = sum(b - a for r in recs for a, b in r.events) / 3600
    click.echo(f"wrote {len(recs)} recordings, {total:.2f} EEG-hours, {seizure / total:.1%} seizure, to {out}")


def _print_transfer(summary, as_json: bool) -> None:
    if as_json:
        _print_json(summary.__dict__)
    else:
        click.echo(f"objects sent {summary.objects_sent}, already there {summary.objects_skipped}, "
                   f"{summary.bytes_sent / 1e6:.1f} MB, recordings merged {summary.recordings}, "
                   f"conflicts {len(summary.conflicts)}, {summary.seconds:.1f} s")
        for conflict in summary.conflicts:
            click.echo(f"CONFLICT {conflict}", err=True)
        for problem in summary.failed:
            click.echo(f"FAILED {problem}", err=True)
    sys.exit(1 if summary.failed else 0)


@main.command()
@cache_option
@db_option
@store_option
@click.argument("remote")
@click.option("--overwrite", is_flag=True, help="Replace the remote's recordings that hold other bytes under the "
                                                "same (dataset, path, pipeline) instead of keeping them.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def push(cache, db_url, store_url, remote, overwrite, as_json, quiet):
    """Copy this cache to REMOTE (a cache folder or s3://bucket/prefix): missing objects, then index rows."""
    from eegcache.ops.transfer import TransferError
    from eegcache.ops.transfer import push as run_push

    try:
        summary = run_push(cache, remote, overwrite=overwrite, db_url=db_url, store_url=store_url, progress=not quiet)
    except (TransferError, IndexError_) as exc:
        raise click.ClickException(str(exc)) from None
    _print_transfer(summary, as_json)


@main.command()
@cache_option
@db_option
@store_option
@click.argument("remote")
@click.option("--split", help="Only recordings of this split (train, dev, eval).")
@click.option("--where", help="Only recordings with windows matching this SQL condition over window_labels.")
@click.option("--overwrite", is_flag=True, help="Replace this cache's recordings that hold other bytes under the "
                                                "same (dataset, path, pipeline) instead of keeping them.")
@claim_lease_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pull(cache, db_url, store_url, remote, split, where, overwrite, claim_lease, as_json, quiet):
    """Copy recordings from REMOTE into this cache: the objects it lacks, then the index rows."""
    from eegcache.ops.transfer import TransferError
    from eegcache.ops.transfer import pull as run_pull

    try:
        summary = run_pull(cache, remote, split=split, where=where, overwrite=overwrite, db_url=db_url,
                           store_url=store_url, progress=not quiet, claim_lease_s=claim_lease)
    except (TransferError, IndexError_) as exc:
        raise click.ClickException(str(exc)) from None
    _print_transfer(summary, as_json)


@main.command()
@cache_option
@db_option
@store_option
@click.option("--missing", is_flag=True, help="Recordings whose source file is gone.")
@click.option("--dataset", help="Recordings of this dataset.")
@click.option("--pipeline", help="Recordings of this pipeline.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def remove(cache, db_url, store_url, missing, dataset, pipeline, dry_run):
    """Remove recordings from the index (all conditions must hold); gc then reclaims their objects."""
    from eegcache.ops.remove import RemoveError
    from eegcache.ops.remove import remove as run_remove
    from eegcache.store import open_store

    try:
        report = run_remove(_open(cache, db_url), open_store(cache, store_url), dataset=dataset, pipeline=pipeline,
                            missing=missing, dry_run=dry_run)
    except RemoveError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would remove" if dry_run else "removed"
    for name in report.recordings:
        click.echo(f"{verb} {name}")
    click.echo(f"{verb} {len(report.recordings)} recording(s), {report.windows} window(s)")


@main.group("index")
def index_group() -> None:
    """Move an index between databases."""


@index_group.command("copy")
@click.option("--from", "source", required=True, metavar="URL", help="Source index (SQLAlchemy URL).")
@click.option("--to", "target", required=True, metavar="URL", help="Target index; must be empty.")
def index_copy(source, target):
    """Copy an index (e.g. sqlite:///cache/index.sqlite → postgresql://host/db), counts checked."""
    from eegcache.index.copy import CopyError, copy_index

    try:
        report = copy_index(source, target)
    except CopyError as exc:
        raise click.ClickException(str(exc)) from None
    for name, n in report.counts.items():
        click.echo(f"{name}: {n} rows")
    click.echo("copied; row counts match")


@main.group("store")
def store_group() -> None:
    """Which index owns the object store (gc, push, pull and repair need the owner)."""


@store_group.command("adopt")
@cache_option
@db_option
@store_option
def store_adopt(cache, db_url, store_url):
    """Make this index the store's owner, whatever owned it (e.g. after moving the index to PostgreSQL with
    eegcache index copy). Never adopt with a snapshot that the real owner keeps writing past: gc with it would
    delete what the owner registered after the snapshot."""
    from eegcache.store import open_store
    from eegcache.store.owner import adopt

    engine = _open(cache, db_url)
    store = open_store(cache, store_url)
    before, after = adopt(engine, store)
    where = store.url or str(store.root)
    if before is None:
        click.echo(f"store {where} (id {after.store_id[:8]}) now owned by index {after.index_id[:8]}")
    elif before.index_id == after.index_id:
        click.echo(f"store {where} (id {after.store_id[:8]}) was already owned by index {after.index_id[:8]}; "
                   f"its location is now {after.index_location}")
    else:
        click.echo(f"store {where} (id {after.store_id[:8]}): owner was index {before.index_id[:8]}"
                   f"{' at ' + before.index_location if before.index_location else ''}, now index "
                   f"{after.index_id[:8]}{' at ' + after.index_location if after.index_location else ''}")


@main.group()
def db() -> None:
    """Index schema (Alembic migrations)."""


@db.command("upgrade")
@cache_option
@db_option
def db_upgrade(cache, db_url):
    """Upgrade the index to the newest schema (done automatically by every command)."""
    engine = _open(cache, db_url, create=True)
    click.echo(f"index at revision {current_revision(engine)} (newest {head_revision()})")


@db.command("current")
@cache_option
@db_option
def db_current(cache, db_url):
    """Print the index's schema revision."""
    from eegcache.index.db import default_url, make_engine

    engine = make_engine(db_url or default_url(cache))
    click.echo(f"{current_revision(engine)} (newest known: {head_revision()})")


def run() -> None:
    """``eegcache`` as a program (the console script, ``python -m eegcache``): the command, then a quick exit.

    What is imported by the time the command starts, and what is left once it is over (mostly the libraries it
    imported), lives as long as the process: it is frozen out of the garbage collector, whose every full collection
    would walk it all for nothing (~0.2 s of a no-op ingest here, most of it the one at the interpreter's exit).
    The command's own garbage is collected first, once its frames are gone, so what it left open is closed as
    the exit would close it."""
    garbage.freeze()
    code = 0
    try:
        main()
    except SystemExit as exc:  # how click ends every command; the command's frames go with the exception
        code = exc.code
    garbage.collect()
    garbage.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
