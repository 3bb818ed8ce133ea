"""Table tests: how a write the leader cannot make is put on its unit, and how bulk creates are cut."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.controllers.cluster import Write, WriteOp
from controlplane.controllers.failures import WriteFailure, failure_of, unit_of, with_failure
from controlplane.errors import RequestEntityTooLarge
from controlplane.group_commit import chunked, write_in_turn

FAIL = WriteFailure("web", "FailedCreate", "too large", "create_instance web-0 failed: too large")
CONDITION = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "too large",
             "lastTransitionTime": "T"}
OTHER = {"type": "Available", "status": "True"}


@pytest.mark.parametrize(("status", "failure", "expected"), [
    ({}, None, None),                                          # nothing to clear
    ({"conditions": [OTHER]}, None, None),
    ({}, FAIL, {"conditions": [CONDITION]}),                   # set
    ({"conditions": [OTHER]}, FAIL, {"conditions": [OTHER, CONDITION]}),
    ({"conditions": [CONDITION]}, FAIL, None),                 # same failure: no write
    ({"conditions": [{**CONDITION, "message": "old"}]}, FAIL, {"conditions": [CONDITION]}),
    ({"replicas": 1, "conditions": [OTHER, CONDITION]}, None, {"replicas": 1, "conditions": [OTHER]}),  # cleared
])
def test_with_failure(status: dict[str, Any], failure: WriteFailure | None, expected: dict[str, Any] | None) -> None:
    assert with_failure(status, failure, now="T") == expected


def test_unit_of_each_write() -> None:
    instance = {"spec": {"unit": "web"}}
    assert unit_of(Write(WriteOp.CREATE_INSTANCE, "web-0", "r", instance=instance), {}) == "web"
    assert unit_of(Write(WriteOp.UNIT_STATUS, "web", "r", status={}), {}) == "web"
    assert unit_of(Write(WriteOp.BIND, "web-1", "r", machine="m1"), {"web-1": instance}) == "web"
    assert unit_of(Write(WriteOp.BIND, "gone-1", "r", machine="m1"), {}) == ""


def test_failure_of_names_the_write_in_its_detail_and_keeps_the_condition_short() -> None:
    write = Write(WriteOp.CREATE_INSTANCE, "web-0", "scale up", instance={"spec": {"unit": "web"}})
    failure = failure_of(write, RequestEntityTooLarge("request is too large"), {})
    assert failure == WriteFailure("web", "FailedCreate", "request is too large",
                                   "create_instance web-0 (scale up) failed: request is too large")


@pytest.mark.parametrize(("sizes", "count", "limit", "expected"), [
    ([1, 1, 1], 2, 100, [[1, 1], [1]]),           # by count
    ([60, 50, 40], 10, 100, [[60], [50, 40]]),     # by bytes
    ([150, 10], 10, 100, [[150], [10]]),           # one too large alone: a chunk of its own
    ([], 10, 100, []),
])
def test_chunks(sizes: list[int], count: int, limit: int, expected: list[list[int]]) -> None:
    items = [(f"n{i}", f"k{i}", b"x" * size) for i, size in enumerate(sizes)]
    assert [[len(v) for _, _, v in chunk] for chunk in chunked(items, count, limit)] == expected


def test_chunks_are_cut_lazily() -> None:
    """A chunk is given as soon as it is full: the bulk path writes it while the rest is encoded."""
    pulled: list[int] = []

    def items() -> Iterator[tuple[str, str, bytes]]:
        for i in range(5):
            pulled.append(i)
            yield f"n{i}", f"k{i}", b"x"

    chunks = chunked(items(), 2, 100)
    assert next(chunks) == [("n0", "k0", b"x"), ("n1", "k1", b"x")] and pulled == [0, 1, 2]
    assert [len(c) for c in chunks] == [2, 1]


async def test_write_in_turn_bounds_the_chunks_in_flight_and_keeps_their_order() -> None:
    started: list[int] = []
    running = 0
    most = 0

    async def write(chunk: list[tuple[str, str, bytes]]) -> None:
        nonlocal running, most
        started.append(int(chunk[0][0]))
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (len(started) % 3))
        running -= 1

    await write_in_turn(write, ([(str(i), "k", b"")] for i in range(20)), in_flight=3)
    assert started == list(range(20)) and most == 3


async def test_write_in_turn_starts_nothing_after_an_error_and_raises_it() -> None:
    started: list[int] = []

    async def write(chunk: list[tuple[str, str, bytes]]) -> None:
        started.append(int(chunk[0][0]))
        if chunk[0][0] == "1":
            raise RuntimeError("etcd said no")
        await asyncio.sleep(0.01)

    with pytest.raises(RuntimeError, match="etcd said no"):
        await write_in_turn(write, ([(str(i), "k", b"")] for i in range(50)), in_flight=2)
    assert started[:2] == [0, 1] and len(started) < 5
