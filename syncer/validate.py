"""Fast payload validation against the JSON Schemas in ``syncer/schemas/``.

Why a subset validator instead of ``jsonschema``
-----------------------------------------------
A full sync validates every conversation and message it reads -- on the order of
400,000 records. A general JSON Schema implementation walks the schema for every
instance, dispatches per keyword, and builds error objects; that costs tens of
microseconds per record and brings a runtime dependency. The schemas in
``syncer/schemas/`` use only a handful of keywords, so this module compiles each
schema *once* into plain Python closures (with a fast path that decides the
common "value has the expected exact Python type" case with a single set
lookup) and validates a record in a few microseconds.

Supported keywords (anything else makes compilation fail loudly, so a schema can
never silently use a keyword this module would ignore):

* ``type`` -- a name or a list of names; JSON Schema semantics: booleans are
  neither integers nor numbers, a float with an integral value (``3.0``) is an
  integer;
* ``required``, ``properties``, ``additionalProperties: true`` (a no-op);
* ``minLength`` (code points, applies to strings only) and ``minimum``
  (applies to numbers only);
* ``$ref`` to a sibling schema file (``"conversation.json"``), resolved against
  the schema's ``$id`` and applied in addition to the sibling keywords, as in
  draft 2020-12;
* annotations (``$schema``, ``$id``, ``$comment``, ``title``, ``description``,
  ``examples``, ``default``) are ignored.

Conformance is not taken on trust: ``tests/test_validate.py`` checks that
:func:`problem` accepts exactly what ``jsonschema.Draft202012Validator``
accepts, on the contract's samples and on hundreds of generated variants per
schema. ``jsonschema`` is a test dependency only.

Public API
----------
``KINDS``                       the schema names that can be validated
``load_schema(name) -> dict``   the parsed schema file ``schemas/<name>.json``
``Validator(schema_dir=None)``  compiles schemas lazily, once per instance;
    ``.problem(kind, record) -> str | None`` and
    ``.checker(kind) -> Callable[[Any], str | None]`` (for hot loops)
``problem(kind, record)``       module-level shortcut using a shared Validator
``checker(kind)``               module-level shortcut using a shared Validator

``problem`` returns ``None`` when the record is valid, otherwise ONE short
human-readable reason naming the path, e.g. ``"messageCount: expected integer,
got string"``, ``"missing required field 'id'"`` or ``"record is not an
object"``. It never raises on any JSON value; an unknown ``kind`` is a
programming error and raises ``ValueError``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

__all__ = ["KINDS", "SchemaError", "Validator", "checker", "load_schema", "problem"]

KINDS: tuple[str, ...] = (
    "conversation",
    "conversation_detail",
    "message",
    "conversation_list_response",
    "message_list_response",
)

SCHEMA_DIR = Path(__file__).parent / "schemas"

Check = Callable[[Any], "str | None"]

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default"}
)
_SUPPORTED = _ANNOTATIONS | {
    "type",
    "required",
    "properties",
    "additionalProperties",
    "minLength",
    "minimum",
    "$ref",
}
_TYPE_NAMES = ("null", "boolean", "integer", "number", "string", "array", "object")


class SchemaError(ValueError):
    """A schema uses something this subset validator does not implement."""


class _Missing:
    """Type of the sentinel for an absent property (its type joins the fast sets)."""

    __slots__ = ()


_MISSING = _Missing()


def load_schema(name: str) -> dict:
    """Return the parsed schema ``schemas/<name>.json`` next to this module."""
    return _load(SCHEMA_DIR, name)


def _load(schema_dir: Path, name: str) -> dict:
    with open(schema_dir / f"{name}.json", encoding="utf-8") as f:
        schema = json.load(f)
    if not isinstance(schema, dict):
        raise SchemaError(f"schema {name!r} is not a JSON object")
    return schema


# --------------------------------------------------------------------------
# JSON type tests (slow path; the fast path is an exact-type set lookup)


def _json_type(value: Any) -> str:
    """The JSON type name of a value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return _is_number(value)
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    return False  # unreachable: names are checked at compile time


# Exact Python types that certainly satisfy a JSON type (bool is not int here
# because type(True) is bool; integral floats go through the slow path).
_EXACT = {
    "null": (type(None),),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "array": (list,),
    "object": (dict,),
}


def _where(path: str) -> str:
    return f"{path}: " if path else ""


# --------------------------------------------------------------------------
# Compilation


class _Compiler:
    def __init__(self, schema_dir: Path) -> None:
        self.schema_dir = schema_dir

    def compile_root(self, name: str) -> Check:
        schema = _load(self.schema_dir, name)
        return self.node(schema, "", schema.get("$id", ""), (name,))

    # A compiled node is (check, fast_types): `fast_types` is a frozenset of
    # exact Python types for which the node is known to pass without calling
    # `check` (empty when the node has constraints beyond `type`).
    def node(self, schema: Any, path: str, base: str, stack: tuple[str, ...]) -> Check:
        return self._node(schema, path, base, stack)[0]

    def _node(
        self, schema: Any, path: str, base: str, stack: tuple[str, ...]
    ) -> tuple[Check, frozenset]:
        if schema is True or schema == {}:
            return (lambda value: None), frozenset()  # accepts everything
        if not isinstance(schema, dict):
            raise SchemaError(f"{path or '<root>'}: unsupported schema {schema!r}")
        unknown = set(schema) - _SUPPORTED
        if unknown:
            raise SchemaError(f"{path or '<root>'}: unsupported keywords {sorted(unknown)}")
        if "$id" in schema:
            base = urljoin(base, schema["$id"])

        parts: list[Check] = []
        if "$ref" in schema:
            parts.append(self._ref(schema["$ref"], path, base, stack))

        types = schema.get("type")
        if isinstance(types, str):
            types = [types]
        if types is not None:
            if not isinstance(types, list) or not types or any(t not in _TYPE_NAMES for t in types):
                raise SchemaError(f"{path or '<root>'}: bad type {schema['type']!r}")

        ap = schema.get("additionalProperties", True)
        if ap is not True:
            raise SchemaError(f"{path or '<root>'}: only additionalProperties: true is supported")

        min_length = schema.get("minLength")
        if min_length is not None and (type(min_length) is not int or min_length < 0):
            raise SchemaError(f"{path or '<root>'}: bad minLength {min_length!r}")
        minimum = schema.get("minimum")
        if minimum is not None and not _is_number(minimum):
            raise SchemaError(f"{path or '<root>'}: bad minimum {minimum!r}")

        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise SchemaError(f"{path or '<root>'}: bad required {required!r}")
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError(f"{path or '<root>'}: bad properties")

        type_check = self._type_check(types, path) if types is not None else None
        scalar = self._scalar_check(min_length, minimum, path)
        obj = self._object_check(required, properties, path, base, stack)

        if obj is not None and types == ["object"] and scalar is None:
            # Common root case: one closure does the type test and the members.
            parts.append(self._strict_object(obj, path))
        else:
            parts.extend(p for p in (type_check, scalar) if p is not None)
            if obj is not None:
                parts.append(self._when_object(obj))

        fast: frozenset = frozenset()
        if types is not None and not parts[1:] and parts and parts[0] is type_check:
            fast = frozenset(t for name in types for t in _EXACT[name])
        return _all_of(parts), fast

    def _ref(self, ref: Any, path: str, base: str, stack: tuple[str, ...]) -> Check:
        if not isinstance(ref, str):
            raise SchemaError(f"{path or '<root>'}: bad $ref {ref!r}")
        target = urljoin(base, ref)
        if "#" in ref or not target.endswith(".json"):
            raise SchemaError(f"{path or '<root>'}: only $ref to a sibling schema file is supported, got {ref!r}")
        name = target.rsplit("/", 1)[-1][: -len(".json")]
        if name in stack:
            raise SchemaError(f"recursive $ref {' -> '.join(stack + (name,))}")
        schema = _load(self.schema_dir, name)
        if urljoin(target, schema.get("$id", target)) != target:
            raise SchemaError(f"$ref {ref!r} resolves to {target!r} but {name}.json has $id {schema.get('$id')!r}")
        return self.node(schema, path, target, stack + (name,))

    @staticmethod
    def _type_check(types: list[str], path: str) -> Check:
        exact = frozenset(t for name in types for t in _EXACT[name])
        names = tuple(types)
        where = _where(path)
        wanted = " or ".join(types)

        def check(value: Any) -> str | None:
            if type(value) in exact:
                return None
            for name in names:
                if _matches(value, name):
                    return None
            if not path and "object" in names:
                return "record is not an object"
            return f"{where}expected {wanted}, got {_json_type(value)}"

        return check

    @staticmethod
    def _scalar_check(min_length: int | None, minimum: Any, path: str) -> Check | None:
        where = _where(path)
        if min_length is None and minimum is None:
            return None

        def check(value: Any) -> str | None:
            if min_length is not None and isinstance(value, str) and len(value) < min_length:
                if min_length == 1:
                    return f"{where}must not be empty"
                return f"{where}shorter than {min_length} characters"
            if minimum is not None and _is_number(value) and value < minimum:
                return f"{where}must be >= {minimum}"
            return None

        return check

    def _object_check(
        self,
        required: list[str],
        properties: dict,
        path: str,
        base: str,
        stack: tuple[str, ...],
    ) -> Callable[[dict], str | None] | None:
        if not required and not properties:
            return None
        req = tuple(required)
        where = _where(path)
        prefix = f"{path}." if path else ""
        props = []
        for key, sub in properties.items():
            check, fast = self._node(sub, prefix + key, base, stack)
            props.append((key, fast | {_Missing}, check))
        props_t = tuple(props)

        def check_members(value: dict) -> str | None:
            for key in req:
                if key not in value:
                    return f"{where}missing required field '{key}'"
            get = value.get
            for key, fast, check in props_t:
                member = get(key, _MISSING)
                if type(member) in fast:
                    continue
                reason = check(member)
                if reason is not None:
                    return reason
            return None

        return check_members

    @staticmethod
    def _strict_object(members: Callable[[dict], str | None], path: str) -> Check:
        where = _where(path)

        def check(value: Any) -> str | None:
            if type(value) is dict or isinstance(value, dict):
                return members(value)
            if not path:
                return "record is not an object"
            return f"{where}expected object, got {_json_type(value)}"

        return check

    @staticmethod
    def _when_object(members: Callable[[dict], str | None]) -> Check:
        def check(value: Any) -> str | None:
            if isinstance(value, dict):
                return members(value)
            return None  # `properties`/`required` ignore non-objects

        return check


def _all_of(parts: list[Check]) -> Check:
    if not parts:
        return lambda value: None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts

        def both(value: Any) -> str | None:
            reason = first(value)
            return reason if reason is not None else second(value)

        return both
    checks = tuple(parts)

    def every(value: Any) -> str | None:
        for check in checks:
            reason = check(value)
            if reason is not None:
                return reason
        return None

    return every


# --------------------------------------------------------------------------
# Public entry points


class Validator:
    """Compiles the schemas of ``schema_dir`` (default: ``syncer/schemas``) once each."""

    def __init__(self, schema_dir: Path | str | None = None) -> None:
        self._compiler = _Compiler(Path(schema_dir) if schema_dir is not None else SCHEMA_DIR)
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()

    def checker(self, kind: str) -> Check:
        """The compiled check for `kind`: ``check(record) -> reason | None``."""
        check = self._checks.get(kind)
        if check is None:
            if kind not in KINDS:
                raise ValueError(f"unknown schema kind {kind!r}; expected one of {', '.join(KINDS)}")
            with self._lock:
                check = self._checks.get(kind)
                if check is None:
                    check = self._checks[kind] = _guarded(self._compiler.compile_root(kind))
        return check

    def problem(self, kind: str, record: Any) -> str | None:
        """None if `record` is valid for `kind`, else one short reason naming the path."""
        return self.checker(kind)(record)


def _guarded(check: Check) -> Check:
    def guarded(record: Any) -> str | None:
        try:
            return check(record)
        except Exception as exc:  # pragma: no cover - defensive: never raise on data
            return f"record could not be validated ({type(exc).__name__})"

    return guarded


_default: Validator | None = None


def _shared() -> Validator:
    global _default
    if _default is None:
        _default = Validator()
    return _default


def checker(kind: str) -> Check:
    """Compiled check for `kind` from the shared Validator (bind it once in hot loops)."""
    return _shared().checker(kind)


def problem(kind: str, record: Any) -> str | None:
    """None if `record` is valid for schema `kind`, else one short human reason."""
    return _shared().checker(kind)(record)
