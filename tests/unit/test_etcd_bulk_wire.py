"""The bulk path's wire pieces without an etcd: the create-all transaction built in place is the
message built the plain way, and a watch answer reaches a ``Batches`` callback in one call while
any other callback still gets aetcd's one ``Event`` per call."""

from __future__ import annotations

from typing import Any

from aetcd import rpc, rtypes
from aetcd.watcher import WatcherCallback

from controlplane.store.etcd_client import Batches, _Watcher, create_all_request


def test_create_all_request_is_the_plain_message() -> None:
    items = [(b"/cp/instances/web-%d" % i, b'{"n":%d}' % i) for i in range(130)]
    plain = rpc.TxnRequest(
        compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=k, create_revision=0)
                 for k, _ in items],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in items],
    )
    built = create_all_request(items)
    assert built == plain and built.SerializeToString() == plain.SerializeToString()
    assert all(c.WhichOneof("target_union") == "create_revision" for c in built.compare)
    assert create_all_request([]) == rpc.TxnRequest()


def _answer(watch_id: int, count: int) -> Any:
    events = [rpc.Event(type=rpc.Event.PUT, kv=rpc.KeyValue(key=b"k%d" % i, value=b"v", mod_revision=10 + i))
              for i in range(count)]
    return rpc.WatchResponse(watch_id=watch_id, events=events)


async def test_a_batches_callback_gets_each_answer_in_one_call() -> None:
    watcher = _Watcher(None, timeout=1)
    got: list[Any] = []
    singles: list[Any] = []

    async def batch(events: Any) -> None:
        got.append(events)

    async def single(event: Any) -> None:
        singles.append(event)

    watcher._callbacks = {1: WatcherCallback(Batches(batch)), 2: WatcherCallback(single)}
    await watcher._handle_response(_answer(1, 3))
    await watcher._handle_response(_answer(2, 2))
    await watcher._handle_response(_answer(9, 2))  # a cancelled watch's leftovers: nobody
    assert [[e.kv.key for e in events] for events in got] == [[b"k0", b"k1", b"k2"]]
    assert [e.kv.mod_revision for e in got[0]] == [10, 11, 12]
    assert [type(e) for e in singles] == [rtypes.Event, rtypes.Event] and singles[1].kv.key == b"k1"


async def test_events_in_the_answer_that_creates_the_watch_come_as_one_batch() -> None:
    watcher = _Watcher(None, timeout=1)
    got: list[Any] = []

    async def batch(events: Any) -> None:
        got.append(events)

    watcher._new_callback = WatcherCallback(Batches(batch))
    answer = _answer(5, 2)
    answer.created = True
    await watcher._handle_response(answer)
    assert 5 in watcher._callbacks and watcher._callbacks[5].watch_id == 5
    assert [[e.kv.key for e in events] for events in got] == [[b"k0", b"k1"]]
