"""Scoring a checkpoint on a split: the validation metrics, predicted events per recording, and a plot.

Predictions are written in TUSZ's own annotation format (``.csv_bi``: NEDC's tools, ``eegcache``'s parser) or, with
``fmt="szcore"``, as one SzCORE ``_events.tsv`` per recording at its BIDS relative path (``trainer.szcore``), so the
folder can be handed to the SzCORE scorer beside the reference dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from trainer import szcore
from trainer.data import pipeline_transform
from trainer.metrics import Counts, summarize
from trainer.postprocess import Cover, PostProcess, csv_bi, mask_events
from trainer.predict import (
    RecordingResult,
    is_short,
    iter_predictions,
    score_constant,
    split_recordings,
    unscored_recordings,
    with_szcore,
)

FORMATS = ("csv_bi", "szcore")


@dataclass
class EvalResult:
    split: str | None
    metrics: dict
    per_recording: dict[str, dict] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def load_model(checkpoint: Path | str, device: str = "cpu"):
    """(model in eval mode, the run's TrainConfig, window samples) from a checkpoint."""
    from trainer.fit import TrainConfig, load_checkpoint, resolve_device
    from trainer.model import ModelConfig, SeizureTransformer

    state = load_checkpoint(checkpoint)
    model = SeizureTransformer(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(resolve_device(device)).eval()
    return model, TrainConfig.from_dict(state["config"]), int(state["window_set"]["window_samples"])


def evaluate(cache: Path | str, checkpoint: Path | str, split: str | None = "eval", *, out: Path | str | None = None,
             plot: list[str] | None = None, post: PostProcess | None = None, device: str = "cpu",
             batch_size: int = 16, fmt: str = "csv_bi", db: str | None = None,
             cover: Cover | None = None, store: str | None = None) -> EvalResult:
    """Score ``checkpoint`` on every ingested recording of ``split``; with ``out``, write the predictions (``fmt``
    ``csv_bi``: ``<recording>.csv_bi``; ``szcore``: ``sub-.../eeg/..._events.tsv`` per recording, under
    ``<dataset>/`` when the split spans several datasets), ``metrics.json``, and ``<recording>.png`` for each
    recording named in ``plot``. The metrics are the dataset-wide ones and the SzCORE per-subject ones."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    cache = Path(cache)
    model, config, window = load_model(checkpoint, device)
    post = post or config.postprocess()
    cover = cover or config.cover()
    pipeline = checkpoint_pipeline(checkpoint)
    recordings = split_recordings(cache, split, pipeline=pipeline, db=db)
    unscored = unscored_recordings(cache, split, pipeline, db)
    if cover.skip_short:
        short = [r.name for r in recordings if is_short(r, window)]
        if short:
            unscored["shorter than one window"] = len(short)
        recordings = [r for r in recordings if not is_short(r, window)]
    transform = pipeline_transform(cache, pipeline, db)
    if plot:
        split_recordings(cache, split, plot, pipeline=pipeline, db=db)  # unknown names fail before any work
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(split, {})
    total = Counts()
    subjects = []
    several = len({r.dataset for r in recordings}) > 1
    written: dict[PurePosixPath, str] = {}
    for rec_result in iter_predictions(model, cache, recordings, window, post=post, batch_size=batch_size,
                                       device=device, cover=cover, transform=transform,
                                       precision=config.precision, store=store):
        rec = rec_result.recording
        total = total + rec_result.counts
        subjects.append((rec.subject_key, rec_result.szcore))
        events = mask_events(rec_result.hypothesis, rec.fs, rec_result.probs)
        result.per_recording[rec.name] = {**summarize(rec_result.counts), "events": len(events)}
        if out_dir is not None and fmt == "szcore":
            rel = szcore.tsv_path(rec.layout, rec.rel_path, rec.name, rec.subject, rec.session, rec.token)
            rel = PurePosixPath(rec.dataset or "dataset") / rel if several else rel
            if rel in written:
                raise ValueError(f"recordings {written[rel]} and {rec.name} would both be written to {rel}")
            written[rel] = rec.name
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(szcore.events_tsv(events, rec.n_samples / rec.fs))
            result.files.append(path)
        elif out_dir is not None:
            path = out_dir / f"{rec.name}.csv_bi"
            path.write_text(csv_bi(rec.name, rec.n_samples / rec.fs, events))
            result.files.append(path)
        if plot and rec.name in plot:
            result.files.append(plot_recording(rec_result, (out_dir or Path(".")) / f"{rec.name}.png", post))
    result.metrics = with_szcore(summarize(total), subjects, per_subject=True)
    result.metrics["unscored"] = {"count": sum(unscored.values()), "by_reason": unscored}
    if out_dir is not None:
        path = out_dir / "metrics.json"
        path.write_text(json.dumps({"split": split, "checkpoint": str(checkpoint), "metrics": result.metrics,
                                    "per_recording": result.per_recording}, indent=2))
        result.files.append(path)
    return result


def checkpoint_pipeline(checkpoint: Path | str) -> str | None:
    """The pipeline a run trained on (its windows' pipeline), so evaluation reads the same preprocessing."""
    from trainer.fit import load_checkpoint

    state = load_checkpoint(checkpoint)
    return state.get("window_set", {}).get("pipeline") or state["config"].get("pipeline")


def baselines(cache: Path | str, split: str | None, post: PostProcess | None = None,
              pipeline: str | None = None, db: str | None = None, store: str | None = None) -> dict[str, dict]:
    """Constant predictors through the same post-processing and scoring: all-zero (never alarms) and all-one
    (always alarms). A model is only useful where it beats both."""
    recordings = split_recordings(Path(cache), split, pipeline=pipeline, db=db)
    return {"all_zero": score_constant(Path(cache), recordings, 0.0, post, store),
            "all_one": score_constant(Path(cache), recordings, 1.0, post, store)}


def plot_recording(result: RecordingResult, path: Path, post: PostProcess) -> Path:
    """Probability against time, with true seizures shaded and detections marked: the picture that shows whether
    errors are late onsets, short bursts or false alarms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = result.recording
    t = np.arange(rec.n_samples) / rec.fs
    step = max(1, rec.n_samples // 20000)  # enough points for a page-wide plot
    fig, ax = plt.subplots(figsize=(12, 3))
    ax.plot(t[::step], result.probs[::step], lw=0.7, color="tab:blue", label="seizure probability")
    ax.fill_between(t[::step], 0, 1, where=result.reference[::step], color="tab:red", alpha=0.2, step="mid",
                    label="true seizure")
    ax.fill_between(t[::step], 1.02, 1.08, where=result.hypothesis[::step], color="black", step="mid",
                    label="detection")
    ax.axhline(post.threshold, color="gray", lw=0.6, ls="--")
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1.1), xlim=(0, t[-1] if t.size else 1),
           title=f"{rec.name}: {result.counts.event_tp}/{result.counts.event_ref} seizures detected, "
                 f"{result.counts.event_fp} false alarms")
    ax.legend(loc="upper right", fontsize=7, ncols=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
