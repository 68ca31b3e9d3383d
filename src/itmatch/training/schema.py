"""Typed fields for recipe values: each checks one value's type and range and returns it cleaned.

A field is called with the value and the key's dotted name; a bad value raises
:class:`ConfigError` in one form everywhere, e.g.
``training.batch_size: expected a positive integer, got 'abc'``. Recipes stay plain dicts: the
fields only check and normalise (``1e-3`` written as a YAML string becomes the float 0.001).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itmatch.errors import ConfigError


def _fail(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class Int:
    """An integer (never a bool, never 2.5 or '64') with an optional lower/upper bound."""

    min: int | None = None
    max: int | None = None
    nullable: bool = False

    def describe(self) -> str:
        if self.min == 1 and self.max is None:
            text = "a positive integer"
        elif self.min == 0 and self.max is None:
            text = "a non-negative integer"
        elif self.min is not None and self.max is not None:
            text = f"an integer in [{self.min}, {self.max}]"
        elif self.min is not None:
            text = f"an integer >= {self.min}"
        else:
            text = "an integer"
        return text + (" or null" if self.nullable else "")

    def describe_type(self) -> str:
        if self.min is not None and self.min >= 1:
            text = "a positive integer"
        elif self.min is not None and self.min >= 0:
            text = "a non-negative integer"
        else:
            text = "an integer"
        return text + (" or null" if self.nullable else "")

    def __call__(self, value: Any, key: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(key, self.describe_type(), value)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise _fail(key, self.describe(), value)
        return value


@dataclass(frozen=True)
class Float:
    """A finite real number (ints accepted; numeric strings too, since YAML 1.1 reads ``1e-3`` as
    a string), with bounds: ``min``/``max`` inclusive unless ``min_open``/``max_open``."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        if self.min == 0 and self.max is None:
            text = "a positive number" if self.min_open else "a non-negative number"
        elif self.min is not None and self.max is not None:
            text = f"a number in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
        elif self.min is not None:
            text = f"a number {'>' if self.min_open else '>='} {self.min:g}"
        else:
            text = "a number"
        return text + (" or null" if self.nullable else "")

    def __call__(self, value: Any, key: str) -> Any:
        if value is None and self.nullable:
            return None
        number: float
        if isinstance(value, bool):
            raise _fail(key, self.describe(), value)
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _fail(key, self.describe(), value) from None
        else:
            raise _fail(key, self.describe(), value)
        if not math.isfinite(number):
            raise _fail(key, self.describe(), value)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            raise _fail(key, self.describe(), value)
        if self.max is not None and (number > self.max or (self.max_open and number == self.max)):
            raise _fail(key, self.describe(), value)
        return number


@dataclass(frozen=True)
class Bool:
    nullable: bool = False

    def __call__(self, value: Any, key: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, bool):
            raise _fail(key, "true or false", value)
        return value


@dataclass(frozen=True)
class Str:
    """A non-empty string; ``pattern`` (a regular expression) must match it whole when given."""

    nullable: bool = False
    pattern: str | None = None
    what: str = "a non-empty string"

    def __call__(self, value: Any, key: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and self.pattern is None:
            value = str(value)  # a run name or split written as a number
        if not isinstance(value, str) or not value.strip() or (self.pattern and not re.fullmatch(self.pattern, value)):
            raise _fail(key, self.what + (" or null" if self.nullable else ""), value)
        return value


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def __call__(self, value: Any, key: str) -> Any:
        # `in` alone would accept True for 1; compare types too.
        if not any(value == o and type(value) is type(o) for o in self.options):
            shown = ", ".join("null" if o is None else repr(o) for o in self.options)
            raise _fail(key, f"one of {shown}", value)
        return value


@dataclass(frozen=True)
class FilePath:
    """A file or folder path, stored absolute (a relative one is resolved against the current
    directory when the recipe is loaded, so a run's saved config works from any directory).
    ``keep`` lists non-path words left as they are (``auto``)."""

    nullable: bool = True
    keep: tuple[str, ...] = ()

    def __call__(self, value: Any, key: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise _fail(key, "a path" + (" or null" if self.nullable else ""), value)
        if str(value) in self.keep:
            return str(value)
        return str(Path(value).expanduser().absolute())


@dataclass(frozen=True)
class ListOf:
    item: Callable[[Any, str], Any]
    nullable: bool = False
    what: str = "a list"

    def __call__(self, value: Any, key: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise _fail(key, self.what + (" or null" if self.nullable else ""), value)
        return [self.item(v, f"{key}[{i}]") for i, v in enumerate(value)]


Field = Callable[[Any, str], Any]


def check_section(values: dict[str, Any], fields: dict[str, Field], where: str) -> dict[str, Any]:
    """``values`` with every key that has a field checked and cleaned (keys without one pass)."""
    out = dict(values)
    for key, field in fields.items():
        if key in out:
            out[key] = field(out[key], f"{where}.{key}" if where else key)
    return out
