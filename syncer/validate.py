"""Payload validation against the JSON Schemas in ``syncer/schemas/``, compiled by fastjsonschema.

fastjsonschema turns each schema into plain Python code once; a conversation record then
validates in a few microseconds, which a 400,000-record sync needs (``jsonschema`` takes
about 200 µs). What this module adds is what the library does not know:

* ``$ref`` between our schema files resolves offline, from the files next to this module
  (their ``$id``s are ``https://syncer.invalid/schemas/<name>.json``); any other reference
  is refused when the schema is compiled, never fetched;
* fastjsonschema implements draft-07, where a ``$ref`` hides its sibling keywords, while our
  schemas say draft 2020-12, where it does not: a schema with a ``$ref`` beside validation
  keywords (write ``allOf: [{"$ref": ...}]`` instead) or with a 2020-12 keyword draft-07
  ignores is refused at compile time rather than half-checked;
* the first failure becomes one short line naming the field, e.g. ``"messageCount: must be
  >= 0"``, ``"missing required field 'id'"`` or ``"record is not an object"``;
* a check never raises on a JSON value, however deep or odd.

``tests/test_validate.py`` proves that a check accepts exactly what
``jsonschema.Draft202012Validator`` accepts; ``jsonschema`` is a test dependency only.

Public API: ``KINDS``, ``SCHEMA_DIR``, ``load_schema(name)``, ``checker(kind)`` (bind once in
hot loops), ``problem(kind, record)``, and ``Validator(schema_dir)`` for schemas elsewhere.
An unknown kind is a programming error (``ValueError``); a schema this module cannot check
faithfully raises ``SchemaError``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

import fastjsonschema

__all__ = ["KINDS", "SCHEMA_DIR", "SchemaError", "Validator", "checker", "load_schema", "problem"]

KINDS: tuple[str, ...] = (
    "conversation",
    "conversation_detail",
    "message",
    "conversation_list_response",
    "message_list_response",
)

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_BASE = "https://syncer.invalid/schemas/"

Check = Callable[[Any], "str | None"]

# Keywords of draft 2020-12 that fastjsonschema's draft-07 code generator would skip silently.
_IGNORED_BY_DRAFT7 = frozenset({
    "prefixItems", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
    "unevaluatedItems", "minContains", "maxContains", "$dynamicRef", "$dynamicAnchor",
    "$recursiveRef", "$recursiveAnchor", "$anchor",
})
# Keywords that do not validate, so they may stand beside a $ref.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples", "default"})
_DEFINITIONS = frozenset({"$defs", "definitions"})


class SchemaError(ValueError):
    """A schema that cannot be compiled, or not checked as draft 2020-12 means it."""


def load_schema(name: str) -> dict:
    """Return the parsed schema ``schemas/<name>.json`` next to this module."""
    return _load(SCHEMA_DIR, name)


def _load(schema_dir: Path, name: str) -> dict:
    with open(schema_dir / f"{name}.json", encoding="utf-8") as f:
        schema = json.load(f)
    if not isinstance(schema, dict):
        raise SchemaError(f"schema {name!r} is not a JSON object")
    _refuse_draft_differences(schema, name)
    return schema


def _refuse_draft_differences(schema: Any, where: str) -> None:
    if isinstance(schema, list):
        for item in schema:
            _refuse_draft_differences(item, where)
        return
    if not isinstance(schema, dict):
        return
    beside_ref = set(schema) - _ANNOTATIONS - _DEFINITIONS - {"$ref"} if "$ref" in schema else set()
    if beside_ref:
        raise SchemaError(f"{where}: $ref beside {sorted(beside_ref)} would hide them; "
                          "use allOf: [{\"$ref\": ...}]")
    unsupported = _IGNORED_BY_DRAFT7 & set(schema)
    if unsupported:
        raise SchemaError(f"{where}: unsupported keywords {sorted(unsupported)}")
    for key, value in schema.items():
        if key not in _ANNOTATIONS:
            _refuse_draft_differences(value, where)


def _json_type(value: Any) -> str:
    """The JSON type name of a value, for reasons."""
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


def _reason(error: fastjsonschema.JsonSchemaValueException) -> str:
    """One line naming the field, from fastjsonschema's first error."""
    name = error.name or "data"
    path = name[5:] if name.startswith("data.") else name[4:] if name.startswith("data") else name
    where = f"{path}: " if path else ""
    rule, limit, value = error.rule, error.rule_definition, error.value
    if rule == "type":
        wanted = " or ".join(limit) if isinstance(limit, list) else limit
        if not path and wanted == "object":
            return "record is not an object"
        return f"{where or 'record: '}expected {wanted}, got {_json_type(value)}"
    if rule == "required" and isinstance(value, dict):
        missing = next((key for key in limit if key not in value), "?")
        return f"{where}missing required field '{missing}'"
    if rule == "minLength":
        return f"{where}must not be empty" if limit == 1 else f"{where}shorter than {limit} characters"
    if rule == "minimum":
        return f"{where}must be >= {limit}"
    if rule == "maximum":
        return f"{where}must be <= {limit}"
    message = error.message.split("\n", 1)[0]
    return where + message.removeprefix(name).strip()


class Validator:
    """Compiles the schemas of ``schema_dir`` (default: ``syncer/schemas``) once each."""

    def __init__(self, schema_dir: Path | str | None = None) -> None:
        self._dir = Path(schema_dir) if schema_dir is not None else SCHEMA_DIR
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
                    check = self._checks[kind] = self._compile(kind)
        return check

    def problem(self, kind: str, record: Any) -> str | None:
        """None if `record` is valid for `kind`, else one short reason naming the field."""
        return self.checker(kind)(record)

    def _compile(self, kind: str) -> Check:
        handlers = {scheme: self._fetch for scheme in ("http", "https", "file")}
        try:
            # use_default=False: validating must never fill defaults into the record
            validate = fastjsonschema.compile(_load(self._dir, kind), handlers=handlers,
                                              use_default=False, use_formats=False)
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            raise SchemaError(f"schema {kind!r}: {exc}") from exc
        invalid = fastjsonschema.JsonSchemaValueException

        def check(record: Any) -> str | None:
            try:
                validate(record)
            except invalid as error:
                return _reason(error)
            except RecursionError:
                return "record is nested too deeply to validate"
            return None

        return check

    def _fetch(self, uri: str) -> dict:
        """Resolve a $ref to one of our schema files; nothing is fetched from anywhere."""
        name = uri.removeprefix(SCHEMA_BASE).removesuffix(".json")
        if not uri.startswith(SCHEMA_BASE) or not uri.endswith(".json") or name not in KINDS:
            raise SchemaError(f"$ref to {uri!r}: only {SCHEMA_BASE}<kind>.json resolves")
        try:
            schema = _load(self._dir, name)
        except OSError as exc:
            raise SchemaError(f"$ref to {uri!r}: {exc}") from exc
        if schema.get("$id") != uri:
            raise SchemaError(f"$ref to {uri!r} but {name}.json has $id {schema.get('$id')!r}")
        return schema


_shared = Validator()


def checker(kind: str) -> Check:
    """Compiled check for `kind` (bind it once in hot loops)."""
    return _shared.checker(kind)


def problem(kind: str, record: Any) -> str | None:
    """None if `record` is valid for schema `kind`, else one short human reason."""
    return _shared.checker(kind)(record)
