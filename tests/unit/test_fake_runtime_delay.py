"""FakeRuntime's start delay (the hollow machines of bench/_hollow.py): a container is ``created``
while it starts and ``running`` once the delay has passed."""

from __future__ import annotations

import asyncio
import time

from agent.runtime.base import ContainerSpec
from agent.runtime.fake import FakeRuntime


async def test_start_takes_the_delay_and_the_container_is_created_meanwhile() -> None:
    runtime = FakeRuntime(images={"img"}, start_delay=0.2)
    started = time.monotonic()
    task = asyncio.ensure_future(runtime.create_and_start(ContainerSpec(name="c1", image="img")))
    await asyncio.sleep(0.05)
    assert [c.state for c in runtime.containers.values()] == ["created"]
    container = await task
    assert container.state == "running"
    assert time.monotonic() - started >= 0.2
