"""Docker on a remote host over SSH: `--docker ssh://user@host[:port]`.

asyncssh forwards a local unix socket, in a fresh 0700 temp folder, to the remote
`/var/run/docker.sock`; the unchanged `DockerRuntime` drives that socket. We do not use aiodocker's
own ssh:// connector: it sends the whole local environment to the server. Host keys are always
checked against a known_hosts file: a missing file or a wrong key refuses the connection with
`HostKeyRefused`, never silently. When the SSH connection drops, the next call reconnects (the
forwarded socket keeps its path, so the Docker client need not change).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh

from agent.runtime.base import (
    Container,
    ContainerEvent,
    ContainerSpec,
    ExecOutput,
    ExecResult,
    HostKeyRefused,
    RuntimeUnavailable,
)
from agent.runtime.docker import DockerRuntime

log = logging.getLogger(__name__)

REMOTE_SOCKET = "/var/run/docker.sock"


def parse_ssh_url(url: str) -> tuple[str, str, int]:
    """`ssh://user@host[:port]` -> (user, host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise ValueError(f"not an ssh:// Docker URL: {url!r}")
    return parts.username or os.environ.get("USER", "root"), parts.hostname, parts.port or 22


class SSHDockerRuntime:
    """A `Runtime` on a remote Docker engine, through an SSH-forwarded unix socket."""

    def __init__(
        self,
        url: str,
        *,
        known_hosts: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        remote_socket: str = REMOTE_SOCKET,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.user, self.host, self.port = parse_ssh_url(url)
        self.known_hosts = Path(known_hosts) if known_hosts else Path.home() / ".ssh" / "known_hosts"
        self.client_key = Path(client_key) if client_key else None
        self.remote_socket = remote_socket
        self.connect_timeout = connect_timeout
        self._folder = tempfile.mkdtemp(prefix="cp-agent-ssh-")
        os.chmod(self._folder, 0o700)
        self.local_socket = os.path.join(self._folder, "docker.sock")
        self._docker = DockerRuntime(f"unix://{self.local_socket}")
        self._conn: asyncssh.SSHClientConnection | None = None
        self._listener: asyncssh.SSHListener | None = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.connects = 0  # how many times a connection was made (tests watch reconnects)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        """Connect and forward, unless already connected."""
        async with self._lock:
            if self._conn is not None:
                return
            if not self.known_hosts.is_file():
                raise HostKeyRefused(
                    f"ssh {self.host}:{self.port}: known_hosts file {self.known_hosts} is missing; "
                    "refusing to connect without checking the host key"
                )
            options: dict[str, Any] = {
                "port": self.port,
                "username": self.user,
                "known_hosts": str(self.known_hosts),
                "connect_timeout": self.connect_timeout,
            }
            if self.client_key is not None:
                options["client_keys"] = [str(self.client_key)]
            try:
                conn = await asyncssh.connect(self.host, **options)
            except asyncssh.HostKeyNotVerifiable as err:
                raise HostKeyRefused(
                    f"ssh {self.host}:{self.port}: host key not accepted by {self.known_hosts}: {err}"
                ) from err
            except (OSError, asyncssh.Error) as err:
                raise RuntimeUnavailable(f"ssh {self.user}@{self.host}:{self.port}: {err}") from err
            self._clear_socket()
            try:
                listener = await conn.forward_local_path(self.local_socket, self.remote_socket)
            except (OSError, asyncssh.Error) as err:
                conn.close()
                raise RuntimeUnavailable(f"ssh {self.host}: forwarding {self.remote_socket}: {err}") from err
            os.chmod(self.local_socket, 0o600)
            self._conn, self._listener = conn, listener
            self.connects += 1
            self._watcher = asyncio.get_running_loop().create_task(self._watch(conn))
            log.info("ssh %s@%s:%s: forwarding %s", self.user, self.host, self.port, self.remote_socket)

    def _clear_socket(self) -> None:
        """A socket file left by a dropped forward would make the new listener fail to bind."""
        Path(self.local_socket).unlink(missing_ok=True)

    async def _watch(self, conn: asyncssh.SSHClientConnection) -> None:
        await conn.wait_closed()
        if self._conn is conn:
            log.warning("ssh %s:%s: connection lost; reconnecting on next use", self.host, self.port)
            self._conn, self._listener = None, None

    def drop_connection(self) -> None:
        """Close the SSH connection as if the network dropped it (tests; the next call reconnects)."""
        if self._conn is not None:
            self._conn.close()

    async def close(self) -> None:
        await self._docker.close()
        conn, self._conn, self._listener = self._conn, None, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()
        shutil.rmtree(self._folder, ignore_errors=True)

    async def _ready(self) -> DockerRuntime:
        if self._conn is None:
            await self.connect()
            await self._docker.close()  # pooled connections went through the old tunnel
        return self._docker

    async def _retrying(self, call: Any) -> Any:
        """Idempotent calls get one retry through a fresh connection when the tunnel broke."""
        docker = await self._ready()
        try:
            return await call(docker)
        except RuntimeUnavailable:
            await asyncio.sleep(0.05)
            if self._conn is not None:
                raise
            return await call(await self._ready())

    # --- Runtime ---------------------------------------------------------------------------
    async def list_containers(self, *, cluster: str, machine: str | None = None) -> list[Container]:
        result: list[Container] = await self._retrying(
            lambda d: d.list_containers(cluster=cluster, machine=machine)
        )
        return result

    async def inspect(self, container_id: str) -> Container:
        result: Container = await self._retrying(lambda d: d.inspect(container_id))
        return result

    async def image_present(self, image: str) -> bool:
        result: bool = await self._retrying(lambda d: d.image_present(image))
        return result

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        return await (await self._ready()).create_and_start(spec)

    async def start(self, container_id: str) -> Container:
        return await (await self._ready()).start(container_id)

    async def stop(self, container_id: str, *, grace: float = 10.0) -> None:
        await self._retrying(lambda d: d.stop(container_id, grace=grace))

    async def remove(self, container_id: str) -> None:
        await self._retrying(lambda d: d.remove(container_id))

    async def exec(self, container_id: str, command: list[str]) -> ExecResult:
        return await (await self._ready()).exec(container_id, command)

    async def exec_stream(self, container_id: str, command: list[str]) -> AsyncIterator[ExecOutput]:
        async for piece in (await self._ready()).exec_stream(container_id, command):
            yield piece

    async def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        docker = await self._ready()
        async for chunk in docker.logs(container_id, tail=tail, follow=follow):
            yield chunk

    async def pull(self, image: str) -> None:
        await (await self._ready()).pull(image)

    async def load_image(self, path: str) -> None:
        await (await self._ready()).load_image(path)

    async def events(self, *, cluster: str) -> AsyncIterator[ContainerEvent]:
        docker = await self._ready()
        async for event in docker.events(cluster=cluster):
            yield event
