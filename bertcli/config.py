"""Strict YAML → dataclass config loading: every problem in a file is reported at once."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, Union, get_args, get_origin

import yaml

from bertcli.errors import ConfigError

_MISSING = object()
# A config is a few kilobytes; anything far larger is not one (and /dev/zero would never end).
MAX_CONFIG_BYTES = 1 << 20
# Values quoted in messages are cut to this many characters: a message is one line, whatever the value.
MAX_QUOTED_CHARS = 80


def quote(value: Any) -> str:
    """repr of a value for a message, cut to MAX_QUOTED_CHARS."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 5] + "…" + text[-4:]


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and duplicate keys.

    Aliases are refused because nested ones expand exponentially (a 1 KB "billion laughs" file never finishes
    loading), and a config needs none; a key given twice is refused because YAML would silently keep the last.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "aliases (*name) are not allowed in a bertcli config; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {quote(key)} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text → Python values, with StrictLoader's rules."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


# ---------------------------------------------------------------- field documentation

def field_docs(schema_cls: type) -> dict[str, str]:
    """The attribute docstrings (the string literal under each field) of a dataclass schema."""
    import ast
    import inspect

    try:
        source = textwrap.dedent(inspect.getsource(schema_cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:] + [None]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(
                nxt.value.value, str
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolved_fields(schema_cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(schema_cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema_cls)}


# ---------------------------------------------------------------- type checking

def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp)
        return f"a list of {_describe(inner)}"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Return the value converted to tp, or _MISSING when it does not fit."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            out = _coerce(value, arg)
            if out is not _MISSING:
                return out
        return _MISSING
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        # YAML reads `false`/`off` as booleans; a literal of strings may still name them.
        if isinstance(value, bool):
            if str(value).lower() in choices:
                return str(value).lower()
            if {"none", "all"} <= set(choices):  # strip_accents: false/true
                return "all" if value else "none"
        return _MISSING
    if origin is list:
        (inner,) = get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `--set input=a.txt` names a single item
        if not isinstance(value, list):
            return _MISSING
        items = [_coerce(v, inner) for v in value]
        return _MISSING if any(i is _MISSING for i in items) else items
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                return _MISSING
        return _MISSING
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _MISSING
        return _MISSING
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return _MISSING
    if tp is dict:
        return value if isinstance(value, dict) else _MISSING
    if tp is Any:
        return value
    return _MISSING


def _check_range(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if "ge" in meta and value < meta["ge"]:
        return f"a value >= {meta['ge']}"
    if "gt" in meta and value <= meta["gt"]:
        return f"a value > {meta['gt']}"
    if "le" in meta and value > meta["le"]:
        return f"a value <= {meta['le']}"
    if "lt" in meta and value >= meta["lt"]:
        return f"a value < {meta['lt']}"
    return None


def _build(schema_cls: type, data: dict, prefix: str, origins: dict[str, str], problems: list[str]) -> Any:
    fields = _resolved_fields(schema_cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = origins.get(dotted, "")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            if close:
                hint = f"; did you mean '{prefix}{close[0]}'?"
            else:
                hint = f" (valid keys: {', '.join(prefix + f for f in fields)})"
            problems.append(f"unknown key '{dotted}'{where}{hint}")
            continue
        field, tp = fields[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                continue
            if not isinstance(value, dict):
                problems.append(f"key '{dotted}'{where}: expected a mapping, got {quote(value)}")
                continue
            kwargs[key] = _build(tp, value, dotted + ".", origins, problems)
            continue
        out = _coerce(value, tp)
        if out is _MISSING:
            problems.append(f"key '{dotted}'{where}: got {quote(value)}, expected {_describe(tp)}")
            continue
        bad_range = _check_range(out, field.metadata)
        if bad_range:
            problems.append(f"key '{dotted}'{where}: got {quote(value)}, expected {bad_range}")
            continue
        kwargs[key] = out
    try:
        return schema_cls(**kwargs)
    except TypeError as exc:  # a required field with no default
        problems.append(f"{prefix or 'config'}: {exc}")
        return None


# ---------------------------------------------------------------- loading

def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' does not exist", hint="check the path")
    if p.is_dir():
        raise ConfigError(f"config file '{p}' is a directory", hint="pass a YAML file, e.g. configs/pretrain/tiny.yaml")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' is not a regular file (a pipe or a device)", hint="pass a YAML file")
    with open(p, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file '{p}' is over {MAX_CONFIG_BYTES >> 20} MB: not a config", hint="check the path")
    try:
        data = parse_yaml(raw.decode("utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        kind = "" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error: "
        raise ConfigError(f"{p}{line}: {kind}{exc.problem or exc}", hint="fix the YAML at that line") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read YAML: {quote(str(exc))[1:-1]}",
                          hint="save the config as UTF-8 YAML text") from exc
    except (RecursionError, ValueError) as exc:  # brackets nested thousands deep; an integer of 5,000 digits
        raise ConfigError(f"{p}: a value is nested too deeply or is too long a number to read",
                          hint="a config holds plain keys and short values") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}",
                          hint="write one `key: value` a line, as in configs/")
    return data


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _record_origins(data: dict, prefix: str, origin: str, origins: dict[str, str]) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        origins[dotted] = origin
        if isinstance(value, dict):
            _record_origins(value, dotted + ".", origin, origins)


SET_ORIGIN = " (from --set "  # how an error line names a key given by --set (override_origins)
OPTION_ORIGIN = " (from --"  # ... or by a command-line option (load_config's cli_values); --set starts so too


def where_to_fix(problem: str, default: str) -> str:
    """What the hint of a one-problem error asks the user to fix: the --set or the option its origin names, else
    `default` (the file)."""
    if SET_ORIGIN in problem:
        return "that --set"
    if OPTION_ORIGIN in problem:
        return "that option"
    return default


def override_origins(overrides: typing.Sequence[str]) -> dict[str, str]:
    """Where each key given by `--set` came from, for error lines: the key and every key above it (`--set
    max_steps.x=1` is the override's fault, not the file's)."""
    origins: dict[str, str] = {}
    for text in overrides:
        parts = parse_override(text)[0].split(".")
        for depth in range(1, len(parts) + 1):
            origins[".".join(parts[:depth])] = f"{SET_ORIGIN}{quote(text)[1:-1]})"
    return origins


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` → ("a.b", value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. --set vocab_size=8000",
                          hint=f"give the key a value: --set {text.strip() or 'KEY'}=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set '{text}': the key is empty", hint="write --set KEY=VALUE, e.g. --set seed=1")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(
    schema_cls: type,
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    cli_values: dict[str, Any] | None = None,
    validate: bool = True,
):
    """Schema defaults ← YAML file ← `--set a.b=v` overrides ← explicit CLI flags; strict, all problems at once.

    validate=False skips the cross-field checks (e.g. "no input given"), for showing a config.
    """
    data: dict = {}
    origins: dict[str, str] = {}
    if path is not None:
        data = _read_yaml(path)
        _record_origins(data, "", f" in {path}", origins)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    origins.update(override_origins(overrides))
    for key, value in (cli_values or {}).items():
        if value is None or value == [] or value == ():
            continue
        _set_dotted(data, key, list(value) if isinstance(value, tuple) else value)
        origins[key] = f"{OPTION_ORIGIN}{key.replace('_', '-')})"
    problems: list[str] = []
    cfg = _build(schema_cls, data, "", origins, problems)
    if cfg is not None and not problems and validate:
        problems.extend(validation_problems(cfg))
    if problems:
        source = f" in {path}" if path else ""
        if len(problems) == 1:
            if problems[0].startswith("unknown key"):
                raise ConfigError(problems[0], hint=f"run `bert config show {_stage_name(schema_cls)}` to see every "
                                                    "valid key")
            raise ConfigError(problems[0], hint=f"fix {where_to_fix(problems[0], 'that value' + source)}")
        raise ConfigError(
            f"{len(problems)} problems with the config{source}:\n  - " + "\n  - ".join(problems),
            hint="fix them all, then run again",
        )
    return cfg


def build_config(
    schema_cls: type, data: dict, prefix: str = "", origins: dict[str, str] | None = None, validate: bool = True
) -> tuple[Any, list[str]]:
    """A schema instance from a mapping plus every problem found, keys named `prefix + key` (for configs nested
    in another file, e.g. a pipeline's `pairs:` section); the instance is None when it cannot be built."""
    problems: list[str] = []
    cfg = _build(schema_cls, data, prefix, origins or {}, problems)
    if cfg is not None and not problems and validate:
        problems.extend(validation_problems(cfg))
    return cfg, problems


def validation_problems(cfg: Any) -> list[str]:
    """The cross-field problems of a built config: its validate() and those of its nested sections."""
    problems: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            problems.extend(validation_problems(value))
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        problems.extend(validate())
    return problems


# ---------------------------------------------------------------- writing

def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _yaml_lines(cfg: Any, indent: int, comments: bool) -> list[str]:
    docs = field_docs(type(cfg)) if comments else {}
    pad = "  " * indent
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in docs:
            for doc_line in textwrap.wrap(docs[f.name], 100 - len(pad)):
                lines.append(f"{pad}# {doc_line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.extend(_yaml_lines(value, indent + 1, comments))
        else:
            lines.append(f"{pad}{f.name}: {_yaml_scalar(value)}")
    return lines


def _yaml_scalar(value: Any) -> str:
    dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()


def config_to_yaml(cfg: Any, comments: bool = False) -> str:
    """The config as YAML listing every field, in schema order (with field docs as comments if asked)."""
    return "\n".join(_yaml_lines(cfg, 0, comments)) + "\n"


def keys_with_role(schema_cls: type, role: str) -> tuple[str, ...]:
    """The top-level keys whose field metadata names `role` ("execution" or "resumable", see schemas.py)."""
    return tuple(f.name for f in dataclasses.fields(schema_cls) if role in f.metadata.get("roles", ()))


def _stage_name(schema_cls: type) -> str:
    """The name `bert config show` knows this schema by ("STAGE" for one it does not)."""
    from bertcli.schemas import CONFIG_SCHEMAS  # schemas is data only; imported late to keep config.py standalone

    return next((name for name, cls in CONFIG_SCHEMAS.items() if cls is schema_cls), "STAGE")


def dict_changes(old: dict, new: dict, ignore: Sequence[str] = (), prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf where two config dicts differ, in key order; keys named in
    `ignore` (dotted, from the top) are left out."""
    changes: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(dict_changes(a, b, ignore, name + "."))
        elif a != b:
            changes.append((name, a, b))
    return changes


def config_changes(old: Any, new: Any, ignore_role: str = "execution") -> list[tuple[str, Any, Any]]:
    """What changed between two configs of one schema, leaving out the keys config_hash leaves out."""
    return dict_changes(config_to_dict(old), config_to_dict(new), keys_with_role(type(new), ignore_role))


def describe_changes(changes: list[tuple[str, Any, Any]], prefix: str = "", most: int = 3) -> str:
    """'a.b: 1 → 2, c: x → y' for `most` changes ('and N more' after them). Keys set to a value come before keys
    reset to null: a preset chosen (null → tiny) is what the user did, its sizes going null follow from it."""
    changes = sorted(changes, key=lambda change: change[2] is None)  # stable: key order otherwise
    shown = [f"{prefix}{key}: {_yaml_scalar(a)} → {_yaml_scalar(b)}" for key, a, b in changes[:most]]
    if len(changes) > most:
        shown.append(f"and {len(changes) - most} more")
    return ", ".join(shown)


def config_hash(cfg: Any, ignore_role: str = "execution") -> str:
    """sha256 of the canonical JSON of the config, leaving out the keys of `ignore_role` (those that do not change
    what is computed)."""
    data = copy.deepcopy(config_to_dict(cfg))
    for key in keys_with_role(type(cfg), ignore_role):
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
