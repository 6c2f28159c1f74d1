"""The decrypted reads of the shoppers served last, kept in memory (least recently used out first).

The owner holds its lock around every call and drops a shopper's entry on each write to them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")


class ReadCache(Generic[V]):
    def __init__(self, users: int) -> None:
        self.users = users  # 0: nothing is kept
        self._entries: OrderedDict[bytes, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ref: bytes) -> V | None:
        return self._entries.get(ref)

    def hit(self, ref: bytes) -> None:
        """The entry of ``ref`` served a read: it is the last to go."""
        self._entries.move_to_end(ref)

    def put(self, ref: bytes, value: V) -> None:
        if not self.users:
            return
        self._entries[ref] = value
        if len(self._entries) > self.users:
            self._entries.popitem(last=False)

    def drop(self, refs: Iterable[bytes] | None = None) -> None:
        """Forget ``refs``, or everyone."""
        if refs is None:
            self._entries.clear()
        else:
            for ref in refs:
                self._entries.pop(ref, None)
