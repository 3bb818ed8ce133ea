"""The Docker runtime: the agent's containers on a Docker engine, through aiodocker.

Thin on purpose: it translates `ContainerSpec` into the engine's create call and the engine's
inspect output back into `Container`, and turns aiodocker's errors into ours. It knows nothing of
instances or units beyond the labels it is handed. `SSHDockerRuntime` reuses it unchanged on a
forwarded unix socket.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from agent.runtime.base import (
    LABEL_CLUSTER,
    LABEL_MACHINE,
    Container,
    ContainerEvent,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    ExecOutput,
    ExecResult,
    ImageNotFound,
    ImagePullError,
    PortMapping,
    RuntimeFailure,
    RuntimeUnavailable,
)

DEFAULT_URL = "unix:///var/run/docker.sock"
_NEVER = "0001-01-01T00:00:00Z"


def parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 nanosecond timestamps as epoch seconds; its zero time as None."""
    if not value or value.startswith("0001-01-01"):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _state(raw: str) -> ContainerState:
    if raw in ("running", "paused", "restarting"):
        return "running"
    if raw == "created":
        return "created"
    return "exited"


def container_from_inspect(data: dict[str, Any]) -> Container:
    """Build a `Container` from `GET /containers/ID/json`."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    network = data.get("NetworkSettings") or {}
    host_ports: list[PortMapping] = []
    for key, bindings in sorted((network.get("Ports") or {}).items()):
        port, _, proto = key.partition("/")
        for binding in bindings or []:
            host_port = binding.get("HostPort")
            if host_port and ":" not in (binding.get("HostIp") or ""):  # skip IPv6 duplicates
                host_ports.append(PortMapping(int(port), int(host_port), proto or "tcp"))
    status = _state(str(state.get("Status", "")))
    return Container(
        id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        state=status,
        image=str(config.get("Image", "")),
        exit_code=int(state["ExitCode"]) if status == "exited" and "ExitCode" in state else None,
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")) if status == "exited" else None,
        host_ports=tuple(host_ports),
        ip_address=str(network.get("IPAddress") or ""),
    )


def create_config(spec: ContainerSpec) -> dict[str, Any]:
    """The engine's create body for a spec (pure, so it can be tested without an engine)."""
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in spec.ports:
        key = f"{port.container_port}/{port.protocol}"
        exposed[key] = {}
        bindings.setdefault(key, []).append(
            {"HostIp": spec.host_ip, "HostPort": str(port.host_port) if port.host_port else ""}
        )
    host_config: dict[str, Any] = {
        "Init": spec.init,
        "PortBindings": bindings,
        "Binds": [f"{b.host_path}:{b.container_path}{':ro' if b.read_only else ''}" for b in spec.binds],
        "RestartPolicy": {"Name": "no"},  # the agent restarts, with its own backoff
    }
    if spec.network:
        host_config["NetworkMode"] = spec.network
    if spec.dns:
        host_config["Dns"] = list(spec.dns)
    if spec.dns_search:
        host_config["DnsSearch"] = list(spec.dns_search)
    host_config.update(security_host_config(spec))
    if spec.cpu:
        host_config["NanoCpus"] = int(spec.cpu * 1e9)
    if spec.memory_mb:
        host_config["Memory"] = int(spec.memory_mb) * 1024 * 1024
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
        "Labels": dict(spec.labels),
        "ExposedPorts": exposed,
        "HostConfig": host_config,
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    if spec.user:
        config["User"] = spec.user
    return config


def security_host_config(spec: ContainerSpec) -> dict[str, Any]:
    """HostConfig's hardening: no-new-privileges, dropped and added capabilities, the pids limit."""
    host_config: dict[str, Any] = {}
    if spec.no_new_privileges:
        host_config["SecurityOpt"] = ["no-new-privileges"]
    added = set(spec.cap_add)
    dropped = [cap for cap in spec.cap_drop if cap not in added]
    if dropped:
        host_config["CapDrop"] = dropped
    if spec.cap_add:
        host_config["CapAdd"] = list(spec.cap_add)
    if spec.pids_limit:
        host_config["PidsLimit"] = int(spec.pids_limit)
    return host_config


def _wrap(err: DockerError, what: str) -> RuntimeFailure:
    if err.status == 900:
        return RuntimeUnavailable(f"{what}: {err.message}")
    if err.status == 404:
        if "image" in str(err.message).lower() and "container" not in str(err.message).lower():
            return ImageNotFound(f"{what}: {err.message}")
        return ContainerNotFound(f"{what}: {err.message}")
    return RuntimeFailure(f"{what}: Docker said {err.status}: {err.message}")


class DockerRuntime:
    """A `Runtime` on a Docker engine reached at `url` (unix:// or tcp://)."""

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()

    async def _json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        try:
            return await self.docker._query_json(path, method, **kwargs)
        except DockerError as err:
            raise _wrap(err, f"{method} {path}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise RuntimeUnavailable(f"{method} {path}: {err}") from err

    async def _post(self, path: str, params: dict[str, Any] | None = None) -> int:
        """A POST whose body does not matter; returns the status (304 = already so)."""
        try:
            async with self.docker._query(path, "POST", params=params, timeout=None) as resp:
                await resp.read()
                return resp.status
        except DockerError as err:
            raise _wrap(err, f"POST {path}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise RuntimeUnavailable(f"POST {path}: {err}") from err

    async def list_containers(self, *, cluster: str, machine: str | None = None) -> list[Container]:
        labels = [f"{LABEL_CLUSTER}={cluster}"]
        if machine is not None:
            labels.append(f"{LABEL_MACHINE}={machine}")
        summaries = await self._json(
            "containers/json", params={"all": "1", "filters": json.dumps({"label": labels})}
        )
        # inspected at once, not one after the other: a sync (and so a create) waited for N round trips
        inspected = await asyncio.gather(*(self._inspect_or_none(summary["Id"]) for summary in summaries))
        return [c for c in inspected if c is not None]

    async def _inspect_or_none(self, container_id: str) -> Container | None:
        try:
            return await self.inspect(container_id)
        except ContainerNotFound:
            return None  # removed between list and inspect

    async def inspect(self, container_id: str) -> Container:
        return container_from_inspect(await self._json(f"containers/{container_id}/json"))

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        created = await self._json(
            "containers/create", "POST", params={"name": spec.name}, data=create_config(spec)
        )
        container_id = str(created["Id"])
        try:
            return await self.start(container_id)
        except RuntimeFailure:
            # A container that cannot start (port taken, bad command) is not left behind half made.
            await self.remove(container_id)
            raise

    async def start(self, container_id: str) -> Container:
        await self._post(f"containers/{container_id}/start")
        return await self.inspect(container_id)

    async def stop(self, container_id: str, *, grace: float = 10.0) -> None:
        try:
            await self._post(f"containers/{container_id}/stop", {"t": str(max(0, int(grace)))})
        except ContainerNotFound:
            pass

    async def remove(self, container_id: str) -> None:
        try:
            await self._json(f"containers/{container_id}", "DELETE", params={"force": "1", "v": "1"})
        except ContainerNotFound:
            pass
        except RuntimeFailure as err:
            if "already in progress" not in str(err):
                raise

    async def exec(self, container_id: str, command: list[str]) -> ExecResult:
        """``docker exec`` to its end (exec probes): stdout and stderr together, and the exit code."""
        chunks: list[bytes] = []
        exit_code = -1
        async for piece in self.exec_stream(container_id, command):
            if piece.stream == "exit":
                exit_code = -1 if piece.exit_code is None else piece.exit_code
            else:
                chunks.append(piece.data)
        return ExecResult(exit_code=exit_code, output=b"".join(chunks))

    async def exec_stream(self, container_id: str, command: list[str]) -> AsyncIterator[ExecOutput]:
        """``docker exec`` without stdin or TTY; the engine's multiplexed stream 1 is stdout, 2 stderr."""
        try:
            container = self.docker.containers.container(container_id)
            execution = await container.exec(list(command), stdout=True, stderr=True, stdin=False, tty=False)
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    yield ExecOutput("stderr" if message.stream == 2 else "stdout", message.data)
            info = await execution.inspect()
        except DockerError as err:
            raise _wrap(err, f"exec in {container_id[:12]}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise RuntimeUnavailable(f"exec in {container_id[:12]}: {err}") from err
        exit_code = info.get("ExitCode")
        yield ExecOutput("exit", exit_code=-1 if exit_code is None else int(exit_code))

    async def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1" if follow else "0",
            "tail": "all" if tail is None else str(tail),
        }
        path = f"containers/{container_id}/logs"
        try:
            async with self.docker._query(path, params=params, timeout=None) as resp:
                tty = "multiplexed" not in resp.headers.get("Content-Type", "multiplexed")
                if tty:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                    return
                # Without a TTY the engine frames each chunk: 1 byte stream, 3 zero, 4 bytes length.
                while True:
                    try:
                        header = await resp.content.readexactly(8)
                    except asyncio.IncompleteReadError:
                        return
                    (size,) = struct.unpack(">I", header[4:8])
                    yield await resp.content.readexactly(size)
        except DockerError as err:
            raise _wrap(err, f"logs of {container_id[:12]}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise RuntimeUnavailable(f"logs of {container_id[:12]}: {err}") from err

    async def image_present(self, image: str) -> bool:
        try:
            await self._json(f"images/{image}/json")
        except (ContainerNotFound, ImageNotFound):
            return False
        return True

    async def _progress(self, what: str, path: str, **query: Any) -> None:
        """POST an image job (pull, load) and read its JSON progress lines; an ``error`` line fails it."""
        try:
            async with self.docker._query(path, "POST", timeout=None, **query) as resp:
                async for line in resp.content:
                    try:
                        message = json.loads(line) if line.strip() else None
                    except ValueError:
                        continue
                    if isinstance(message, dict) and message.get("error"):
                        raise ImagePullError(f"{what} failed: {message['error']}")
        except DockerError as err:
            raise ImagePullError(f"{what} failed: {err.message}") from err
        except (aiohttp.ClientError, OSError) as err:
            raise ImagePullError(f"{what} failed: {err}") from err

    async def pull(self, image: str) -> None:
        name, tag = image, "latest"
        last = image.rsplit("/", 1)[-1]
        if ":" in last and "@" not in image:
            name, _, tag = image.rpartition(":")
        await self._progress(f"pulling image {image!r}", "images/create", params={"fromImage": name, "tag": tag})
        if not await self.image_present(image):
            raise ImagePullError(f"pulling image {image!r} failed: the engine does not have it afterwards")

    async def load_image(self, path: str) -> None:
        """``docker load`` of a ``docker save`` tarball (agent/distimages.py: images from the cluster)."""
        try:
            tarball = await asyncio.to_thread(open, path, "rb")  # aiohttp reads file bodies in a thread
        except OSError as err:
            raise ImagePullError(f"loading {path} failed: {err}") from err
        try:
            await self._progress(f"loading {path}", "images/load", params={"quiet": "1"}, data=tarball,
                                 headers={"Content-Type": "application/x-tar"})
        finally:
            tarball.close()

    async def events(self, *, cluster: str) -> AsyncIterator[ContainerEvent]:
        filters = {"type": ["container"], "label": [f"{LABEL_CLUSTER}={cluster}"]}
        try:
            async with self.docker._query(
                "events", params={"filters": json.dumps(filters)}, timeout=None
            ) as resp:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    actor = event.get("Actor") or {}
                    attributes = actor.get("Attributes") or {}
                    yield ContainerEvent(
                        action=str(event.get("Action") or event.get("status") or ""),
                        container_id=str(actor.get("ID") or event.get("id") or ""),
                        labels={k: str(v) for k, v in attributes.items() if k.startswith("cp.")},
                        time=float(event.get("timeNano", 0)) / 1e9 or float(event.get("time", 0)),
                    )
        except DockerError as err:
            raise _wrap(err, "events") from err
        except (aiohttp.ClientError, OSError) as err:
            raise RuntimeUnavailable(f"events: {err}") from err
