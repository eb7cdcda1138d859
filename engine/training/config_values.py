"""Values from YAML as the types a config declares: one clear line, naming the key, for any value that is not."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from engine.core.quoting import brief


class ConfigError(ValueError):
    """One line naming the key or path at fault and what to do."""


class Refused(ConfigError):
    """A value of the right type that no type of the key can take (not finite, a NUL character)."""


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def short(value: Any) -> str:
    return brief(value, 160)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """The value as the declared type, or ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return coerce(key, value, option)
            except Refused:
                raise
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif origin is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            if any("\x00" in v for v in value):
                raise Refused(f"config key {key!r}: contains a NUL character: {short(value)}")
            return value
    elif hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # YAML reads 1e-3 (without a dot) as a string; accept it as the number it means.
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise Refused(f"config key {key!r}: expected a finite number, got {short(value)}")
            return number
    elif hint is str:
        if isinstance(value, str):
            if "\x00" in value:
                raise Refused(f"config key {key!r}: contains a NUL character: {short(value)}")
            return value
    raise ConfigError(f"config key {key!r}: expected {type_name(hint)}, got {short(value)}")
