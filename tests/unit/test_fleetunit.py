"""The fleet unit file converter (controlplane/fleetunit.py), table-tested, and the seed fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.fleetunit import UnitFileError, convert, unit_name
from controlplane.schemas import load_object

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fleet"


def unit_file(exec_start: str = "/usr/bin/docker run local/web:latest", *, fleet: str = "", service: str = "",
              unit: str = "") -> str:
    return f"[Unit]\n{unit}\n[Service]\n{service}\nExecStart={exec_start}\n[X-Fleet]\n{fleet}\n"


# ---- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("filename", "name", "noted"), [
    ("someapp@.service", "someapp", ""),
    ("/some/dir/web.service", "web", ""),
    ("someapp@1.service", "someapp", "instance '1' of template someapp@.service"),
    ("nginx_lb.service", "nginx-lb", "not a DNS label: named 'nginx-lb'"),
    ("Web.Front.service", "web-front", "not a DNS label"),
])
def test_unit_name(filename: str, name: str, noted: str) -> None:
    got, notes = unit_name(filename)
    assert got == name
    assert (noted in notes[0]) if noted else notes == []


@pytest.mark.parametrize("filename", ["web.yaml", "@.service", "___.service"])
def test_a_file_name_without_a_unit_name_is_refused(filename: str) -> None:
    with pytest.raises(UnitFileError):
        unit_name(filename)


# ---- docker run ---------------------------------------------------------------------------------

# (the flags and arguments after "docker run", the spec fields expected, the unmapped text expected)
DOCKER_RUN: list[tuple[str, dict[str, Any], list[str]]] = [
    ("local/web:latest", {}, []),
    ("-p 80:8080 img", {"ports": [{"containerPort": 8080, "hostPort": 80, "protocol": "tcp"}]}, []),
    ("--publish=8080 img", {"ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]}, []),
    ("-p 53:53/udp img", {"ports": [{"containerPort": 53, "hostPort": 53, "protocol": "udp"}]}, []),
    ("-p 127.0.0.1:80:8080 img", {"ports": [{"containerPort": 8080, "hostPort": 80, "protocol": "tcp"}]},
     ["docker run -p 127.0.0.1:80:8080: the address '127.0.0.1' is dropped"]),
    ("-p 8000-8010:8000-8010 img", {}, ["docker run -p 8000-8010:8000-8010: not HOST:CONTAINER"]),
    ("-e A=1 --env B=x=y img", {"env": {"A": "1", "B": "x=y"}}, []),
    ("-e HOME img", {}, ["docker run -e HOME: takes its value from the host's environment"]),
    ("-e WHO=%i img", {"env": {"WHO": "%i"}}, ["docker run -e WHO=%i: '%i' uses a systemd specifier"]),
    ("-e IP=${COREOS_PUBLIC_IPV4} img", {"env": {"IP": "${COREOS_PUBLIC_IPV4}"}}, ["uses a systemd specifier"]),
    ("--restart=on-failure:3 img", {"restartPolicy": "OnFailure"}, []),
    ("--restart unless-stopped img", {"restartPolicy": "Always"}, []),
    ("--restart no img", {"restartPolicy": "Never"}, []),
    ("--restart sometimes img", {}, ["docker run --restart sometimes: not mapped"]),
    ("-m 512m --cpus 0.5 img", {"resources": {"memoryMB": 512, "cpu": 0.5}}, []),
    ("--memory=1g img", {"resources": {"memoryMB": 1024}}, []),
    ("--memory lots img", {}, ["docker run --memory lots: not a size"]),
    ("-u 1000:1000 img", {"user": "1000:1000"}, []),
    ("--name web-%i -d --rm -it --init img", {}, []),
    ("-v /data:/data --privileged --net=host img", {},
     ["docker run -v /data:/data: not mapped", "docker run --privileged: not mapped",
      "docker run --net host: not mapped"]),
    ("img serve --port 80", {"command": ["serve", "--port", "80"]}, []),
    ("img sh -c 'echo hi; sleep 1'", {"command": ["sh", "-c", "echo hi; sleep 1"]}, []),
]


@pytest.mark.parametrize(("args", "fields", "unmapped"), DOCKER_RUN)
def test_docker_run(args: str, fields: dict[str, Any], unmapped: list[str]) -> None:
    result = convert(unit_file(f"/usr/bin/docker run {args}"), filename="web.service")
    spec = result.unit["spec"]
    assert spec["image"] in ("img", "local/web:latest")
    assert {k: v for k, v in spec.items() if k != "image"} == fields
    assert len(result.unmapped) == len(unmapped)
    for line, expected in zip(result.unmapped, unmapped, strict=True):
        assert expected in line


# ---- [X-Fleet] ----------------------------------------------------------------------------------

# (file name, [X-Fleet] lines, the placement expected, spec.global expected, unmapped text expected)
FLEET: list[tuple[str, str, dict[str, Any], bool, list[str]]] = [
    ("someapp@.service", "Conflicts=someapp@*", {"spread": "required"}, False, []),
    ("someapp@.service", "Conflicts=someapp@*.service", {"spread": "required"}, False, []),
    ("someapp@.service", "", {"spread": "preferred"}, False, []),
    ("web.service", "", {}, False, []),
    ("web.service", "Conflicts=web.service", {}, False, []),
    ("web.service", "Conflicts=db@*.service cache*\nConflicts=db@*", {"conflicts": ["db", "cache*"]}, False, []),
    ("web@.service", "Conflicts=web@* db@1.service", {"spread": "required", "conflicts": ["db"]}, False,
     ["names one instance: mapped to unit 'db'"]),
    ("web.service", "MachineOf=cache.service", {"machineOf": "cache"}, False, []),
    ("web.service", "MachineOf=cache@1.service", {"machineOf": "cache"}, False,
     ["names instance 'cache@1.service': mapped to unit 'cache'"]),
    ("web.service", "MachineID=m1", {"machine": "m1"}, False, []),
    ("web.service", "Global=true", {}, True, []),
    ("web.service", "Global=false", {}, False, []),
    ("web.service", "Global=maybe", {}, False, ["Global=maybe: not a boolean"]),
    ("web.service", 'MachineMetadata="role=web" "region=eu"\nMachineMetadata=region=us region=eu',
     {"machineMetadata": {"role": ["web"], "region": ["eu", "us"]}}, False, []),
    ("web.service", "MachineMetadata=role", {"machineMetadata": {}}, False, ["'role' is not key=value"]),
    ("web.service", "Replaces=old.service", {}, False, ["[X-Fleet] Replaces=old.service: not mapped"]),
]


@pytest.mark.parametrize(("filename", "fleet", "placement", "global_", "unmapped"), FLEET)
def test_x_fleet(filename: str, fleet: str, placement: dict[str, Any], global_: bool, unmapped: list[str]) -> None:
    result = convert(unit_file(fleet=fleet), filename=filename)
    spec = result.unit["spec"]
    assert spec.get("placement", {}) == placement
    assert spec.get("global", False) is global_
    assert len(result.unmapped) == len(unmapped), result.unmapped
    for line, expected in zip(result.unmapped, unmapped, strict=True):
        assert expected in line


# ---- the rest of the file -----------------------------------------------------------------------

def test_housekeeping_lines_are_dropped_silently_and_the_rest_is_reported() -> None:
    text = unit_file(
        unit="Description=my web\nAfter=docker.service\nRequires=docker.service etcd.service\n# a comment\n; another",
        service="ExecStartPre=-/usr/bin/docker kill web\nExecStartPre=-/usr/bin/docker rm web\n"
                "ExecStartPre=/usr/bin/docker pull img\nExecStop=/usr/bin/docker stop web\n"
                "ExecStartPre=/usr/bin/etcdctl set /web up\nRestart=always\nRestartSec=5",
    ) + "[Install]\nWantedBy=multi-user.target\n"
    result = convert(text, filename="web.service")
    assert result.unit["metadata"] == {"name": "web", "annotations": {"description": "my web"}}
    assert result.unit["spec"]["restartPolicy"] == "Always"
    assert result.unmapped == [
        "line 4: [Unit] Requires=docker.service etcd.service: not mapped",
        "line 12: [Service] ExecStartPre=/usr/bin/etcdctl set /web up: not mapped",
        "line 14: [Service] RestartSec=5: not mapped",
        "line 19: [Install] WantedBy=multi-user.target: section [Install] is not mapped",
    ]


def test_continued_lines_are_one_line() -> None:
    text = "[Service]\nExecStart=/usr/bin/docker run \\\n  -p 80:8080 \\\n  img\n"
    assert convert(text, filename="w.service").unit["spec"] == {
        "image": "img", "ports": [{"containerPort": 8080, "hostPort": 80, "protocol": "tcp"}]}


@pytest.mark.parametrize(("text", "why"), [
    ("[Service]\nType=oneshot\n", "no ExecStart"),
    ("[Service]\nExecStart=/usr/bin/node server.js\n", "is not /usr/bin/docker run"),
    ("[Service]\nExecStart=/bin/sh -c 'docker run img'\n", "is not /usr/bin/docker run"),
    ("[Service]\nExecStart=/usr/bin/docker run --rm\n", "names no image"),
    ("[Service]\nExecStart=docker run a\nExecStart=docker run b\n", "a second ExecStart"),
    ("[Service]\nExecStart docker run a\n", "is not Key=Value"),
    ("[Service]\nExecStart=/usr/bin/docker run 'img\n", "cannot split"),
])
def test_what_cannot_be_converted(text: str, why: str) -> None:
    with pytest.raises(UnitFileError, match=why):
        convert(text, filename="w.service")


# ---- the seed scenario's files ------------------------------------------------------------------

SEED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "someapp@.service": ({
        "image": "local/web:latest", "env": {"GREETING": "hello"},
        "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
        "placement": {"spread": "required"},
    }, ["[Service] TimeoutStartSec=0: not mapped"]),
    "someapp-lb@.service": ({
        "image": "local/nginx:latest", "ports": [{"containerPort": 80, "hostPort": 8081, "protocol": "tcp"}],
        "restartPolicy": "Always", "placement": {"machineMetadata": {"role": ["lb"]}, "spread": "required"},
    }, ["[Service] TimeoutStartSec=0: not mapped", "docker run -v /etc/someapp-lb:/etc/nginx/conf.d: not mapped"]),
    "edge.service": ({
        "image": "local/nginx:latest", "ports": [{"containerPort": 80, "hostPort": 8088, "protocol": "tcp"}],
        "restartPolicy": "Always", "global": True,
        "placement": {"machineMetadata": {"role": ["edge"], "region": ["eu", "us"]}},
    }, []),
}


@pytest.mark.parametrize("filename", sorted(SEED))
def test_seed_fixtures(filename: str) -> None:
    spec, unmapped = SEED[filename]
    result = convert((FIXTURES / filename).read_text(), filename=filename)
    assert result.unit["kind"] == "Unit" and result.unit["metadata"]["name"] == filename.split("@")[0].split(".")[0]
    assert result.unit["spec"] == spec
    assert len(result.unmapped) == len(unmapped)
    for line, expected in zip(result.unmapped, unmapped, strict=True):
        assert expected in line
    loaded = load_object("Unit", result.unit)  # what the server would store: valid, defaults filled
    assert loaded["spec"]["placement"]["spread"] == spec.get("placement", {}).get("spread", "required")
