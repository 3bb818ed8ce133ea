"""cpctl's duration flags: ``30s``, ``2m``, ``1h30m``, ``500ms`` or plain seconds, one ParamType for all."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from controlplane.cli.durations import DURATION, Duration, parse_duration
from controlplane.cli.main import main


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("2.5", 2.5), ("30s", 30.0), ("2m", 120.0), ("1h30m", 5400.0), ("500ms", 0.5),
    ("1m500ms", 60.5), ("1.5s", 1.5), ("2d", 172800.0), (" 10S ", 10.0), ("0", 0.0), ("1h2m3s", 3723.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1h 30m", "-5s", "5s10", "ms", "1..5s", "m30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected e.g. 30s, 2m"):
        parse_duration(text)


def test_param_type_bounds_and_errors() -> None:
    @click.command()
    @click.option("--timeout", type=DURATION, default=60.0)
    @click.option("--ttl", type=Duration(minimum=1, maximum=3600))
    def show(timeout: float, ttl: float | None) -> None:
        click.echo(f"{timeout!r} {ttl!r}")

    runner = CliRunner()
    assert runner.invoke(show, []).output == "60.0 None\n"
    assert runner.invoke(show, ["--timeout", "1m30s", "--ttl", "90"]).output == "90.0 90.0\n"
    for args, why in ((["--timeout", "soon"], "invalid duration 'soon'"), (["--ttl", "500ms"], "shorter than"),
                      (["--ttl", "2h"], "longer than")):
        result = runner.invoke(show, args)
        assert result.exit_code == 2 and why in result.output, result.output
    assert "DURATION" in runner.invoke(show, ["--help"]).output


@pytest.mark.parametrize("verb", [["run", "web", "--image", "x"], ["scale", "web", "2"], ["delete", "unit", "web"],
                                  ["get", "units", "--watch-timeout"], ["token", "create", "--role", "viewer", "--ttl"]])
def test_every_timeout_flag_takes_a_duration(verb: list[str]) -> None:
    """A bad duration is refused by the flag itself (exit 2) before any request is sent."""
    flag = [] if verb[-1].startswith("--") else ["--timeout"]
    result = CliRunner().invoke(main, [*verb, *flag, "10 minutes", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "invalid duration '10 minutes'" in result.output, result.output
