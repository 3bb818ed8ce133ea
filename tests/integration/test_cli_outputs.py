"""kubectl habits in cpctl, end to end against a real cp-apiserver on a real etcd: ``-o jsonpath``,
``-o custom-columns``, ``--sort-by``, ``--no-headers``, durations, contexts in the config file and
shell completion of kinds and live names (cpctl in a subprocess, as users run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from controlplane.client import Client

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]
LABEL = f"habits={uuid.uuid4().hex[:6]}"
NAMES = ["hab-zeta", "hab-alpha", "hab-mid"]  # created in this order


@pytest.fixture(scope="module")
def server(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/habits-{uuid.uuid4().hex[:8]}", controllers=False) as api:
        for replicas, name in enumerate(NAMES, start=1):
            result = cpctl(api, "run", name, "--image", f"local/{name}:1", "--replicas", str(replicas),
                           "--label", LABEL, "--no-wait")
            assert result.returncode == 0, result.stderr
            time.sleep(1.05)  # creationTimestamp has whole seconds: keep the order visible
        yield api


def cpctl(server: ApiServer, *args: str, env: dict[str, str] | None = None,
          token: str = "admin-token") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CPCTL, *args], env=env or server.env(token), capture_output=True, text=True, timeout=60)


def test_jsonpath(server: ApiServer) -> None:
    result = cpctl(server, "get", "units", "-l", LABEL, "-o", "jsonpath={.items[*].metadata.name}",
                   "--sort-by", ".metadata.name")
    assert result.returncode == 0 and result.stdout == "hab-alpha hab-mid hab-zeta", result
    result = cpctl(server, "get", "units", "-l", LABEL, "--sort-by=.spec.replicas",
                   "-o", 'jsonpath={range .items[*]}{.metadata.name}={.spec.replicas}{"\\n"}{end}')
    assert result.stdout == "hab-zeta=1\nhab-alpha=2\nhab-mid=3\n", result
    result = cpctl(server, "get", "unit", "hab-mid", "-o", "jsonpath={.spec.image} {.kind}")
    assert result.stdout == "local/hab-mid:1 Unit", result
    result = cpctl(server, "get", "units", "-l", LABEL, "-o", "jsonpath={.items[?(@.spec.replicas>=2)].metadata.name}",
                   "--sort-by", "{.metadata.name}")
    assert result.stdout == "hab-alpha hab-mid", result


def test_custom_columns_sort_and_no_headers(server: ApiServer) -> None:
    result = cpctl(server, "get", "units", "-l", LABEL, "--sort-by=.metadata.creationTimestamp",
                   "-o", "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas,NOTE:.metadata.annotations.x")
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["NAME", "REPLICAS", "NOTE"], ["hab-zeta", "1", "<none>"], ["hab-alpha", "2", "<none>"],
        ["hab-mid", "3", "<none>"]]
    result = cpctl(server, "get", "units", "-l", LABEL, "--sort-by=.metadata.name", "--no-headers")
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["hab-alpha", "hab-mid", "hab-zeta"]
    result = cpctl(server, "get", "units", "-l", LABEL, "--no-headers", "-o", "custom-columns=N:.metadata.name",
                   "--sort-by", ".metadata.name")
    assert result.stdout == "hab-alpha\nhab-mid\nhab-zeta\n"


async def test_no_headers_wherever_a_table_is_printed(server: ApiServer) -> None:
    async with Client(server.url, token="node-m1-token") as node:
        await node.heartbeat("m1", {"address": "127.0.1.1", "capacity": {"cpu": 1, "memoryMB": 512}})
    created = cpctl(server, "token", "create", "--role", "viewer", "--ttl", "1h30m", "--name", "tok-habits")
    assert created.returncode == 0, created.stderr
    for args, first in ((["list-machines"], "m1"), (["token", "list"], "tok-habits")):
        with_header, without = cpctl(server, *args).stdout.splitlines(), cpctl(server, *args, "--no-headers").stdout
        rows = [line.split()[:2] for line in without.splitlines()]  # not AGE, which may tick in between
        assert rows == [line.split()[:2] for line in with_header[1:]] and rows[0][0] == first, (with_header, without)
    assert any(f"in {minutes}m" in cpctl(server, "token", "list").stdout for minutes in (89, 90))  # --ttl 1h30m
    assert cpctl(server, "list-units", "--no-headers").stdout.strip() == ""


@pytest.mark.parametrize(("args", "start"), [
    (["-o", "jsonpath={.items[*].metadata.name"], "error: -o/--output: unclosed {"),
    (["-o", "jsonpath={range .items[*]}{.x}"], "error: -o/--output: {range} without {end}"),
    (["-o", "custom-columns=NAME"], "error: -o/--output: custom-columns wants HEADER:PATH"),
    (["--sort-by", "metadata[name"], "error: --sort-by: unclosed ["),
])
def test_bad_expressions(server: ApiServer, args: list[str], start: str) -> None:
    result = cpctl(server, "get", "units", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(start), result.stderr


def test_durations_reach_the_server(server: ApiServer) -> None:
    started = time.monotonic()
    result = cpctl(server, "get", "units", "-l", LABEL, "--watch", "--watch-timeout", "1s500ms", "--no-headers")
    elapsed = time.monotonic() - started
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result
    assert 1.0 < elapsed < 20, elapsed  # the server ended the watch (timeoutSeconds=1.5)
    result = cpctl(server, "delete", "unit", "hab-none", "--wait", "--timeout", "10 seconds")
    assert result.returncode == 2 and "invalid duration '10 seconds'" in result.stderr


def _complete(server: ApiServer, words: str, *, token: str = "admin-token") -> subprocess.CompletedProcess[str]:
    env = {**server.env(token), "_CPCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    return cpctl(server, env=env)


def test_shell_completion_of_verbs_kinds_and_live_names(server: ApiServer) -> None:
    verbs = _complete(server, "cpctl ")
    assert {"plain,get", "plain,exec", "plain,config", "plain,logs"} <= set(verbs.stdout.splitlines()), verbs
    kinds = _complete(server, "cpctl get ")
    assert kinds.returncode == 0 and kinds.stdout.splitlines() == [
        "plain,units", "plain,machines", "plain,instances", "plain,endpoints", "plain,events", "plain,secrets"]
    names = _complete(server, "cpctl get units hab-")
    assert names.returncode == 0 and sorted(names.stdout.splitlines()) == [f"plain,{n}" for n in sorted(NAMES)]
    assert _complete(server, "cpctl scale hab-m").stdout.splitlines() == ["plain,hab-mid"]
    # a refused token, or no server at all: nothing, silently
    for result in (_complete(server, "cpctl get units hab-", token="wrong-token"),
                   cpctl(server, env={**server.env(), "CPCTL_SERVER": "http://127.0.0.1:9", "COMP_CWORD": "3",
                                      "_CPCTL_COMPLETE": "bash_complete", "COMP_WORDS": "cpctl get units hab-"})):
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")  # click prints "\n"
    script = cpctl(server, env={**server.env(), "_CPCTL_COMPLETE": "bash_source"})
    assert "_CPCTL_COMPLETE=bash_complete" in script.stdout and "complete -o nosort -F" in script.stdout


def test_contexts_against_the_server(server: ApiServer, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CPCTL_")}
    env["HOME"] = str(tmp_path)
    token_file = tmp_path / "live.token"
    token_file.write_text("viewer-token\n")
    token_file.chmod(0o600)
    config = tmp_path / ".config" / "cpctl" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"server: {server.url}\ntoken: wrong-token\n")  # the single-server file of before
    result = cpctl(server, "get", "units", "-l", LABEL, env=env)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "token" in result.stderr, result
    assert cpctl(server, "config", "set-context", "live", "--server", server.url, "--token-file", str(token_file),
                 env=env).stdout == 'Context "live" created.\n'
    assert cpctl(server, "config", "set-context", "admin", "--server", server.url, "--token", "admin-token",
                 env=env).returncode == 0
    result = cpctl(server, "--context", "live", "get", "units", "-l", LABEL, "-o", "name", env=env)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result
    result = cpctl(server, "get", "units", "-l", LABEL, "-o", "name", "--context", "live", env=env)
    assert result.returncode == 0, result  # after the verb too
    result = cpctl(server, "--context", "live", "scale", "hab-mid", "--replicas", "4", "--no-wait", env=env)
    assert result.returncode == 1 and 'user "viewer" (viewer) cannot' in result.stderr  # the viewer's token it is
    assert cpctl(server, "config", "use-context", "admin", env=env).returncode == 0
    result = cpctl(server, "scale", "hab-mid", "--replicas", "4", "--no-wait", env=env)
    assert result.returncode == 0, result
    assert cpctl(server, "config", "current-context", env=env).stdout == "admin\n"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    data = yaml.safe_load(config.read_text())
    assert data["token"] == "wrong-token" and data["contexts"]["live"]["token-file"] == str(token_file)
    listed = cpctl(server, "config", "get-contexts", env=env).stdout
    assert "admin-token" not in listed and "viewer-token" not in listed
    completed = cpctl(server, env={**env, "_CPCTL_COMPLETE": "bash_complete", "COMP_WORDS": "cpctl --context l",
                                   "COMP_CWORD": "2"})
    assert completed.stdout.splitlines() == ["plain,live"]
    result = cpctl(server, "--context", "gone", "get", "units", env=env)
    assert result.returncode == 1 and 'no context "gone"' in result.stderr
    assert json.loads(cpctl(server, "--context", "live", "get", "unit", "hab-mid", "-o", "json",
                            env=env).stdout)["spec"]["replicas"] == 4
