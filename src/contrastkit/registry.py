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

A registry may ask each entry to declare what it is when it registers: give ``declares`` a
(frozen) dataclass and every ``register(name, **fields)`` builds one, read back with
:meth:`Registry.spec`. The entry states its own facts in one place, and nothing keeps a
hand-written list of names beside the registry.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Shape:
...     sides: int
>>> shapes = Registry("shape", declares=Shape)
>>> @shapes.register("triangle", sides=3)
... def triangle() -> str:
...     return "a triangle"
>>> shapes.spec("triangle")
Shape(sides=3)
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component."""

    def __init__(self, kind: str, declares: type | None = None) -> None:
        self.kind = kind
        self.declares = declares
        self._items: dict[str, T] = {}
        self._specs: dict[str, Any] = {}

    def register(self, name: str | None = None, **declared: Any) -> Callable[[T], T]:
        """Decorator registering a factory under ``name`` (default: its snake_case name).

        ``declared``: the fields of the registry's ``declares`` dataclass for this entry (what
        it is: e.g. ``pretrained=True``); none when the registry declares nothing.
        """
        if self.declares is None and declared:
            raise TypeError(
                f"the {self.kind} registry takes no declarations, got {sorted(declared)}; "
                f"register with a name only."
            )

        def decorator(factory: T) -> T:
            key = name or _snake_case(factory.__name__)
            if key in self._items and self._items[key] is not factory:
                raise ValueError(f"{self.kind} {key!r} is already registered; pick another name.")
            if self.declares is not None:
                try:
                    spec = self.declares(**declared)
                except TypeError as err:
                    raise TypeError(
                        f"{self.kind} {key!r} must declare {self.declares.__name__}'s fields "
                        f"when it registers: {err}."
                    ) from None
                self._specs[key] = spec
            self._items[key] = factory
            return factory

        return decorator

    def spec(self, name: str) -> Any:
        """What the entry ``name`` declared when it registered (an instance of ``declares``)."""
        self.get(name)  # the error with suggestions for an unknown name
        if self.declares is None:
            raise TypeError(f"the {self.kind} registry takes no declarations.")
        return self._specs[name]

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
