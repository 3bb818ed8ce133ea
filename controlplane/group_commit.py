"""Group commit of single creates: creates that arrive while a write is in flight go to etcd together.

Fifty clients each POSTing one unit cost etcd and the server one gRPC transaction per object;
most of a create's store cost is per transaction, not per key. ``CreateGroup`` sends a create
at once when no create of its group is in flight (no timer: alone, it waits for nothing), and
the creates that arrive while one is in flight wait for it to end and then go as one
create-if-absent transaction (``Store.create_many``) of at most ``max_ops`` keys and
``max_bytes`` bytes. Each caller still gets exactly its own answer:

- success: the transaction's revision, which is its object's mod revision (resourceVersion);
- a batch refused because keys exist is sent again without them, and each of those alone, so
  the others succeed and only the caller of such a key gets AlreadyExists (from its own
  single create); a batch etcd finds too large goes one create per caller, each with its own
  size answer;
- any other failure (no endpoint answers, ...) is every caller's answer, as the single create
  of each would have met the same etcd;
- a retry after a failover finds its own values and counts as done, as a single create does
  (``EtcdStore.create_many``).

Two creates of one key never share a transaction (etcd refuses duplicate keys in a txn): the
later one waits for the next round, and then meets AlreadyExists if the first succeeded. A
caller cancelled before its round is simply left out. Creates with a lease do not come here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import AlreadyExists, KeysExist, RequestEntityTooLarge
from controlplane.store.base import Store

Timed = Callable[[str, Awaitable[Any]], Awaitable[Any]]


# etcd refuses requests over 1.5 MiB by default (--max-request-bytes); a bulk transaction stays under
MAX_TXN_BYTES = 1024 * 1024
# creates per bulk transaction: etcd's default --max-txn-ops is 128 compares (and 128 puts)
BULK_CREATE_BATCH = 128
# bulk transactions in flight at once: enough that etcd always has the next queued while the leader's
# loop is busy with the echo (8 was slower end to end than 64 or all at once: bench/README.md)
BULK_IN_FLIGHT = 64


@dataclass
class _Waiting:
    key: str
    value: bytes
    future: asyncio.Future[int] = field(repr=False)


def take_round(waiting: list[_Waiting], *, max_ops: int, max_bytes: int) -> tuple[list[_Waiting], list[_Waiting]]:
    """The creates for the next transaction and those left for later, both in arrival order:
    at most ``max_ops`` and ``max_bytes`` (the first always goes, for etcd to judge its size),
    one per key; cancelled callers are dropped."""
    chosen: list[_Waiting] = []
    later: list[_Waiting] = []
    keys: set[str] = set()
    used = 0
    for item in waiting:
        if item.future.done():
            continue
        fits = not chosen or (len(chosen) < max_ops and used + len(item.value) <= max_bytes)
        if fits and item.key not in keys:
            chosen.append(item)
            keys.add(item.key)
            used += len(item.value)
        else:
            later.append(item)
    return chosen, later


class CreateGroup:
    """Single creates of one resource, grouped while a write is in flight (see the module docstring)."""

    def __init__(self, store: Store, timed: Timed, *, max_ops: int, max_bytes: int) -> None:
        self.store = store
        self.timed = timed
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._waiting: list[_Waiting] = []
        self._busy = False
        self._rounds: set[asyncio.Task[None]] = set()  # referenced until done

    async def create(self, key: str, value: bytes) -> int:
        """Create ``key`` if absent; returns its mod revision (AlreadyExists, ... as ``Store.create``)."""
        if not self._busy:  # nothing in flight: go now, alone
            self._busy = True
            try:
                return int(await self.timed("create", self.store.create(key, value)))
            finally:
                self._next_round()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(key, value, future))
        return await future

    def _next_round(self) -> None:
        """The write in flight ended: start the next round if creates wait, else go idle."""
        if not any(not item.future.done() for item in self._waiting):
            self._waiting.clear()
            self._busy = False
            return
        task = asyncio.get_running_loop().create_task(self._round())
        self._rounds.add(task)
        task.add_done_callback(self._rounds.discard)

    async def _round(self) -> None:
        batch, self._waiting = take_round(self._waiting, max_ops=self.max_ops, max_bytes=self.max_bytes)
        try:
            await self._send(batch)
        except BaseException:  # cancelled (shutdown): nobody may wait forever
            for item in batch:
                item.future.cancel()
            raise
        finally:
            self._next_round()

    async def _send(self, batch: list[_Waiting]) -> None:
        await (self._alone(batch[0]) if len(batch) == 1 else self._together(batch))

    async def _together(self, batch: list[_Waiting]) -> None:
        try:
            revision = int(await self.timed("create_group",
                                            self.store.create_many([(item.key, item.value) for item in batch])))
        except KeysExist as err:
            # those found existing go alone, for their own answer; the others together again
            taken = [item for item in batch if item.key in err.keys]
            rest = [item for item in batch if item.key not in err.keys]
            if not taken or not rest:
                await asyncio.gather(*(self._alone(item) for item in batch))
            else:
                await asyncio.gather(*(self._alone(item) for item in taken), self._send(rest))
            return
        except (AlreadyExists, RequestEntityTooLarge):  # etcd found the whole too large: each alone
            await asyncio.gather(*(self._alone(item) for item in batch))
            return
        except Exception as err:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        for item in batch:
            if not item.future.done():
                item.future.set_result(revision)

    async def _alone(self, item: _Waiting) -> None:
        try:
            revision = int(await self.timed("create", self.store.create(item.key, item.value)))
        except Exception as err:
            if not item.future.done():
                item.future.set_exception(err)
            return
        if not item.future.done():
            item.future.set_result(revision)


Chunk = list[tuple[str, str, bytes]]  # (name, key, stored value) of each create in one transaction


def chunked(items: Iterable[tuple[str, str, bytes]], count: int, size: int) -> Iterator[Chunk]:
    """The bulk path's batches (``Registry.create_many``): ``items`` in order, cut so no chunk holds
    more than ``count`` items or ``size`` bytes (an item larger than ``size`` alone is a chunk of its
    own, for etcd to judge). Unlike ``take_round`` it keeps every item, duplicates included. Lazy:
    a chunk is given as soon as it is full, so ``items`` may be encoded while earlier chunks are
    being written."""
    current: Chunk = []
    used = 0
    for item in items:
        if current and (len(current) >= count or used + len(item[2]) > size):
            yield current
            current, used = [], 0
        current.append(item)
        used += len(item[2])
    if current:
        yield current


async def write_in_turn(write: Callable[[Chunk], Awaitable[None]], chunks: Iterable[Chunk], *, in_flight: int) -> None:
    """``write`` each chunk as it comes (``chunked`` encodes lazily), at most ``in_flight`` at once,
    each started before the next chunk is built, so etcd commits while the rest is encoded. The
    first error is raised (as gather raises it), and no chunk starts after it."""
    slots = asyncio.Semaphore(in_flight)
    tasks: list[asyncio.Task[None]] = []

    async def bounded(chunk: Chunk) -> None:
        try:
            await write(chunk)
        finally:
            slots.release()

    try:
        for chunk in chunks:
            await slots.acquire()
            if any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks):
                slots.release()
                break
            tasks.append(asyncio.create_task(bounded(chunk)))
            await asyncio.sleep(0)  # the task sends its transaction now, before the next chunk is built
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    await asyncio.gather(*tasks)
