"""Check that a JSON document read from a file has the shape its reader expects.

A file a run wrote can come back truncated, edited by hand or from another version: each
reader checks it against a small shape (:class:`Obj`, :class:`ListOf`, :data:`NUM` ...)
before using it, so that a wrong type is one line naming the file, the place in it and
what was expected (:func:`check` raises :class:`ShapeError`), never a traceback later.

Objects may have more keys than their shape names; a key the shape names may be missing
(the reader has a default) unless it is in ``required``. ``null`` is only accepted where
the shape says :class:`Opt`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ShapeError(ValueError):
    """What is wrong, and where: ``hosts[1].url: must be a string, not 5``."""


def _wrong(where: str, expected: str, value: Any) -> ShapeError:
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ShapeError(f"{where or 'the document'}: must be {expected}, not {shown}")


@dataclass(frozen=True)
class Scalar:
    name: str

    def check(self, value: Any, where: str) -> None:
        ok = {
            "a number": isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value),
            "an integer": isinstance(value, int) and not isinstance(value, bool),
            "a string": isinstance(value, str),
            "a boolean": isinstance(value, bool),
            "any value": True,
        }[self.name]
        if not ok:
            raise _wrong(where, self.name, value)


NUM = Scalar("a number")
INT = Scalar("an integer")
STR = Scalar("a string")
BOOL = Scalar("a boolean")
ANY = Scalar("any value")

Shape = Any  # Scalar | Opt | ListOf | Obj | MapOf (each has check(value, where))


@dataclass(frozen=True)
class Opt:
    """``shape`` or ``null``."""

    shape: Shape

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.shape.check(value, where)


@dataclass(frozen=True)
class ListOf:
    """A list of ``shape`` (of ``length`` items, if given)."""

    shape: Shape
    length: int | None = None

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            what = "a list" if self.length is None else f"a list of {self.length}"
            raise _wrong(where, what, value)
        for i, item in enumerate(value):
            self.shape.check(item, f"{where}[{i}]")


@dataclass(frozen=True)
class TupleOf:
    """A list of exactly these shapes, in this order."""

    shapes: tuple[Shape, ...]

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) != len(self.shapes):
            raise _wrong(where, f"a list of {len(self.shapes)}", value)
        for i, (item, shape) in enumerate(zip(value, self.shapes, strict=True)):
            shape.check(item, f"{where}[{i}]")


@dataclass(frozen=True)
class Obj:
    """An object whose keys named here have these shapes (others are not looked at)."""

    keys: Mapping[str, Shape]
    required: frozenset[str] = field(default_factory=frozenset)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _wrong(where, "an object", value)
        for key, shape in self.keys.items():
            here = f"{where}.{key}" if where else key
            if key not in value:
                if key in self.required:
                    raise ShapeError(f"{here}: missing")
                continue
            shape.check(value[key], here)


@dataclass(frozen=True)
class MapOf:
    """An object whose every value has ``shape``."""

    shape: Shape

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _wrong(where, "an object", value)
        for key, item in value.items():
            self.shape.check(item, f"{where}.{key}" if where else str(key))


def check(doc: Any, shape: Shape) -> None:
    """Raise :class:`ShapeError` unless ``doc`` has ``shape``."""
    shape.check(doc, "")
