"""Responses kept in memory for `GET /v1/responses/{id}` and `previous_response_id`.

A bounded LRU: the least recently used response goes first when the store is full, and a
store of size 0 keeps nothing. Each entry holds the response object as it was sent and the
conversation that led to it (input and output, as chat messages, without instructions),
so that a follow-up request can continue it. Nothing survives a restart.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nimble.errors import NotFound
from nimble.types import ChatMessage


class ResponseNotFound(NotFound):
    """No stored response has this id (never stored, evicted, or another API key's)."""

    code = "response_not_found"


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object, as the client received it
    conversation: tuple[ChatMessage, ...]  # every input and output turn, instructions aside
    owner: str | None = None  # the API key that created it (None: keys are off)


class ResponseStore:
    def __init__(self, max_items: int):
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        self.max_items = max_items
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        if self.max_items == 0:
            return
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, response_id: str, owner: str | None, *, param: str | None) -> StoredResponse:
        """The stored response, or ResponseNotFound (naming `param`). A response made with
        one API key is invisible to every other key."""
        stored = self._items.get(response_id)
        if stored is None or stored.owner != owner:
            raise ResponseNotFound(f"Response with id '{response_id}' not found.", param=param)
        self._items.move_to_end(response_id)
        return stored
