"""A small named registry for components (losses, encoders, index backends, ...).

Configs name components by string; tests iterate a registry so that a new component is
tested by being registered (the timm pattern).

>>> reg = Registry("widget")
>>> @reg.register("square")
... def square(x: int = 2) -> int:
...     return x * x
>>> reg.list()
['square']
>>> reg.create("square", x=3)
9
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a factory under ``name`` (default: its snake_case name)."""

        def decorator(factory: T) -> T:
            key = name or _snake_case(factory.__name__)
            if key in self._items and self._items[key] is not factory:
                raise ValueError(f"{self.kind} {key!r} is already registered; pick another name.")
            self._items[key] = factory
            return factory

        return decorator

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern`` (e.g. ``"*nce*"``)."""
        return sorted(k for k in self._items if fnmatch.fnmatch(k, pattern))

    def get(self, name: str) -> T:
        """The factory registered as ``name``; a clear error with suggestions otherwise."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}.")
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.list())}."
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the component registered as ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


def _snake_case(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if (
            ch.isupper()
            and i > 0
            and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower()))
        ):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
