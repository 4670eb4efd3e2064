"""Name -> class registries, so configs can pick blocks, samplers and datasets by name."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar
from .errors import UnknownNameError, short

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of classes or factories.

    >>> RES_BLOCKS = Registry("res_block_type")
    >>> @RES_BLOCKS.register("basic")
    ... class Basic: ...
    >>> RES_BLOCKS.get("resnet")  # doctest: +SKIP
    KeyError: unknown res_block_type 'resnet'; choose one of: basic
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {short(name if isinstance(name, str) else str(name))}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
