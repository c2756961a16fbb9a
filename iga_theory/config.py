"""Typed, validated configuration: dataclasses loaded from JSON or TOML files.

A configuration class is a (possibly nested) dataclass whose fields carry metadata
made with `field`: a help text, and either a closed range ``(low, high)`` or a set of
``choices``. `load_config` reads a file into such a class and rejects unknown keys,
wrong types and out-of-range values with a message that names the key, the value and
what is allowed. Nothing is evaluated: files are parsed as JSON or TOML data only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


def field(default, help: str, *, low: float | None = None, high: float | None = None,
          choices: tuple | None = None, default_factory=None):
    """Declare a configuration field with its help text and allowed values.

    ``low``/``high`` bound numbers (closed interval; None for unbounded) and the items
    of a list of numbers; ``choices`` lists the allowed values of a string or number.
    """
    metadata = {"help": help, "low": low, "high": high, "choices": choices}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _allowed_text(meta: dict, kind=None) -> str:
    if kind is bool:
        return "true or false"
    if meta.get("choices") is not None:
        return f"one of {list(meta['choices'])}"
    low = "-inf" if meta.get("low") is None else meta["low"]
    high = "inf" if meta.get("high") is None else meta["high"]
    return f"a value in [{low}, {high}]"


def _check_scalar(key: str, value: Any, kind: type, meta: dict) -> Any:
    """Check one scalar against its declared type and range; return it converted."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false; got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, {_allowed_text(meta)}; got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, {_allowed_text(meta)}; got {value!r}")
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"{key}: expected a number, {_allowed_text(meta)}; got NaN")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, {_allowed_text(meta)}; got {value!r}")

    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: expected one of {list(choices)}; got {value!r}")
    if kind in (int, float):
        low, high = meta.get("low"), meta.get("high")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{key}: expected {_allowed_text(meta)}; got {value!r}")
    return value


def _unwrap_optional(annotation) -> tuple[Any, bool]:
    """Return (inner type, optional?) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _convert(key: str, value: Any, annotation, meta: dict) -> Any:
    annotation, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required, {_allowed_text(meta)}; got null")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, prefix=key + ".")
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list; got {value!r}")
        items = [_convert(f"{key}[{i}]", item, item_type, meta) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation in (bool, int, float, str):
        return _check_scalar(key, value, annotation, meta)
    return value


def from_dict(cls, data: Any, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, validating every key and value.

    Missing keys take the class defaults; unknown keys are rejected.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: expected a table/object; got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {[prefix + k for k in unknown]}; "
            f"allowed keys here: {sorted(prefix + k for k in fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _convert(prefix + name, value, hints[name], dict(fields[name].metadata))
              for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from error


def validate(instance) -> None:
    """Re-check every field of a dataclass instance against its metadata."""
    from_dict(type(instance), to_dict(instance))


def to_dict(instance) -> dict:
    """Plain-data (JSON-ready) dictionary of a configuration dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(instance)))


def read_config_file(path: str | Path) -> dict:
    """Parse a JSON (``.json``) or TOML (``.toml``) configuration file into plain data."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"configuration path {str(path)!r} is not a regular file; pass a .json or .toml file")
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {str(path)!r}; pass an existing .json or .toml file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"configuration file {str(path)!r} must end in .json or .toml; got {suffix!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {error}") from error
    try:
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"configuration file {str(path)!r} is not valid {suffix[1:].upper()}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {str(path)!r} must hold a table/object at the top level")
    return data


def load_config(cls, path: str | Path):
    """Read a JSON or TOML file into the configuration class ``cls`` (missing keys take defaults)."""
    return from_dict(cls, read_config_file(path))


def config_hash(config, length: int = 12) -> str:
    """Short SHA-256 of a configuration's canonical JSON (dataclass or plain data), naming run folders."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def describe(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, help) rows for every field, nested ones included."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner, _ = _unwrap_optional(hint)
        if dataclasses.is_dataclass(inner):
            rows += describe(inner, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, repr(default), _allowed_text(dict(f.metadata), inner), f.metadata.get("help", "")))
    return rows
