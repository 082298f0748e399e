"""Running `bert` commands in tests: success, a clean refusal (exit 2, one line, no traceback), JSON output."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bertcli.cli import app

runner = CliRunner()


def ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def _refused(args: list[str], *needles: str):
    """Exit code 2 and one `error:` line on stderr containing every needle; no traceback. (result, error line)"""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return result, errors[0]


def fails(args: list[str], *needles: str) -> str:
    """Exit code 2 and one `error:` line on stderr containing every needle; no traceback."""
    return _refused(args, *needles)[1]


def refused_with_hint(args: list[str], *needles: str) -> tuple[str, str]:
    """A refusal whose stderr is exactly the `error:` line (with every needle) and a `hint:` line: no warning
    about the input printed first, nothing else."""
    result, error = _refused(args, *needles)
    lines = result.stderr.splitlines()
    assert lines == [error, lines[-1]] and lines[1].startswith("hint: "), result.stderr
    return error, lines[1]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])
