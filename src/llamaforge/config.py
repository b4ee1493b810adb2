"""Typed configs: dataclasses with defaults from SPEC.md, read from YAML, overridden by `key=value`.

    cfg = load_config(PretrainConfig, "configs/pretrain/demo.yaml", ["train.lr=1e-3", "data.seq_len=128"])

Nested dataclasses are addressed with dotted keys (`train.lr`) on the command line and with
nested mappings in YAML. Every value is coerced to its field's annotated type (int, float,
bool, str, `Literal[...]`, `X | None`, `tuple[...]`, `list[...]`); an unknown key fails naming
the allowed keys, a bad value fails naming the key and what it accepts. A field's help text
is the `# comment` on its line, so a config class documents itself and `--help` lists it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


# --------------------------------------------------------------------------- loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the YAML file at `path` (if any), then `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
        _set_dotted(data, key.strip(), value)
    return from_dict(cls, data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, found {type(data).__name__}")
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])} is a value, not a section; cannot set {key}")
        node = child
    node[last] = value


def from_dict(cls: type[T], data: dict[str, Any], *, base: T | None = None, prefix: str = "") -> T:
    """`base` (default: `cls()`) with the entries of `data` replaced, each checked and coerced."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r}; allowed keys{' in ' + prefix[:-1] if prefix else ''}: "
            + ", ".join(names)
        )
    changes = {}
    for name, value in data.items():
        key, annotation = prefix + name, hints[name]
        current = getattr(base, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} is a section; give its keys ({key}.<name>=...), not {value!r}")
            changes[name] = from_dict(type(current), value, base=current, prefix=key + ".")
        else:
            changes[name] = coerce(value, annotation, key)
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        where = f" in {prefix[:-1]}" if prefix else ""
        raise ConfigError(f"invalid config{where}: {e}") from e


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` (from YAML or a command-line string) as the type `annotation`, or ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {options}")
    if origin is Literal:
        for allowed in args:
            if value == allowed or (isinstance(value, str) and str(allowed) == value):
                return allowed
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = _as_sequence(value, key)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values (e.g. {_example(args)}), got {value!r}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        item_type = args[0] if args else str
        out = [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if annotation is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {annotation!r}")


def _as_sequence(value: Any, key: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: {value!r} is not a valid list ({e})") from e
            return list(parsed)
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ConfigError(f"{key}: expected a list (a,b or [a, b]), got {value!r}")


def _example(args: tuple) -> str:
    samples = {float: "0.9", int: "1", str: "a", bool: "true"}
    return ",".join(samples.get(a, "x") for a in args)


# --------------------------------------------------------------------------- writing and help


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists): what manifests and YAML files hold."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(cfg)


def flat_items(cfg: Any, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted key, value, annotation, help) for every leaf of a config, in declaration order."""
    hints = typing.get_type_hints(type(cfg))
    comments = field_comments(type(cfg))
    items = []
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            items += flat_items(value, prefix + f.name + ".")
        else:
            items.append((prefix + f.name, value, hints[f.name], comments.get(f.name, "")))
    return items


def config_help(cfg: Any) -> str:
    """Every key with its default (the values of `cfg`), accepted values and help text."""
    lines = []
    section = None
    for key, value, annotation, text in flat_items(cfg):
        head = key.rpartition(".")[0]
        if head != section:
            section = head
            if head:
                lines.append(f"\n  [{head}]")
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
        detail = text + (f" (one of {'|'.join(map(str, choices))})" if choices else "")
        lines.append(f"  {key}={shown}" + (f"\n      {detail}" if detail else ""))
    return "\n".join(lines)


def field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field of a dataclass, read from its source."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        by_line = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                by_line[tok.start[0]] = tok.string.lstrip("#").strip()
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                end = getattr(node, "end_lineno", node.lineno)
                if end in by_line:
                    comments[node.target.id] = by_line[end]
    return comments


def parse_cli(cls: type[T], argv: Sequence[str] | None, *, prog: str, description: str) -> T:
    """`prog [--config FILE.yaml] [key=value ...]` -> a config; `--help` lists every key.

    Errors (unknown keys, bad values, missing files) print one line and exit with status 2.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys (key=value, defaults shown):\n" + config_help(cls()),
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of keys; key=value arguments override it")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as e:
        parser.exit(2, f"{prog}: error: {e}\n")
