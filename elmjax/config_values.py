"""One config value at a time: the error type, durations, override parsing, type coercion.

Kept apart from `elmjax.config` (the dataclass tree and its loading) because none of it knows the
tree: it turns what a user typed (a YAML scalar, `10m`, `key=value`) into a checked Python value of
a declared type, or a `ConfigError` that names the key or the option the user gave.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key that is unknown, mistyped or impossible; the message names the key.

    `option` names the command-line option the problem came from when it is not a config key
    (`--config FILE` that cannot be read, a `--set` without `=`): the message then names the
    option and what the user gave, never a made-up key."""

    def __init__(self, key: str, message: str, *, option: str | None = None):
        self.key = key
        self.option = option
        if option:
            super().__init__(f"{option} {key}: {message}")
        else:
            super().__init__(f"config key '{key}': {message}")


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h|hr|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(value: Any) -> float | None:
    """Seconds from `90`, `"30s"`, `"10m"`, `"1.5h"`; None (or "none") means no limit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 1h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, YAML-parsed value). `time_limit=10m` keeps "10m" for the field parser."""
    if "=" not in text:
        raise ConfigError(text, "must look like KEY=VALUE (e.g. time_limit=5m)", option="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(text, "the key before '=' is empty", option="--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def coerce_value(value: Any, hint: Any) -> Any:
    """Check/convert a parsed YAML value to a field type; raise TypeError naming what was wanted."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce_value(value, option)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise TypeError(" or ".join(errors))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        (item, *rest) = typing.get_args(hint)
        if isinstance(value, str) and item is str:
            return (value,)  # `--set seed_programs=radial`
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(coerce_value(v, item) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise TypeError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint}")


def build_dataclass(
    cls: type,
    data: Mapping[str, Any],
    unknown: Callable[[str, list[str]], ConfigError],
    prefix: str = "",
) -> Any:
    """`cls(**data)` with each value coerced to its field's declared type (`coerce_value`, or the
    field's `metadata["parse"]`), nested dataclass fields built from nested mappings.

    One builder for every config of the command line (`evolve`, `finetune`, `rl`), so a YAML
    value or a `--set` means the same everywhere; `unknown(key, field_names)` makes the error
    for a key `cls` does not have (each command words its own suggestion)."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "<root>", "must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise unknown(f"{prefix}{key}", list(fields))
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, unknown, prefix=key + ".")
            continue
        parse = fields[name].metadata.get("parse")
        try:
            kwargs[name] = parse(value) if parse else coerce_value(value, hint)
        except (TypeError, ValueError) as err:
            raise ConfigError(key, str(err)) from None
    return cls(**kwargs)
