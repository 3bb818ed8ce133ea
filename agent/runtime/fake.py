"""An in-memory `Runtime` for unit tests and simulations.

It behaves like the engine where the agent can tell the difference: names are unique, host port 0
gets a fresh port, stopped containers keep their exit code, missing images fail to create, pulls
fail for images not in `pullable`. Tests drive what containers do with `crash()` and `exit()`, and
count calls through `calls`. ``start_delay`` makes each start take that long (the container is
``created`` meanwhile), as a real engine does; the hollow machines of bench/_hollow.py use it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace

from agent.runtime.base import (
    LABEL_CLUSTER,
    LABEL_MACHINE,
    Container,
    ContainerEvent,
    ContainerNotFound,
    ContainerSpec,
    ExecOutput,
    ExecResult,
    ImageNotFound,
    ImagePullError,
    PortMapping,
    RuntimeFailure,
)


class FakeRuntime:
    """Containers as dicts; `clock` is injectable so simulations need not sleep."""

    def __init__(
        self,
        *,
        images: Iterable[str] = (),
        pullable: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        start_delay: float = 0.0,
    ) -> None:
        self.images: set[str] = set(images)
        self.pullable: set[str] = set(pullable)
        self.clock = clock
        self.start_delay = start_delay
        self.containers: dict[str, Container] = {}
        self.specs: dict[str, ContainerSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.exec_results: dict[tuple[str, ...], ExecResult] = {}
        self.log_lines: dict[str, list[bytes]] = {}
        self._ids = itertools.count(1)
        self._ports = itertools.count(32768)
        self._subscribers: list[asyncio.Queue[ContainerEvent]] = []

    # --- test controls -------------------------------------------------------------------
    def exit(self, container_id: str, code: int = 0, *, at: float | None = None) -> None:
        """Make a running container exit with `code` (as if its process ended)."""
        c = self.containers[container_id]
        self.containers[container_id] = replace(
            c, state="exited", exit_code=code, finished_at=self.clock() if at is None else at, host_ports=()
        )
        self._emit("die", container_id)

    def crash(self, container_id: str) -> None:
        self.exit(container_id, 1)

    def delete_behind_our_back(self, container_id: str) -> None:
        self.containers.pop(container_id, None)
        self._emit("destroy", container_id)

    # --- Runtime -------------------------------------------------------------------------
    def _emit(self, action: str, container_id: str) -> None:
        c = self.containers.get(container_id)
        labels = dict(c.labels) if c else {}
        for queue in self._subscribers:
            queue.put_nowait(ContainerEvent(action, container_id, labels, self.clock()))

    def _get(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise ContainerNotFound(f"no such container: {container_id}") from None

    async def list_containers(self, *, cluster: str, machine: str | None = None) -> list[Container]:
        return [
            c
            for c in self.containers.values()
            if c.labels.get(LABEL_CLUSTER) == cluster
            and (machine is None or c.labels.get(LABEL_MACHINE) == machine)
        ]

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        self.calls.append(("create", spec.name))
        if spec.image not in self.images:
            raise ImageNotFound(f"no such image: {spec.image}")
        if any(c.name == spec.name for c in self.containers.values()):
            raise RuntimeFailure(f"conflict: the container name {spec.name!r} is already in use")
        container_id = f"fake{next(self._ids):08d}"
        self.containers[container_id] = Container(
            id=container_id,
            name=spec.name,
            labels=dict(spec.labels),
            state="created",
            image=spec.image,
        )
        self.specs[container_id] = spec
        self._emit("create", container_id)
        return await self._start(container_id)

    async def _start(self, container_id: str) -> Container:
        if self.start_delay > 0:
            await asyncio.sleep(self.start_delay)
        c = self._get(container_id)
        spec = self.specs[container_id]
        ports = tuple(
            PortMapping(p.container_port, p.host_port or next(self._ports), p.protocol) for p in spec.ports
        )
        started = replace(
            c, state="running", exit_code=None, started_at=self.clock(), finished_at=None, host_ports=ports
        )
        self.containers[container_id] = started
        self._emit("start", container_id)
        return started

    async def start(self, container_id: str) -> Container:
        self.calls.append(("start", container_id))
        return await self._start(container_id)

    async def stop(self, container_id: str, *, grace: float = 10.0) -> None:
        self.calls.append(("stop", container_id))
        c = self.containers.get(container_id)
        if c is not None and c.state == "running":
            self.exit(container_id, 143)

    async def remove(self, container_id: str) -> None:
        self.calls.append(("remove", container_id))
        if self.containers.pop(container_id, None) is not None:
            self.specs.pop(container_id, None)
            self._emit("destroy", container_id)

    async def inspect(self, container_id: str) -> Container:
        return self._get(container_id)

    async def exec(self, container_id: str, command: list[str]) -> ExecResult:
        self.calls.append(("exec", container_id))
        c = self._get(container_id)
        if c.state != "running":
            raise RuntimeFailure(f"container {container_id} is not running")
        return self.exec_results.get(tuple(command), ExecResult(0, b""))

    async def exec_stream(self, container_id: str, command: list[str]) -> AsyncIterator[ExecOutput]:
        """``exec_results``' output as stdout, then its exit code."""
        result = await self.exec(container_id, command)
        if result.output:
            yield ExecOutput("stdout", result.output)
        yield ExecOutput("exit", exit_code=result.exit_code)

    async def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        self._get(container_id)
        lines = self.log_lines.get(container_id, [])
        for line in lines[-tail:] if tail else lines:
            yield line

    async def image_present(self, image: str) -> bool:
        return image in self.images

    async def pull(self, image: str) -> None:
        self.calls.append(("pull", image))
        if image not in self.pullable:
            raise ImagePullError(f"pulling image {image!r} failed: no registry knows it")
        self.images.add(image)

    async def events(self, *, cluster: str) -> AsyncIterator[ContainerEvent]:
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while True:
                event = await queue.get()
                if event.labels.get(LABEL_CLUSTER) == cluster:
                    yield event
        finally:
            self._subscribers.remove(queue)

    async def close(self) -> None:
        return None
