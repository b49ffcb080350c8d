"""Docs that cannot rot: the README's Python blocks run as written on a demo cache, and every command of both CLIs
(from click's own command list) has help text and appears in the README."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import pytest

from eegcache.cli import main as eegcache_main
from trainer.cli import main as trainer_main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def commands(group: click.Group, prefix: str, parent: click.Context | None = None) -> list[tuple[str, click.Command]]:
    """(name, a context for it) of every command below ``group``. The contexts descend from the group's, as on the
    command line: click keeps the help option it first makes for a command, so a context without the group's
    settings (``-h``) would change later invocations' help."""
    ctx = click.Context(group, info_name=prefix.split()[-1], parent=parent, **group.context_settings)
    out = []
    for name, command in sorted(group.commands.items()):
        out.append((f"{prefix} {name}", click.Context(command, info_name=name, parent=ctx)))
        if isinstance(command, click.Group):
            out.extend(commands(command, f"{prefix} {name}", ctx))
    return out


ALL = commands(eegcache_main, "eegcache") + commands(trainer_main, "trainer")


@pytest.mark.parametrize("name,ctx", ALL, ids=[n for n, _ in ALL])
def test_every_command_has_help_and_is_in_the_readme(name: str, ctx: click.Context) -> None:
    command = ctx.command
    assert (command.help or "").strip(), f"{name} has no help text"
    assert command.get_help(ctx).strip()
    assert f"`{name}" in README.read_text(encoding="utf-8"), f"README does not mention `{name}`"


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from eegcache.ops.ingest import ingest
    from eegcache.pipeline.spec import load_config
    from eegcache.sources.synth import synthesize

    synthesize(tmp_path / "demo" / "tusz", hours=0.5, seed=0)
    summary = ingest(tmp_path / "demo" / "tusz", tmp_path / "demo" / "cache",
                     load_config(None, {"missing_electrodes": "zero"}), progress=False)
    assert summary.failed == 0
    blocks = python_blocks()
    assert blocks, "README has no Python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert re.search(r"epoch 1: \d+ windows, last loss \d", out), out
    assert os.getcwd() == str(tmp_path)
