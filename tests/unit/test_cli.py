"""The CLI: every subcommand has --help, every option is described and readable from VALUELOOP_*."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from stream_app.__main__ import app

runner = CliRunner()


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    # Duck-typed: typer may use click or its own vendored copy of it.
    out: list[tuple[tuple[str, ...], Any]] = []
    for name, cmd in sorted(group.commands.items()):
        out.append(((*prefix, name), cmd))
        if hasattr(cmd, "commands"):
            out.extend(_commands(cmd, (*prefix, name)))
    return out


def _options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "option" and p.name != "help"]


ROOT = typer.main.get_command(app)
COMMANDS = _commands(ROOT)


def test_root_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("broker", "topics", "worker", "emit", "schemas"):
        assert name in result.output


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p))
def test_every_subcommand_has_help(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p))
def test_every_option_is_described(path: tuple[str, ...]) -> None:
    cmd = dict(COMMANDS)[path]
    for param in _options(cmd):
        assert param.help, f"{' '.join(path)} {param.opts} has no help text"
    assert cmd.help or cmd.short_help, f"{' '.join(path)} has no description"


def test_global_options_read_valueloop_env() -> None:
    opts = _options(ROOT)
    assert opts
    for param in opts:
        assert isinstance(param.envvar, str) and param.envvar.startswith("VALUELOOP_"), param.opts


def test_settings_options_read_valueloop_env() -> None:
    """Options that map to settings carry their VALUELOOP_* variable (shown in --help)."""
    settings_like = {
        "port",
        "heap",
        "partitions",
        "replication",
        "metrics_host",
        "metrics_port",
        "app_id",
    }
    seen = set()
    for _, cmd in COMMANDS:
        for param in _options(cmd):
            if param.name in settings_like:
                seen.add(param.name)
                assert isinstance(param.envvar, str) and param.envvar.startswith("VALUELOOP_")
    assert seen == settings_like


def test_kafka_commands_fail_clearly_without_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VALUELOOP_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    result = runner.invoke(app, ["--data-dir", str(tmp_path), "topics", "ensure"])
    assert result.exit_code == 1
    assert "no local broker running" in result.output
