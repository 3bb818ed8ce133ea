"""SSHDockerRuntime through a real OpenSSH server on 127.0.0.1 to the local Docker engine."""

from __future__ import annotations

import stat
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docker_fixture import SSHServer, build_local_images, remove_cluster_containers, sshd  # noqa: E402

from agent.runtime.base import ContainerSpec, HostKeyRefused, PortMapping  # noqa: E402
from agent.runtime.ssh import SSHDockerRuntime, parse_ssh_url  # noqa: E402

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    build_local_images()
    with sshd(tmp_path_factory.mktemp("sshd")) as s:
        yield s


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    name = f"test-ssh-{uuid.uuid4().hex[:8]}"
    yield name
    remove_cluster_containers(name)


@pytest.fixture
async def runtime(server: SSHServer) -> AsyncIterator[SSHDockerRuntime]:
    rt = SSHDockerRuntime(server.url, known_hosts=server.known_hosts, client_key=server.client_key)
    yield rt
    await rt.close()


def test_parse_ssh_url() -> None:
    assert parse_ssh_url("ssh://core@10.0.0.5") == ("core", "10.0.0.5", 22)
    assert parse_ssh_url("ssh://root@127.0.0.1:2222") == ("root", "127.0.0.1", 2222)
    with pytest.raises(ValueError):
        parse_ssh_url("unix:///var/run/docker.sock")


async def test_list_run_remove_through_ssh(runtime: SSHDockerRuntime, cluster: str) -> None:
    assert await runtime.list_containers(cluster=cluster) == []
    folder = Path(runtime.local_socket).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    c = await runtime.create_and_start(
        ContainerSpec(
            name=f"{cluster}-web-0",
            image="local/web:latest",
            labels={"cp.cluster": cluster, "cp.machine": "remote", "cp.instance": "web-0"},
            ports=(PortMapping(8080, 0),),
            host_ip="127.0.1.51",
        )
    )
    assert c.state == "running" and c.host_ports[0].host_port > 0
    assert [x.id for x in await runtime.list_containers(cluster=cluster, machine="remote")] == [c.id]
    result = await runtime.exec(c.id, ["sh", "-c", "echo $CP_INSTANCE; echo via-ssh"])
    assert result.exit_code == 0 and result.output.endswith(b"via-ssh\n")
    assert await runtime.image_present("local/web:latest")

    # The connection drops: the next call reconnects through a fresh tunnel.
    runtime.drop_connection()
    assert (await runtime.inspect(c.id)).id == c.id
    assert runtime.connects == 2

    await runtime.remove(c.id)
    assert await runtime.list_containers(cluster=cluster) == []


async def test_wrong_host_key_is_refused(server: SSHServer) -> None:
    rt = SSHDockerRuntime(server.url, known_hosts=server.wrong_known_hosts, client_key=server.client_key)
    try:
        with pytest.raises(HostKeyRefused, match="host key not accepted"):
            await rt.list_containers(cluster="any")
    finally:
        await rt.close()


async def test_missing_known_hosts_is_refused(server: SSHServer, tmp_path: Path) -> None:
    rt = SSHDockerRuntime(server.url, known_hosts=tmp_path / "absent", client_key=server.client_key)
    try:
        with pytest.raises(HostKeyRefused, match="missing"):
            await rt.list_containers(cluster="any")
    finally:
        await rt.close()
