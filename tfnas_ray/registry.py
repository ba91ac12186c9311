"""String-keyed registries for plug-ins (spaces, metrics, benchmarks).

A registry is filled by a decorator that refuses duplicate names; looking up an unknown
name raises a `TfnasError` that lists the known ones. Registry keys equal the names that
appear in the tables.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from tfnas_ray.errors import TfnasError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plug-ins of one kind.

    Example:
        >>> SPACES = Registry("space")
        >>> @SPACES.register("toy")
        ... def toy(): return 1
        >>> SPACES.get("toy")()
        1
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}  # name -> plug-in, in registration order

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise TfnasError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise TfnasError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
