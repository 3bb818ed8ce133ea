"""cpctl without a server: flag parsers, the Unit ``run`` builds, KIND aliases, config
precedence, printers, the wait judgement and the one-line error."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from controlplane.cli.apply import parse_documents
from controlplane.cli.common import CLIError, error_line, resolve_kind
from controlplane.cli.config import DEFAULT_SERVER, ConfigError, read_config_file, resolve_config
from controlplane.cli.describe import describe_text
from controlplane.cli.machines import fleet_state, list_machines_table, list_units_table
from controlplane.cli.main import main
from controlplane.cli.printers import age, format_table, render, table
from controlplane.cli.run import (
    build_unit,
    parse_constraints,
    parse_env,
    parse_expose,
    parse_health_http,
    parse_memory,
    parse_port,
)
from controlplane.cli.wait import describe_instance, timeout_details, unit_progress
from controlplane.errors import Cause, Invalid
from controlplane.schemas import load_object

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


# --- flag parsers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("8080", {"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}),
    ("80:8088", {"containerPort": 80, "hostPort": 8088, "protocol": "tcp"}),
    ("53:5353/udp", {"containerPort": 53, "hostPort": 5353, "protocol": "udp"}),
    ("53/udp", {"containerPort": 53, "hostPort": 0, "protocol": "udp"}),
])
def test_parse_port(text: str, want: dict[str, Any]) -> None:
    assert parse_port(text) == want


@pytest.mark.parametrize("text", ["", "abc", "0", "70000", "80:70000", "80:", ":80", "80/sctp", "80:81:82"])
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_port(text)


def test_parse_env() -> None:
    assert parse_env("A=b") == ("A", "b")
    assert parse_env("A=") == ("A", "")
    assert parse_env("URL=x=y") == ("URL", "x=y")
    for bad in ("A", "=b", ""):
        with pytest.raises(click.BadParameter):
            parse_env(bad)


def test_constraints_and_keys_or_values() -> None:
    assert parse_constraints(["role=web", "region=eu", "role=edge", "role=web"]) == {
        "role": ["web", "edge"], "region": ["eu"],
    }
    for bad in (["role"], ["=web"], ["role="]):
        with pytest.raises(click.BadParameter):
            parse_constraints(bad)


def test_parse_expose() -> None:
    assert parse_expose("someapp") == {"host": "someapp"}
    assert parse_expose("someapp:8080") == {"host": "someapp", "port": 8080}
    for bad in ("", ":80", "someapp:x", "someapp:0"):
        with pytest.raises(click.BadParameter):
            parse_expose(bad)


def test_parse_health_http_defaults_to_first_port() -> None:
    ports = [parse_port("8080"), parse_port("9090")]
    assert parse_health_http("/", ports) == {"path": "/", "port": 8080}
    assert parse_health_http("/healthz:9090", ports) == {"path": "/healthz", "port": 9090}
    assert parse_health_http(":9090", []) == {"path": "/", "port": 9090}
    with pytest.raises(click.BadParameter):
        parse_health_http("/", [])  # no port anywhere
    with pytest.raises(click.BadParameter):
        parse_health_http("healthz:80", ports)


@pytest.mark.parametrize(("text", "mb"), [("64", 64), ("512M", 512), ("512Mi", 512), ("1G", 1024), ("1.5Gi", 1536)])
def test_parse_memory(text: str, mb: int) -> None:
    assert parse_memory(text) == mb


def test_parse_memory_refuses() -> None:
    with pytest.raises(click.BadParameter):
        parse_memory("lots")


# --- the Unit run builds -----------------------------------------------------------------------

def test_build_unit_seed_web() -> None:
    unit = build_unit("web", image="local/web:latest", replicas=2, ports=["8080"], health_http="/",
                      env=["GREETING=hello"], command=["httpd", "-f"])
    assert unit == {
        "apiVersion": "v1", "kind": "Unit", "metadata": {"name": "web"},
        "spec": {
            "image": "local/web:latest", "command": ["httpd", "-f"], "env": {"GREETING": "hello"},
            "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}], "replicas": 2,
            "health": {"http": {"path": "/", "port": 8080}},
        },
    }
    load_object("Unit", unit)  # the server's own schema accepts it


def test_build_unit_placement_and_resources() -> None:
    unit = build_unit("db", image="db:1", cpu=0.5, memory="1G", constraints=["role=db", "role=misc", "disk=ssd"],
                      conflicts=["db-*"], spread="preferred", machine_of="cache", restart="OnFailure",
                      labels=["app=db"])
    spec = unit["spec"]
    assert spec["resources"] == {"cpu": 0.5, "memoryMB": 1024}
    assert spec["placement"] == {"spread": "preferred", "conflicts": ["db-*"],
                                 "machineMetadata": {"role": ["db", "misc"], "disk": ["ssd"]}, "machineOf": "cache"}
    assert spec["restartPolicy"] == "OnFailure"
    assert unit["metadata"]["labels"] == {"app": "db"}


def test_build_unit_lb_proxy() -> None:
    unit = build_unit("web-lb", lb="web", replicas=2, expose="someapp")
    assert unit["spec"] == {
        "proxy": {"kind": "loadbalancer", "target": "web", "port": 80},
        "ports": [{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}],
        "replicas": 2, "expose": {"host": "someapp"},
    }
    load_object("Unit", unit)


def test_build_unit_edge_proxy_port_mapping() -> None:
    unit = build_unit("edge", edge="mywebsite.com", ports=["80:8088"], is_global=True)
    assert unit["spec"]["proxy"] == {"kind": "edge", "domain": "mywebsite.com", "port": 80}
    assert unit["spec"]["ports"] == [{"containerPort": 80, "hostPort": 8088, "protocol": "tcp"}]
    assert unit["spec"]["global"] is True
    assert "image" not in unit["spec"]
    load_object("Unit", unit)


def test_build_unit_usage_errors() -> None:
    with pytest.raises(click.UsageError, match="--image is required"):
        build_unit("web")
    with pytest.raises(click.UsageError, match="one"):
        build_unit("p", lb="web", edge="example.com")
    with pytest.raises(click.BadParameter):
        build_unit("web", image="x", ports=["http"])


def test_run_usage_errors_exit_2_before_any_request() -> None:
    runner = CliRunner()
    # the server is unreachable on purpose: a usage error must be found before trying it
    env = {"CPCTL_SERVER": "http://127.0.0.1:1", "CPCTL_TOKEN": "t", "HOME": "/nonexistent"}
    for args in (["run", "web"], ["run", "web", "--image", "x", "--port", "abc"],
                 ["run", "web", "--image", "x", "--replicas", "-1"], ["run", "web", "--image", "x", "--env", "NOPE"],
                 ["run", "web", "--image", "x", "--spread", "sideways"], ["get", "bogus"], ["scale", "web"]):
        result = CliRunner.invoke(runner, main, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "cannot reach" not in result.output


def test_unreachable_server_is_one_error_line() -> None:
    result = CliRunner().invoke(main, ["get", "units"], env={"CPCTL_SERVER": "http://127.0.0.1:1", "HOME": "/x"})
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot reach the server at http://127.0.0.1:1: ")
    assert "Traceback" not in result.output


# --- KIND aliases ------------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "resource"), [
    ("unit", "units"), ("units", "units"), ("u", "units"), ("Unit", "units"),
    ("machine", "machines"), ("machines", "machines"), ("m", "machines"),
    ("instance", "instances"), ("instances", "instances"), ("i", "instances"),
    ("endpoints", "endpoints"), ("ep", "endpoints"), ("events", "events"), ("ev", "events"), ("event", "events"),
])
def test_kind_aliases(typed: str, resource: str) -> None:
    assert resolve_kind(typed) == resource


def test_unknown_kind() -> None:
    with pytest.raises(click.BadParameter):
        resolve_kind("pods")


# --- config precedence -------------------------------------------------------------------------

def test_config_precedence_per_key() -> None:
    env = {"CPCTL_TOKEN": "env-token", "CPCTL_SERVER": "http://env:1"}
    file_values = {"server": "http://file:2", "token": "file-token", "ca": "/file/ca.pem"}
    config = resolve_config(flags={"server": "http://flag:3"}, env=env, file_values=file_values)
    assert (config.server, config.token, config.ca) == ("http://flag:3", "env-token", "/file/ca.pem")
    assert resolve_config(flags={}, env={}, file_values={}).server == DEFAULT_SERVER
    assert resolve_config(flags={"server": "10.0.0.1:7070/"}, env={}, file_values={}).server == "http://10.0.0.1:7070"


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    assert read_config_file(path) == {}
    path.write_text("server: http://x:7070\ntoken: abc\nother: 1\n")
    assert read_config_file(path) == {"server": "http://x:7070", "token": "abc"}
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError):
        read_config_file(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError):
        read_config_file(path)


def test_config_file_is_read_from_home(tmp_path: Path) -> None:
    (tmp_path / ".config" / "cpctl").mkdir(parents=True)
    (tmp_path / ".config" / "cpctl" / "config.yaml").write_text("server: http://127.0.0.1:2\n")
    result = CliRunner().invoke(main, ["get", "units"], env={"HOME": str(tmp_path), "CPCTL_SERVER": None})
    assert result.exit_code == 1
    assert "http://127.0.0.1:2" in result.output


# --- the error line ----------------------------------------------------------------------------

def test_error_line_joins_causes_not_in_the_message() -> None:
    err = Invalid('Unit "Web!" is invalid: metadata.name: must be a DNS-1123 label',
                  causes=[Cause("metadata.name", "must be a DNS-1123 label"), Cause("spec.image", "required")])
    assert error_line(err) == ('Unit "Web!" is invalid: metadata.name: must be a DNS-1123 label; '
                               "spec.image: required")
    assert "\n" not in error_line(Invalid("two\nlines"))


# --- printers ----------------------------------------------------------------------------------

def _unit(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Unit",
            "metadata": {"name": name, "creationTimestamp": "2025-01-01T11:55:00.000000Z", "generation": 1,
                         "labels": {"app": name}},
            "spec": {"replicas": 2, **spec}, "status": {"replicas": 2, "readyReplicas": 1}}


def _instance(name: str, *, unit: str = "web", machine: str = "", phase: str = "Pending", ready: bool = False,
              message: str = "", generation: int = 1, index: int = 0) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Instance",
            "metadata": {"name": name, "creationTimestamp": "2025-01-01T11:59:30Z"},
            "spec": {"unit": unit, "index": index, "machine": machine, "generation": generation},
            "status": {"phase": phase, "ready": ready, "message": message, "reason": "", "restarts": 1,
                       "address": "127.0.1.1" if machine else "",
                       "hostPorts": [{"containerPort": 8080, "hostPort": 31000, "protocol": "tcp"}] if machine else []}}


def test_age() -> None:
    assert age("2025-01-01T11:59:30Z", NOW) == "30s"
    assert age("2025-01-01T11:49:59.5Z", NOW) == "10m"
    assert age("2024-12-31T12:00:00Z", NOW) == "24h"
    assert age("2024-12-01T12:00:00Z", NOW) == "31d"
    assert age("", NOW) == "<unknown>"


def test_format_table_pads_columns() -> None:
    assert format_table(["A", "BB"], [["xxx", "y"]]) == "A     BB\nxxx   y"


def test_units_table() -> None:
    text = table("units", [_unit("web", image="local/web:1"), _unit("web-lb", proxy={"kind": "loadbalancer",
                                                                                     "target": "web"})], now=NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "REPLICAS", "IMAGE", "AGE"]
    assert lines[1].split() == ["web", "1/2", "local/web:1", "5m"]
    assert lines[2].split()[:3] == ["web-lb", "1/2", "<lb:"]


def test_instances_table_and_wide() -> None:
    items = [_instance("web-0", machine="m1", phase="Running", ready=True),
             _instance("web-1", message="0/4 machines: 2 conflict with web, 1 NotReady")]
    lines = table("instances", items, now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "UNIT", "MACHINE", "PHASE", "READY", "ADDRESS", "PORTS", "RESTARTS", "AGE"]
    assert lines[1].split() == ["web-0", "web", "m1", "Running", "yes", "127.0.1.1", "31000->8080", "1", "30s"]
    assert lines[2].split()[:5] == ["web-1", "web", "<none>", "Pending", "no"]
    wide = table("instances", items, wide=True, now=NOW).splitlines()
    assert wide[0].split()[-2:] == ["REASON", "MESSAGE"]
    assert wide[2].endswith("0/4 machines: 2 conflict with web, 1 NotReady")


def test_machines_table() -> None:
    machine = {"metadata": {"name": "m1", "labels": {"role": "web", "region": "eu"},
                            "creationTimestamp": "2025-01-01T10:00:00Z"},
               "spec": {"unschedulable": True}, "status": {"state": "Ready", "address": "127.0.1.1"}}
    lines = table("machines", [machine], now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "ADDRESS", "LABELS", "SCHEDULABLE", "AGE"]
    assert lines[1].split() == ["m1", "Ready", "127.0.1.1", "region=eu,role=web", "no", "2h"]


def test_endpoints_and_events_tables() -> None:
    ep = {"metadata": {"name": "web", "creationTimestamp": "2025-01-01T11:59:00Z"},
          "endpoints": [{"address": "127.0.1.1", "port": 31000}, {"address": "127.0.1.2", "port": 31001}]}
    assert table("endpoints", [ep], now=NOW).splitlines()[1].split() == ["web", "127.0.1.1:31000,127.0.1.2:31001",
                                                                        "60s"]
    event = {"metadata": {"name": "e1"}, "type": "Warning", "reason": "FailedScheduling",
             "involvedObject": {"kind": "Instance", "name": "web-1"}, "message": "0/1 machines: 1 NotReady",
             "timestamp": "2025-01-01T11:59:58Z"}
    lines = table("events", [event], now=NOW).splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert lines[1].split()[:4] == ["2s", "Warning", "FailedScheduling", "instance/web-1"]


def test_render_formats() -> None:
    units = [_unit("web", image="x"), _unit("db", image="y")]
    assert render("units", units, "name") == "unit/web\nunit/db"
    listed = json.loads(render("units", units, "json", resource_version="7"))
    assert listed["kind"] == "UnitList" and listed["metadata"]["resourceVersion"] == "7"
    assert [u["metadata"]["name"] for u in listed["items"]] == ["web", "db"]
    assert json.loads(render("units", units[:1], "json", single=True))["kind"] == "Unit"
    assert yaml.safe_load(render("units", units[:1], "yaml", single=True))["spec"]["image"] == "x"
    assert render("units", [], "table") == ""


def test_describe_instance_names_placement() -> None:
    inst = _instance("web-1", message="0/4 machines: 2 conflict with web, 1 lacks role=edge, 1 NotReady")
    event = {"type": "Warning", "reason": "FailedScheduling", "message": "0/4 machines", "count": 3,
             "timestamp": "2025-01-01T11:58:00Z", "lastTimestamp": "2025-01-01T11:59:50Z"}
    text = describe_text("instances", inst, events=[event], now=NOW)
    assert "Placement:      0/4 machines: 2 conflict with web, 1 lacks role=edge, 1 NotReady" in text
    assert "Machine:        <none> (not placed)" in text
    assert "10s (x3 over 2m)" in text and "FailedScheduling" in text


def test_describe_unit_lists_instances() -> None:
    text = describe_text("units", _unit("web", image="x"), instances=[_instance("web-0", machine="m1")], events=[],
                         now=NOW)
    assert "Spec:\n  replicas: 2\n  image: x" in text
    assert "Instances:\n  NAME    MACHINE   PHASE     READY   MESSAGE\n  web-0   m1" in text
    assert text.endswith("Events:\n  <none>")


# --- fleet views -------------------------------------------------------------------------------

def test_fleet_state() -> None:
    assert fleet_state(_instance("a")) == ("inactive", "dead")
    assert fleet_state(_instance("a", machine="m1")) == ("activating", "start-pre")
    assert fleet_state(_instance("a", machine="m1", phase="Starting")) == ("activating", "start")
    assert fleet_state(_instance("a", machine="m1", phase="Running", ready=True)) == ("active", "running")
    assert fleet_state(_instance("a", machine="m1", phase="Failed")) == ("failed", "failed")
    assert fleet_state(_instance("a", machine="m1", phase="Stopped")) == ("inactive", "dead")


def test_fleet_tables() -> None:
    machines = [{"metadata": {"name": "m1", "labels": {"role": "web"}}, "status": {"address": "127.0.1.1"}}]
    assert list_machines_table(machines).splitlines() == ["MACHINE   IP          METADATA",
                                                         "m1        127.0.1.1   role=web"]
    rows = list_units_table([_instance("web-1", index=1), _instance("web-0", machine="m1", phase="Running",
                                                                     ready=True)], machines).splitlines()
    assert rows[0].split() == ["UNIT", "MACHINE", "ACTIVE", "SUB"]
    assert rows[1].split() == ["web-0", "m1/127.0.1.1", "active", "running"]
    assert rows[2].split() == ["web-1", "-", "inactive", "dead"]


# --- the wait judgement ------------------------------------------------------------------------

def test_unit_progress_counts_current_running_ready() -> None:
    unit = _unit("web", image="x")
    instances = [_instance("web-0", machine="m1", phase="Running", ready=True),
                 _instance("web-1", machine="m2", phase="Running", ready=False),
                 _instance("other-0", unit="other", machine="m1", phase="Running", ready=True)]
    progress = unit_progress(unit, instances)
    assert (progress.desired, progress.ready, progress.done) == (2, 1, False)
    instances[1]["status"]["ready"] = True
    assert unit_progress(unit, instances).done
    unit["metadata"]["generation"] = 2  # a new spec: the old instances do not count
    assert unit_progress(unit, instances).ready == 0


def test_unit_progress_after_a_scale_counts_instances_of_the_same_template() -> None:
    """A scale bumps the unit's generation but rolls nothing: an instance that carries the unit's
    template counts as current (``cpctl scale --wait`` waited forever for it)."""
    unit = _unit("web", image="x")
    unit["metadata"]["generation"] = 2
    unit["spec"]["replicas"] = 3
    same = [_instance(f"web-{n}", machine="m1", phase="Running", ready=True, index=n) for n in range(3)]
    for inst in same:
        inst["spec"]["template"] = {"image": "x"}
    assert unit_progress(unit, same).done
    same[0]["spec"]["template"] = {"image": "old"}  # an instance of another template still waits
    assert unit_progress(unit, same).ready == 2


def test_unit_progress_global() -> None:
    unit = _unit("edge", image="x", **{"global": True})
    unit["status"] = {"replicas": 0, "observedGeneration": 0}
    assert unit_progress(unit, []).desired == 1  # wait for at least one instance
    unit["status"] = {"replicas": 3, "observedGeneration": 1}
    running = [_instance(f"edge-{i}", unit="edge", machine=f"m{i}", phase="Running", ready=True) for i in range(2)]
    assert (unit_progress(unit, running).desired, unit_progress(unit, running).done) == (3, False)


def test_timeout_details_name_each_instance() -> None:
    unit = _unit("web", image="x")
    progress = unit_progress(unit, [_instance("web-0", message="0/4 machines: 2 conflict with web, 1 NotReady")])
    lines = timeout_details([progress])
    assert lines[0] == "  unit/web: 0/2 ready"
    assert lines[1] == "    web-0: Pending: 0/4 machines: 2 conflict with web, 1 NotReady"
    assert "1 instance(s) not created yet" in lines[2]
    assert describe_instance(_instance("x", phase="Running")) == "x: Running, not ready"


# --- apply's parsing and comparison ------------------------------------------------------------

def test_parse_documents_yaml_json_and_lists() -> None:
    text = "kind: Unit\nmetadata: {name: a}\nspec: {image: x}\n---\n---\nkind: Unit\nmetadata: {name: b}\n"
    assert [d["metadata"]["name"] for d in parse_documents(text)] == ["a", "b"]
    as_json = json.dumps({"kind": "UnitList", "items": [{"kind": "Unit", "metadata": {"name": "c"}}]})
    assert [d["metadata"]["name"] for d in parse_documents(as_json)] == ["c"]
    for bad in ("kind: Pod\nmetadata: {name: a}\n", "kind: Unit\n", "- 1\n", "a: [unclosed\n"):
        with pytest.raises(CLIError):
            parse_documents(bad)
