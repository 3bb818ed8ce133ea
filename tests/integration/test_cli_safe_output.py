"""cpctl never passes a terminal escape sequence from the server to the terminal: objects whose
annotations, instance messages and Event messages hold ESC and C1 sequences are printed by
every verb that shows them, and no output (stdout or stderr) carries an ESC byte."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer
from test_cli import admin, cpctl, get_or_none, until


@pytest.fixture(scope="module")
def server(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/cli-safe-{uuid.uuid4().hex[:8]}") as api:
        yield api


EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m\x9b31mc1"


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, repr(text)


@pytest.fixture(scope="module")
async def evil_objects(server: ApiServer) -> None:
    async with admin(server) as api:
        await api.create("units", {"metadata": {"name": "evil", "annotations": {"note": EVIL}},
                                   "spec": {"image": "local/web:1", "replicas": 1}})
        await until(lambda: get_or_none(server, "instances", "evil-0"), what="the unit's instance")
        await api.patch("instances", "evil-0", {"metadata": {"annotations": {"note": EVIL}}})
        await api.create("events", {"metadata": {"name": "evil-event"}, "type": "Warning", "reason": "Evil",
                                    "involvedObject": {"kind": "Unit", "name": "evil"}, "message": EVIL})


@pytest.mark.parametrize(("args", "shows_it"), [
    (("get", "units", "-o", "wide"), False),
    (("get", "instances", "-o", "wide"), False),
    (("get", "events"), True),
    (("get", "unit", "evil", "-o", "yaml"), True),
    (("get", "unit", "evil", "-o", "json"), True),
    (("describe", "unit", "evil"), True),  # its annotation and its Event
    (("describe", "instance", "evil-0"), True),
    (("list-units",), False),
])
def test_printed_server_data_has_no_escape(server: ApiServer, evil_objects: None, args: tuple[str, ...],
                                           shows_it: bool) -> None:
    proc = cpctl(server, *args)
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc.stdout, proc.stderr)
    if shows_it:  # the text is still there, tamed (or escaped, in json and yaml)
        assert "red" in proc.stdout and "c1" in proc.stdout, proc.stdout


def test_status_messages_on_stderr_have_no_escape(server: ApiServer) -> None:
    proc = cpctl(server, "describe", "unit", "no\x1b]0;owned\x07such")
    assert proc.returncode == 1
    assert_clean(proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and "not found" in proc.stderr
