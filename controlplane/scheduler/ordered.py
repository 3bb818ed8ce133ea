"""A small sorted container, so the scheduler can keep machines ordered by score.

The scheduler walks machines best-score-first and stops at the first feasible one; that needs
an order that survives one machine's score changing after every placement without re-sorting
5,000 machines. This is the bucketed-list idea of the ``sortedcontainers`` package in ~60 lines
(no new dependency): a list of sorted sublists of at most ``2 * load`` keys plus each sublist's
maximum. Add and remove cost a bisect over the maxima (log n) plus an insert into one short
list; iteration is in ascending order. Keys must be unique and totally ordered (the scheduler's
keys end with the machine name).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Any)


class SortedKeys(Generic[K]):
    """Unique keys in ascending order with O(log n + load) add/remove."""

    __slots__ = ("_lists", "_maxes", "_load", "_len")

    def __init__(self, *, load: int = 128) -> None:
        self._lists: list[list[K]] = []
        self._maxes: list[K] = []
        self._load = load
        self._len = 0

    @classmethod
    def of(cls, keys: Iterable[K], *, load: int = 128) -> SortedKeys[K]:
        """The container holding ``keys`` (unique), built with one sort rather than one insert each."""
        built: SortedKeys[K] = cls(load=load)
        ordered = sorted(keys)
        built._lists = [ordered[i : i + load] for i in range(0, len(ordered), load)]
        built._maxes = [sub[-1] for sub in built._lists]
        built._len = len(ordered)
        return built

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        for sub in self._lists:
            yield from sub

    def __contains__(self, key: K) -> bool:
        pos = bisect_left(self._maxes, key)
        if pos == len(self._maxes):
            return False
        sub = self._lists[pos]
        idx = bisect_left(sub, key)
        return idx < len(sub) and sub[idx] == key

    def add(self, key: K) -> None:
        maxes = self._maxes
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
            self._len = 1
            return
        pos = bisect_left(maxes, key)
        if pos == len(maxes):
            pos -= 1
            self._lists[pos].append(key)
            maxes[pos] = key
        else:
            insort(self._lists[pos], key)
        self._len += 1
        sub = self._lists[pos]
        if len(sub) > 2 * self._load:
            half = sub[self._load :]
            del sub[self._load :]
            maxes[pos] = sub[-1]
            self._lists.insert(pos + 1, half)
            maxes.insert(pos + 1, half[-1])

    def remove(self, key: K) -> None:
        """Remove ``key``; KeyError if it is not there."""
        maxes = self._maxes
        pos = bisect_left(maxes, key)
        if pos == len(maxes):
            raise KeyError(key)
        sub = self._lists[pos]
        idx = bisect_left(sub, key)
        if idx == len(sub) or sub[idx] != key:
            raise KeyError(key)
        del sub[idx]
        self._len -= 1
        if not sub:
            del self._lists[pos]
            del maxes[pos]
        else:
            maxes[pos] = sub[-1]

    def first(self) -> K | None:
        return self._lists[0][0] if self._lists else None
