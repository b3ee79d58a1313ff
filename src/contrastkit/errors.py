"""Errors and warnings about named arguments, in the library's own terms.

The library names its arguments (``root``, ``dim``, ``hf_split``); an application that exposes
them under other names (a config key such as ``data.root``, a CLI flag such as ``--dim``)
restates the message in its terms where it catches the error, with :func:`restate`. The message
is a template in which each argument it names is written ``{name}``:

>>> err = ArgumentError("{root} is empty: pass a folder of images to {root}.", "root")
>>> str(err)
'root is empty: pass a folder of images to root.'
>>> err.argument
'root'
>>> restate(err, {"root": "data.root"})
'data.root is empty: pass a folder of images to data.root.'
>>> restate(ValueError("plain"), {"root": "data.root"})
'plain'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["ArgumentError", "ArgumentWarning", "restate"]


class _Restatable:
    """A message template naming ``arguments`` as ``{name}`` (other text is left as is)."""

    template: str
    arguments: tuple[str, ...]

    def _set(self, template: str, arguments: tuple[str, ...]) -> str:
        if not arguments:
            raise TypeError("name at least one argument that the message is about.")
        self.template, self.arguments = template, arguments
        return self.render({})

    def __reduce__(self) -> tuple:  # pickles (worker processes) with its template
        return (type(self), (self.template, *self.arguments))

    @property
    def argument(self) -> str:
        """The argument the message is mainly about (the first one named)."""
        return self.arguments[0]

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each argument written as ``names`` calls it (default: its own name)."""
        pattern = "|".join(re.escape(a) for a in self.arguments)
        return re.sub(r"\{(" + pattern + r")\}", lambda m: names.get(m[1], m[1]), self.template)


class ArgumentError(_Restatable, ValueError):
    """A ``ValueError`` about the arguments ``arguments`` of a library function (see the module
    docstring); ``str(err)`` names them as the library does."""

    def __init__(self, template: str, *arguments: str) -> None:
        super().__init__(self._set(template, arguments))


class ArgumentWarning(_Restatable, UserWarning):
    """A ``UserWarning`` about arguments of a library function, restatable like
    :class:`ArgumentError`."""

    def __init__(self, template: str, *arguments: str) -> None:
        super().__init__(self._set(template, arguments))


def restate(problem: BaseException, names: Mapping[str, str]) -> str:
    """The message of ``problem`` (an error or a warning) with the arguments it names written as
    ``names`` calls them: ``{"root": "data.root"}``. Other exceptions keep their message."""
    if isinstance(problem, _Restatable):
        return problem.render(names)
    return str(problem)
