"""docs/deploy.md and docs/prometheus.yml say what works.

- ``promtool check config`` accepts docs/prometheus.yml (its /etc/prometheus files relocated to a
  temp folder that holds them, since promtool checks that they exist), and it scrapes the API
  servers and the agents on port 9102;
- the docs' command that writes the agents' target file turns a machine list into valid targets;
- every ``cpctl`` and ``cp-apiserver`` command line in the docs' code blocks parses (click, with
  --help appended: options and subcommands must exist). Names the contract adds through other
  work (PENDING) are tolerated only while this build has none of them.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from promtool_fixture import promtool_path

from controlplane.api.server import main as apiserver_main
from controlplane.cli.main import main as cpctl_main

REPO = Path(__file__).resolve().parents[2]
DEPLOY_MD = REPO / "docs" / "deploy.md"
PROMETHEUS_YML = REPO / "docs" / "prometheus.yml"
PROGRAMS: dict[str, click.Command] = {"cpctl": cpctl_main, "cp-apiserver": apiserver_main}
# the contract's names that other work adds: cp-apiserver's etcd TLS flags, `cpctl token`
PENDING = {"--etcd-cacert": "cp-apiserver", "--etcd-cert": "cp-apiserver", "--etcd-key": "cp-apiserver",
           "token": "cpctl"}
SHELL_OPERATORS = {"|", ">", ">>", "&&", "||", ";", "<"}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)


def command_lines(text: str) -> list[list[str]]:
    """Each cpctl/cp-apiserver command of the code blocks, as argv, up to the first shell operator."""
    commands = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not any(line.startswith(program + " ") for program in PROGRAMS):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            argv: list[str] = []
            for token in iter(lexer.get_token, None):
                if token in SHELL_OPERATORS:
                    break
                argv.append(token)
            commands.append(argv)
    return commands


def in_build(name: str) -> bool:
    program = PROGRAMS[PENDING[name]]
    if name.startswith("--"):
        return any(name in param.opts for param in program.params)
    return isinstance(program, click.Group) and name in program.commands


def test_the_docs_name_both_programs() -> None:
    commands = command_lines(DEPLOY_MD.read_text())
    seen = {argv[0] for argv in commands}
    assert seen == set(PROGRAMS)
    assert any(argv[:3] == ["cpctl", "machine", "join-config"] for argv in commands)
    assert len(commands) >= 8


def without_absent_pending(argv: list[str]) -> list[str] | None:
    """argv without the pending options this build lacks (with their values); None when it runs a
    pending subcommand this build lacks (nothing left to check)."""
    if any(arg in PENDING and not arg.startswith("--") and not in_build(arg) for arg in argv[1:3]):
        return None
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in PENDING and arg.startswith("--") and not in_build(arg):
            skip = True  # and its value
        else:
            out.append(arg)
    return out


def test_every_command_line_parses() -> None:
    runner = CliRunner()
    failures = []
    for argv in command_lines(DEPLOY_MD.read_text()):
        checked = without_absent_pending(argv)
        if checked is None:
            continue
        result = runner.invoke(PROGRAMS[checked[0]], [*checked[1:], "--help"], prog_name=checked[0])
        if result.exit_code != 0 or "Usage:" not in result.output:
            failures.append(f"{shlex.join(argv)}\n  -> {result.output.strip()[-300:]}")
    assert not failures, "\n".join(failures)


def test_a_command_line_with_a_wrong_flag_is_caught() -> None:
    """The check above can fail: a misspelt flag does not parse."""
    result = CliRunner().invoke(cpctl_main, ["machine", "join-config", "web-1", "--adress", "10.0.0.1", "--help"])
    assert result.exit_code != 0 and "No such option" in result.output


def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    promtool = promtool_path()
    files = tmp_path / "controlplane"
    files.mkdir()
    (files / "viewer.token").write_text("tok-0123abcd.secret\n")
    (files / "ca.pem").write_text("")
    (files / "agents.json").write_text(json.dumps([{"targets": ["10.0.1.1:9102"], "labels": {"machine": "web-1"}}]))
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_YML.read_text().replace("/etc/prometheus/", f"{tmp_path}/"))
    got = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and "SUCCESS" in got.stdout + got.stderr, got.stdout + got.stderr
    assert "WARNING" not in got.stdout + got.stderr


def test_the_scrape_config_covers_servers_and_agents() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    servers = jobs["cp-apiserver"]
    assert servers["authorization"]["credentials_file"]  # /metrics wants a viewer or admin token
    assert all(t.endswith(":7070") for s in servers["static_configs"] for t in s["targets"])
    agents = jobs["cp-agent"]
    assert agents["file_sd_configs"][0]["files"] == ["/etc/prometheus/controlplane/agents.json"]


def test_the_agents_target_file_command(tmp_path: Path) -> None:
    """The docs' pipeline, fed a machine list as `cpctl get machines -o json` prints it."""
    block = next(b for b in code_blocks(DEPLOY_MD.read_text()) if "agents.json" in b)
    machines = {"kind": "MachineList", "items": [
        {"metadata": {"name": "web-1"}, "status": {"address": "10.0.1.1"}},
        {"metadata": {"name": "web-2"}, "status": {"address": "10.0.1.2"}},
        {"metadata": {"name": "new"}, "status": {}},
    ]}
    (tmp_path / "machines.json").write_text(json.dumps(machines))
    script = block.replace("cpctl get machines -o json", f"cat {tmp_path}/machines.json").replace(
        "/etc/prometheus/controlplane/", f"{tmp_path}/")
    got = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    targets = json.loads((tmp_path / "agents.json").read_text())
    assert targets == [{"targets": ["10.0.1.1:9102"], "labels": {"machine": "web-1"}},
                       {"targets": ["10.0.1.2:9102"], "labels": {"machine": "web-2"}}]


@pytest.mark.parametrize("line,argv", [
    ("cpctl run web --port 8080 | tee x", ["cpctl", "run", "web", "--port", "8080"]),
    ("cp-apiserver --etcd a,b \\\n  --listen 1:2 > log", ["cp-apiserver", "--etcd", "a,b", "--listen", "1:2"]),
])
def test_command_lines_are_cut_at_shell_operators(line: str, argv: list[str]) -> None:
    assert command_lines(f"```sh\n{line}\n```\n") == [argv]
