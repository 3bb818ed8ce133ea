"""Several API servers for one client: parsing ``--server URL[,URL...]`` and the order servers are
asked in (controlplane/servers.py), and cpctl's resolution of a list."""

from __future__ import annotations

import pytest

from controlplane.cli.config import ConfigError, resolve_config
from controlplane.servers import ServerList, parse_servers


@pytest.mark.parametrize(("given", "expected"), [
    ("http://a:7070", ("http://a:7070",)),
    ("http://a:7070/, b:7070", ("http://a:7070", "http://b:7070")),
    ("https://a:1,https://b:2,", ("https://a:1", "https://b:2")),
    ("a:1,a:1,b:2", ("http://a:1", "http://b:2")),
    (["http://a:1", "b:2,c:3"], ("http://a:1", "http://b:2", "http://c:3")),
])
def test_parse_servers(given: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_servers(given) == expected


@pytest.mark.parametrize("given", ["", " , ", []])
def test_no_server_is_an_error(given: str | list[str]) -> None:
    with pytest.raises(ValueError, match="no API server"):
        parse_servers(given)


def test_failover_order_starts_at_the_server_that_answered_last() -> None:
    servers = ServerList("a:1,b:2,c:3")
    assert servers.attempts() == ["http://a:1", "http://b:2", "http://c:3"]
    servers.failed("http://a:1")
    assert servers.current == "http://b:2"
    assert servers.attempts() == ["http://b:2", "http://c:3", "http://a:1"]
    servers.failed("http://a:1")  # a second call that met the same dead server moves nothing
    assert servers.current == "http://b:2"
    servers.answered("http://a:1")
    assert servers.attempts()[0] == "http://a:1"
    servers.failed("http://a:1")
    servers.failed("http://b:2")
    servers.failed("http://c:3")
    assert servers.current == "http://a:1"  # round and round
    assert len(servers) == 3


def test_cpctl_resolves_a_server_list_from_flag_env_or_file() -> None:
    env = {"CPCTL_SERVER": "10.0.0.1:7070, 10.0.0.2:7070/"}
    assert resolve_config(flags={}, env=env, file_values={}).server == "http://10.0.0.1:7070,http://10.0.0.2:7070"
    file_values = {"server": "https://a:1,https://b:2"}
    assert resolve_config(flags={}, env={}, file_values=file_values).server == "https://a:1,https://b:2"
    with pytest.raises(ConfigError, match="no API server"):
        resolve_config(flags={"server": ","}, env={}, file_values={})
