"""Contexts in cpctl's config file: which server/token/ca a file gives, ``cpctl config ...`` writing it
(mode 0600, the rest of the file kept), and the single-server file of before still read as before."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from controlplane.cli.config import ConfigError, config_path, load_config, read_config_file
from controlplane.cli.configfile import selected_values
from controlplane.cli.main import main

DATA = {"server": "http://flat:7070", "token": "flat-token",
        "contexts": {"prod": {"server": "https://prod:7070", "token": "p", "ca": "/ca.pem"},
                     "dev": {"server": "http://dev:7070", "token-file": "/t"}}}


def test_selected_values() -> None:
    assert selected_values(DATA, context=None) == {"server": "http://flat:7070", "token": "flat-token"}
    assert selected_values({**DATA, "current-context": "dev"}, context=None) == {
        "server": "http://dev:7070", "token-file": "/t"}
    assert selected_values({**DATA, "current-context": "dev"}, context="prod")["token"] == "p"
    with pytest.raises(ValueError, match='no context "qa" .known: dev, prod'):
        selected_values(DATA, context="qa")
    with pytest.raises(ValueError, match="contexts must be a mapping"):
        selected_values({"contexts": ["prod"], "current-context": "prod"}, context=None)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("CPCTL_SERVER", "CPCTL_TOKEN", "CPCTL_CA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_the_single_server_file_keeps_working(home: Path) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("server: http://old:7070\ntoken: old-token\n")
    config = load_config({}, env={})
    assert (config.server, config.token) == ("http://old:7070", "old-token")
    # adding a context keeps the old keys, and they still answer while no context is current
    assert run("config", "set-context", "prod", "--server", "https://prod:7070", "--token", "p")[0] == 0
    assert load_config({}, env={}).server == "http://old:7070"
    assert load_config({"context": "prod"}, env={}).token == "p"
    data = yaml.safe_load(path.read_text())
    assert data["server"] == "http://old:7070" and data["token"] == "old-token"


def test_config_commands(home: Path) -> None:
    token_file = home / "prod.token"
    token_file.write_text("secret-from-file\n")
    token_file.chmod(0o600)
    assert run("config", "current-context") == (1, "error: current-context is not set (cpctl config use-context NAME sets it)\n")
    assert run("config", "set-context", "prod", "--server", "https://prod:7070", "--token-file", str(token_file),
               "--ca", str(home / "ca.pem")) == (0, 'Context "prod" created.\n')
    assert run("config", "set-context", "dev", "--server", "http://dev:7070", "--token", "dev-token") == (
        0, 'Context "dev" created.\n')
    assert run("config", "use-context", "prod") == (0, 'Switched to context "prod".\n')
    assert run("config", "current-context") == (0, "prod\n")
    code, out = run("config", "get-contexts")
    assert code == 0 and out.splitlines()[0].split() == ["CURRENT", "NAME", "SERVER", "AUTH", "CA"]
    assert out.splitlines()[2].split()[:4] == ["*", "prod", "https://prod:7070", "token-file"]
    assert "dev-token" not in out and "secret-from-file" not in out
    assert run("config", "get-contexts", "-o", "name") == (0, "dev\nprod\n")
    assert len(run("config", "get-contexts", "--no-headers")[1].splitlines()) == 2
    path = config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_config({}, env={})
    assert (config.server, config.token, config.ca) == ("https://prod:7070", "secret-from-file", str(home / "ca.pem"))
    assert load_config({"context": "dev"}, env={}).token == "dev-token"
    assert load_config({"context": "dev", "token": "flag"}, env={"CPCTL_SERVER": "http://env:1"}).token == "flag"
    assert load_config({"context": "dev"}, env={"CPCTL_SERVER": "http://env:1"}).server == "http://env:1"
    # a token given later replaces the file, and the other way round
    assert run("config", "set-context", "prod", "--token", "t2")[1] == 'Context "prod" modified.\n'
    assert yaml.safe_load(path.read_text())["contexts"]["prod"] == {
        "server": "https://prod:7070", "ca": str(home / "ca.pem"), "token": "t2"}
    assert run("config", "use-context", "qa") == (1, f'error: no context "qa" in {path} (known: dev, prod)\n')
    assert run("config", "set-context", "x", "--token", "a", "--token-file", "b")[0] == 2


def test_a_token_file_others_can_read_is_refused(home: Path) -> None:
    token_file = home / "open.token"
    token_file.write_text("t\n")
    token_file.chmod(0o644)
    assert run("config", "set-context", "open", "--server", "http://x:1", "--token-file", str(token_file))[0] == 0
    with pytest.raises(ConfigError, match="mode 0644 lets group or others read the token"):
        read_config_file(config_path(), context="open")
    code, out = run("--context", "open", "get", "units")
    assert code == 1 and out.startswith("error: ") and "chmod 600" in out and len(out.splitlines()) == 1
    code, out = run("--context", "nope", "get", "units")
    assert code == 1 and 'no context "nope"' in out
