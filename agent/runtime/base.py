"""The container runtime interface the agent drives.

The agent never talks to Docker directly: the reconciler decides, the executor acts through a
`Runtime`. Three implementations share this protocol: `DockerRuntime` (aiodocker on a local socket),
`SSHDockerRuntime` (the same over an asyncssh-forwarded socket) and `FakeRuntime` (in memory, for
unit tests and simulations). Everything the agent needs to know about a container is carried by
its labels (`cp.*`), so a restarted agent rebuilds its view from Docker alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from controlplane.model import DEFAULT_CAP_DROP, DEFAULT_PIDS_LIMIT

# Labels every container the agent creates carries.
LABEL_CLUSTER = "cp.cluster"
LABEL_MACHINE = "cp.machine"
LABEL_INSTANCE = "cp.instance"
LABEL_UNIT = "cp.unit"
LABEL_GENERATION = "cp.generation"
LABEL_EPOCH = "cp.epoch"

ContainerState = Literal["created", "running", "exited"]


class RuntimeFailure(Exception):
    """Base of every error a runtime raises (third-party errors are chained with `from`)."""


class RuntimeUnavailable(RuntimeFailure):
    """The container engine cannot be reached (socket gone, SSH down)."""


class ContainerNotFound(RuntimeFailure):
    """The container does not exist (any more)."""


class ImageNotFound(RuntimeFailure):
    """The image is not present on the engine."""


class ImagePullError(RuntimeFailure):
    """Pulling an image failed; the message says which image and why."""


class HostKeyRefused(RuntimeUnavailable):
    """The SSH server's host key does not match known_hosts."""


@dataclass(frozen=True)
class PortMapping:
    """One published port: `host_port` 0 asks the engine to pick a free one."""

    container_port: int
    host_port: int = 0
    protocol: str = "tcp"

    def to_wire(self) -> dict[str, object]:
        return {"containerPort": self.container_port, "hostPort": self.host_port, "protocol": self.protocol}


@dataclass(frozen=True)
class Bind:
    """A host path mounted into the container."""

    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """What to create. `host_ip` is the machine address the ports are published on.

    The security fields default to the hardened container of README "Container defaults":
    no-new-privileges, NET_RAW dropped, a pids limit. `env` may hold Secret values: it is left out
    of the repr, so a logged spec never shows them."""

    name: str
    image: str
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    host_ip: str = "127.0.0.1"
    binds: tuple[Bind, ...] = ()
    cpu: float | None = None
    memory_mb: int | None = None
    init: bool = True
    network: str = ""  # "" = the engine's default bridge; "host" for proxies on a loopback dev cluster
    dns: tuple[str, ...] = ()  # resolvers ("" = the engine's: the host's); agent/discovery sets its own
    dns_search: tuple[str, ...] = ()
    user: str = ""  # Docker's User: "uid[:gid]" or a name; "" = the image's
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    no_new_privileges: bool = True
    cap_drop: tuple[str, ...] = DEFAULT_CAP_DROP
    cap_add: tuple[str, ...] = ()


@dataclass(frozen=True)
class Container:
    """A container as it actually is on the engine."""

    id: str
    name: str
    labels: dict[str, str]
    state: ContainerState
    image: str = ""
    exit_code: int | None = None
    started_at: float | None = None  # epoch seconds of the last start
    finished_at: float | None = None  # epoch seconds of the last exit
    host_ports: tuple[PortMapping, ...] = ()
    ip_address: str = ""  # on the engine's bridge network, when any

    @property
    def instance(self) -> str | None:
        return self.labels.get(LABEL_INSTANCE)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes


@dataclass(frozen=True)
class ExecOutput:
    """A piece of a streamed exec: ``stream`` is ``stdout`` or ``stderr`` with ``data``, or, last,
    ``exit`` with ``exit_code``."""

    stream: Literal["stdout", "stderr", "exit"]
    data: bytes = b""
    exit_code: int | None = None


@dataclass(frozen=True)
class ContainerEvent:
    """A change the engine reports: action is Docker's (`start`, `die`, `destroy`, ...)."""

    action: str
    container_id: str
    labels: dict[str, str]
    time: float


@runtime_checkable
class Runtime(Protocol):
    """A container engine, as seen by one machine's agent."""

    async def list_containers(self, *, cluster: str, machine: str | None = None) -> list[Container]:
        """Every container (running or not) labelled with this cluster (and machine, when given)."""
        ...

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        """Create the container, start it and return it inspected (actual host ports included).

        Raises ImageNotFound when the image is missing (the executor pulls first)."""
        ...

    async def start(self, container_id: str) -> Container:
        """Start an existing (created or exited) container; returns it inspected."""
        ...

    async def stop(self, container_id: str, *, grace: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL after `grace` seconds). A stopped or missing one is fine."""
        ...

    async def remove(self, container_id: str) -> None:
        """Remove it, killing it first if it runs. A missing one is fine."""
        ...

    async def inspect(self, container_id: str) -> Container:
        """Raises ContainerNotFound."""
        ...

    async def exec(self, container_id: str, command: list[str]) -> ExecResult:
        """Run a command inside; stdout and stderr interleaved in `output`. Bound it with
        `asyncio.timeout` when needed."""
        ...

    def exec_stream(self, container_id: str, command: list[str]) -> AsyncIterator[ExecOutput]:
        """Run a command inside (no stdin, no TTY): its stdout and stderr as they come, kept apart,
        then its exit code (``cpctl exec``)."""
        ...

    def logs(self, container_id: str, *, tail: int | None = None, follow: bool = False) -> AsyncIterator[bytes]:
        """The container's output (stdout and stderr), as chunks; endless while following."""
        ...

    async def image_present(self, image: str) -> bool: ...

    async def pull(self, image: str) -> None:
        """Raises ImagePullError with a message naming the image and the cause."""
        ...

    def events(self, *, cluster: str) -> AsyncIterator[ContainerEvent]:
        """Container events of this cluster's containers, from now on."""
        ...

    async def close(self) -> None: ...
