"""Hollow machines: many real agents in one process, over the fake runtime (bench_scale.py runs it).

Each hollow machine is the real ``agent.agent.Agent`` -- its client, heartbeat, fencing, the list
and watch of its own instances, the sync loop and status reports -- over a ``FakeRuntime`` whose
containers start after ``--start-delay`` seconds and pass exec probes (Kubemark's hollow nodes,
in Python). Only the proxy plug-in is left out (it would drive nginx). Machine ``h<i>`` uses the
token ``node-h<i>-token`` and reports the address 10.x.y.z of its index.

    python bench/_hollow.py --server URL --first 1 --count 500 [--start-delay 0.5] [--ramp 5]

It talks JSON lines: on stdout ``{"event": "started", ...}`` once every agent runs; on stdin
``kill NAME`` stops that machine at once (its agent task cancelled, as by SIGKILL), ``report``
prints the heartbeat latencies and counts seen so far (and starts afresh), ``quit`` ends it.

One change to the real agent: its fencing check runs every ``--fence-check`` seconds (0.5 s)
instead of 0.1 s, so 1,000 agents do not wake 10,000 times a second for it (a fence can come
up to 0.4 s later; the check is the same code). And the process tunes its garbage collector as
cp-apiserver does (api/server.py, ``tune_gc``): with the defaults, 1,000 agents in one process
stopped its event loop for 100s of ms every few seconds, which showed as heartbeat latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agent.agent as agent_module  # noqa: E402
from agent.agent import Agent, AgentConfig  # noqa: E402
from agent.runtime.fake import FakeRuntime  # noqa: E402
from controlplane.client import Client  # noqa: E402

IMAGE = "local/hollow:1"


def machine_name(index: int) -> str:
    return f"h{index}"


def machine_address(index: int) -> str:
    return f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"


class Tally:
    """What the hollow machines of this process saw: heartbeat latencies, failures, last acks."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures = 0
        self.fences = 0  # times a machine fenced itself (none is expected while the API serves)
        self.last_ack: dict[str, float] = {}  # machine -> time.time() of its last acknowledged beat
        self.lags: list[float] = []  # how late this process's event loop woke a 50 ms sleep

    def take(self) -> dict[str, Any]:
        latencies, self.latencies = self.latencies, []
        failures, self.failures = self.failures, 0
        fences, self.fences = self.fences, 0
        lags, self.lags = self.lags, []
        return {"latencies": latencies, "failures": failures, "fences": fences, "loopLags": lags}

    async def watch_loop_lag(self) -> None:
        """A heartbeat's latency includes this process's own delays: measure them."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            self.lags.append(time.perf_counter() - started - 0.05)


class TimedClient(Client):
    """The agent's client, timing each heartbeat (from the request to the parsed reply)."""

    def __init__(self, server: str, *, token: str, tally: Tally) -> None:
        super().__init__(server, token=token, timeout=5.0)
        self.tally = tally

    async def heartbeat(self, machine: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            reply = await super().heartbeat(machine, body, timeout=timeout)
        except Exception:
            self.tally.failures += 1
            raise
        self.tally.latencies.append(time.perf_counter() - started)
        self.tally.last_ack[machine] = time.time()
        return reply


class HollowAgent(Agent):
    """The real agent, counting the times it fences itself."""

    tally: Tally

    def fence_if_silent(self) -> None:
        was = self.fenced
        super().fence_if_silent()
        if self.fenced and not was:
            self.tally.fences += 1


def hollow_agent(server: str, index: int, tally: Tally, *, start_delay: float) -> Agent:
    name = machine_name(index)
    client = TimedClient(server, token=f"node-{name}-token", tally=tally)
    runtime = FakeRuntime(images={IMAGE}, start_delay=start_delay)
    config = AgentConfig(machine=name, address=machine_address(index), cpu=64, memory_mb=262144)
    agent = HollowAgent(client, runtime, config)
    agent.tally = tally
    return agent


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def commands(agents: dict[str, Agent], tasks: dict[str, asyncio.Task[None]], tally: Tally) -> None:
    """Obey stdin until ``quit`` or EOF."""
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            return
        verb, _, arg = line.partition(" ")
        if verb == "kill" and arg in tasks:
            tasks[arg].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await tasks[arg]
            await agents[arg].client.close()
            emit({"event": "killed", "machine": arg, "lastAck": tally.last_ack.get(arg, 0.0)})
        elif verb == "report":
            fenced = sorted(name for name, a in agents.items() if a.fenced and not tasks[name].done())
            emit({"event": "report", **tally.take(), "fenced": fenced,
                  "crashed": sorted(n for n, t in tasks.items() if t.done() and not t.cancelled())})


async def run(args: argparse.Namespace) -> None:
    agent_module.FENCE_CHECK_SECONDS = args.fence_check
    tally = Tally()
    agents: dict[str, Agent] = {}
    tasks: dict[str, asyncio.Task[None]] = {}
    pause = args.ramp / max(args.count, 1)
    lag = asyncio.create_task(tally.watch_loop_lag())
    for index in range(args.first, args.first + args.count):
        agent = hollow_agent(args.server, index, tally, start_delay=args.start_delay)
        agents[agent.config.machine] = agent
        tasks[agent.config.machine] = asyncio.create_task(agent.run(), name=agent.config.machine)
        await asyncio.sleep(pause)
    gc.collect()
    gc.freeze()  # the agents' long-lived state out of the collector's way, as cp-apiserver does
    gc.set_threshold(10_000, 20, 50)
    emit({"event": "started", "machines": len(agents)})
    try:
        await commands(agents, tasks, tally)
    finally:
        lag.cancel()
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await asyncio.gather(*(a.client.close() for a in agents.values()), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--start-delay", type=float, default=0.5)
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the agents start")
    parser.add_argument("--fence-check", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
