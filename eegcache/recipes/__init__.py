"""Recipes: declared, versioned settings files shipped with the package, so that a published method is one name.

A recipe is a TOML file with ``name``, ``version``, ``description`` and up to three tables:

- ``[pipeline]`` (``name``, ``window``, ``stride``) and ``[pipeline.preprocess]`` (any ``PreprocessSpec`` field,
  ``[pipeline.preprocess.window_filter]`` for read-time steps): what ``eegcache ingest --recipe`` builds;
- ``[train]``: ``trainer fit`` settings (any ``TrainConfig`` field: model, optimizer, lr, schedule, ratios,
  redraw, precision...); the trainer also reads the pipeline's name and window set from ``[pipeline]``;
- ``[evaluate]``: post-processing and how recordings are covered (threshold, strict_threshold, morph_samples,
  min_event_s, eval_tail, skip_short), used by ``fit`` (validation) and ``trainer evaluate``.

``--recipe NAME`` takes a shipped recipe (``default``, ``seizure-transformer``), ``--recipe FILE`` any file. Flags
override recipe fields; runs record the recipe (``name/version``) and the fields that were overridden. Empty lists
stand for "none" where TOML has no null (``bandpass_hz = []``: no band-pass).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from eegcache.errors import InputError


class RecipeError(InputError):
    """A recipe that cannot be read or used; the message says why."""


SECTIONS = ("pipeline", "train", "evaluate")
PIPELINE_KEYS = ("name", "window", "stride", "preprocess")


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    description: str = ""
    source: str = ""
    pipeline: dict[str, Any] = field(default_factory=dict)  # name, window, stride
    preprocess: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    @property
    def ident(self) -> str:
        return f"{self.name}/{self.version}"

    def ingest_settings(self) -> dict[str, Any]:
        """The recipe as an ingest config's data (top-level window/stride/pipeline and a ``preprocess`` table)."""
        out: dict[str, Any] = {}
        for key, target in (("name", "pipeline"), ("window", "window"), ("stride", "stride")):
            if key in self.pipeline:
                out[target] = self.pipeline[key]
        out["preprocess"] = dict(self.preprocess)
        return out

    def train_settings(self) -> dict[str, Any]:
        """TrainConfig fields the recipe sets: [train], [evaluate], and the pipeline's name and window set."""
        out: dict[str, Any] = {}
        for key, target in (("name", "pipeline"), ("window", "window_s"), ("stride", "stride_s")):
            if key in self.pipeline:
                out[target] = self.pipeline[key]
        out.update(self.train)
        out.update(self.evaluate)
        return out


def shipped() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_file: str | Path) -> Recipe:
    """A shipped recipe by name, or a recipe file by path."""
    text_name = str(name_or_file)
    path = Path(text_name)
    if path.suffix == ".toml" or path.exists() or "/" in text_name:
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        source, raw = str(path), path.read_text(encoding="utf-8")
    else:
        res = resources.files(__name__) / f"{text_name}.toml"
        if not res.is_file():
            raise RecipeError(f"no recipe named {text_name!r}; shipped recipes: {', '.join(shipped())} "
                              "(or give a recipe file's path)")
        source, raw = f"eegcache/recipes/{text_name}.toml", res.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {source}: {exc}") from None
    return parse_recipe(data, source)


def parse_recipe(data: dict[str, Any], source: str = "") -> Recipe:
    data = dict(data)
    name, version = data.pop("name", None), data.pop("version", None)
    if not isinstance(name, str) or not name.strip():
        raise RecipeError(f"recipe {source}: needs a name")
    if not isinstance(version, int) or version < 1:
        raise RecipeError(f"recipe {source}: needs an integer version >= 1")
    description = str(data.pop("description", ""))
    tables = {s: dict(data.pop(s, {})) for s in SECTIONS}
    if data:
        raise RecipeError(f"recipe {source}: unknown setting(s): {', '.join(sorted(data))}")
    pipeline = tables["pipeline"]
    unknown = set(pipeline) - set(PIPELINE_KEYS)
    if unknown:
        raise RecipeError(f"recipe {source}: unknown [pipeline] setting(s): {', '.join(sorted(unknown))}")
    preprocess = dict(pipeline.pop("preprocess", {}))
    from eegcache.pipeline.spec import PreprocessSpec

    try:
        PreprocessSpec.from_settings(preprocess)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"recipe {source}: [pipeline.preprocess]: {exc}") from None
    return Recipe(name, version, description, source, pipeline, preprocess, tables["train"], tables["evaluate"])
