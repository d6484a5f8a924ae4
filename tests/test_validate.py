"""Tests for syncer.validate: the schemas are valid draft 2020-12, the contract's samples pass,
known-bad variants fail with a reason naming the right path, and -- the important part -- the
fastjsonschema-compiled checks agree with jsonschema.Draft202012Validator on generated variants."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from syncer import validate
from syncer.validate import KINDS, SchemaError, Validator, checker, load_schema, problem

# ---------------------------------------------------------------------------
# Samples, copied from the API contract (runtype-api.md)

CONVERSATION = {
    "createdAt": "2024-06-10T09:15:00Z",
    "externalParticipantId": "user_987654321",
    "externalThreadId": "thread_123456789",
    "id": "conv_abc123def456",
    "lastMessageAt": "2024-06-12T14:45:00Z",
    "messageCount": 42,
    "participantEmail": "jane.doe@example.com",
    "participantName": "Jane Doe",
    "status": "open",
    "subject": "Project Update Discussion",
    "surfaceId": "surface_001",
    "timezone": "America/New_York",
    "updatedAt": "2024-06-12T14:50:00Z",
}

# "The list fields plus context (object), participantMetadata (object) and surface ({id, name, type})."
CONVERSATION_DETAIL = {
    **CONVERSATION,
    "context": {"locale": "en-US", "plan": "pro"},
    "participantMetadata": {"tier": "gold"},
    "surface": {"id": "surface_001", "name": "Website chat", "type": "webchat"},
}

MESSAGE = {
    "content": "Hello, how can I assist you today?",
    "conversationId": "conv_9f8b7c6d5e4a3b2c1d0e",
    "createdAt": "2024-06-10T15:22:30Z",
    "direction": "inbound",
    "externalMessageId": "msg_ext_1234567890",
    "flowStepResultId": "stepres_abcdef123456",
    "id": "msg_1a2b3c4d5e6f7g8h9i0j",
    "metadata": {"platform": "webchat", "priority": "normal"},
    "role": "user",
}

CONVERSATION_LIST_RESPONSE = {
    "data": [CONVERSATION],
    "pagination": {
        "currentOffset": 0,
        "hasMore": True,
        "hasPrev": False,
        "limit": 50,
        "nextCursor": "cursor_abcdef123456",
        "prevCursor": None,
        "currentPage": 1,
        "totalCount": 120,
        "totalPages": 3,
    },
}

MESSAGE_LIST_RESPONSE = {"data": [MESSAGE], "totalCount": 1}

SAMPLES = {
    "conversation": CONVERSATION,
    "conversation_detail": CONVERSATION_DETAIL,
    "message": MESSAGE,
    "conversation_list_response": CONVERSATION_LIST_RESPONSE,
    "message_list_response": MESSAGE_LIST_RESPONSE,
}

# ---------------------------------------------------------------------------
# The reference implementation

SCHEMAS = {kind: load_schema(kind) for kind in KINDS}
REGISTRY = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)
REFERENCE = {kind: Draft202012Validator(SCHEMAS[kind], registry=REGISTRY) for kind in KINDS}


def _locations(kind, record):
    """Where jsonschema finds errors: {("at", path)} and {("required", path, key)}."""
    locs = set()
    for error in REFERENCE[kind].iter_errors(record):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            for key in error.validator_value:
                if isinstance(error.instance, dict) and key not in error.instance:
                    locs.add(("required", path, key))
        else:
            locs.add(("at", path))
    return locs


_REQUIRED_RE = re.compile(r"^(?:(?P<path>.+): )?missing required field '(?P<key>[^']+)'$")
_AT_RE = re.compile(r"^(?P<path>[^ :]+): \S")


def _our_location(reason):
    if reason == "record is not an object":
        return ("at", "")
    m = _REQUIRED_RE.match(reason)
    if m:
        return ("required", m["path"] or "", m["key"])
    m = _AT_RE.match(reason)
    assert m, f"reason does not name a path: {reason!r}"
    return ("at", m["path"])


def assert_agrees(kind, record):
    expected_valid = REFERENCE[kind].is_valid(record)
    reason = problem(kind, record)
    assert (reason is None) == expected_valid, (kind, record, reason)
    if reason is not None:
        assert isinstance(reason, str) and "\n" not in reason and len(reason) < 120, reason
        assert _our_location(reason) in _locations(kind, record), (reason, record)
    return expected_valid


# ---------------------------------------------------------------------------
# Schema files


def test_schema_files_are_exactly_the_kinds():
    names = sorted(p.stem for p in validate.SCHEMA_DIR.glob("*.json"))
    assert names == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_valid_draft_2020_12(kind):
    schema = SCHEMAS[kind]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{kind}.json")
    assert schema["title"] and schema["description"]
    assert schema.get("additionalProperties") is True


def test_load_schema_reads_the_file():
    path = validate.SCHEMA_DIR / "message.json"
    assert load_schema("message") == json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# Samples and hand-written variants


@pytest.mark.parametrize("kind", KINDS)
def test_contract_samples_are_valid(kind):
    assert problem(kind, SAMPLES[kind]) is None
    assert REFERENCE[kind].is_valid(SAMPLES[kind])


@pytest.mark.parametrize("kind", ["conversation", "conversation_detail", "message"])
def test_unknown_fields_and_nulls_are_valid(kind):
    record = dict(SAMPLES[kind], brandNewField={"nested": [1, 2]}, anotherOne=None)
    assert problem(kind, record) is None
    nullable = {
        "conversation": ["externalParticipantId", "externalThreadId", "lastMessageAt",
                         "participantEmail", "participantName", "subject", "timezone", "surfaceId"],
        "conversation_detail": ["subject", "context", "participantMetadata", "surface"],
        "message": ["direction", "externalMessageId", "flowStepResultId", "metadata"],
    }[kind]
    record.update({key: None for key in nullable})
    assert problem(kind, record) is None
    for key in nullable:
        record.pop(key)
    assert problem(kind, record) is None
    assert_agrees(kind, record)


def test_integral_float_is_an_integer():
    assert problem("conversation", dict(CONVERSATION, messageCount=3.0)) is None
    assert problem("conversation", dict(CONVERSATION, messageCount=0)) is None
    assert problem("conversation", dict(CONVERSATION, messageCount=-0.0)) is None


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


INVALID = [
    ("conversation", _without(CONVERSATION, "id"), "missing required field 'id'"),
    ("conversation", dict(CONVERSATION, id=""), "id: must not be empty"),
    ("conversation", dict(CONVERSATION, id=123), "id: expected string, got integer"),
    ("conversation", dict(CONVERSATION, messageCount="3"), "messageCount: expected integer, got string"),
    ("conversation", dict(CONVERSATION, messageCount=-1), "messageCount: must be >= 0"),
    ("conversation", dict(CONVERSATION, messageCount=2.5), "messageCount: expected integer, got number"),
    ("conversation", dict(CONVERSATION, messageCount=True), "messageCount: expected integer, got boolean"),
    ("conversation", dict(CONVERSATION, messageCount=None), "messageCount: expected integer, got null"),
    ("conversation", _without(CONVERSATION, "messageCount"), "missing required field 'messageCount'"),
    ("conversation", dict(CONVERSATION, status=None), "status: expected string, got null"),
    ("conversation", dict(CONVERSATION, subject=7), "subject: expected string or null, got integer"),
    ("conversation", _without(CONVERSATION, "updatedAt"), "missing required field 'updatedAt'"),
    ("conversation", "conv_1", "record is not an object"),
    ("conversation", [CONVERSATION], "record is not an object"),
    ("conversation", None, "record is not an object"),
    ("conversation", 42, "record is not an object"),
    ("conversation_detail", _without(CONVERSATION_DETAIL, "id"), "missing required field 'id'"),
    ("conversation_detail", dict(CONVERSATION_DETAIL, messageCount=-1), "messageCount: must be >= 0"),
    ("conversation_detail", dict(CONVERSATION_DETAIL, surface=[]), "surface: expected object or null, got array"),
    ("conversation_detail", dict(CONVERSATION_DETAIL, surface={"id": 1}), "surface.id: expected string, got integer"),
    ("conversation_detail", dict(CONVERSATION_DETAIL, context="x"), "context: expected object or null, got string"),
    ("conversation_detail", dict(CONVERSATION_DETAIL, participantMetadata=[]),
     "participantMetadata: expected object or null, got array"),
    ("conversation_detail", [], "record is not an object"),
    ("message", _without(MESSAGE, "content"), "missing required field 'content'"),
    ("message", dict(MESSAGE, id=""), "id: must not be empty"),
    ("message", dict(MESSAGE, id=5), "id: expected string, got integer"),
    ("message", dict(MESSAGE, metadata="x"), "metadata: expected object or null, got string"),
    ("message", dict(MESSAGE, role=None), "role: expected string, got null"),
    ("message", dict(MESSAGE, direction=1), "direction: expected string or null, got integer"),
    ("message", None, "record is not an object"),
    ("conversation_list_response", {"data": []}, "missing required field 'pagination'"),
    ("conversation_list_response", {"pagination": {}}, "missing required field 'data'"),
    ("conversation_list_response", {"data": {}, "pagination": {}}, "data: expected array, got object"),
    ("conversation_list_response", {"data": [], "pagination": None}, "pagination: expected object, got null"),
    ("conversation_list_response", {"data": [], "pagination": {"hasMore": "true"}},
     "pagination.hasMore: expected boolean, got string"),
    ("conversation_list_response", {"data": [], "pagination": {"nextCursor": 5}},
     "pagination.nextCursor: expected string or null, got integer"),
    ("conversation_list_response", {"data": [], "pagination": {"totalCount": 1.5}},
     "pagination.totalCount: expected integer, got number"),
    ("conversation_list_response", {"data": [], "pagination": {"totalCount": -1}},
     "pagination.totalCount: must be >= 0"),
    ("conversation_list_response", [], "record is not an object"),
    ("message_list_response", {"totalCount": 0}, "missing required field 'data'"),
    ("message_list_response", {"data": None}, "data: expected array, got null"),
    ("message_list_response", {"data": [], "totalCount": "1"}, "totalCount: expected integer, got string"),
    ("message_list_response", {"data": [], "totalCount": False}, "totalCount: expected integer, got boolean"),
]


@pytest.mark.parametrize("kind,record,reason", INVALID)
def test_invalid_variants(kind, record, reason):
    assert problem(kind, record) == reason
    assert not REFERENCE[kind].is_valid(record)
    assert_agrees(kind, record)


def test_envelope_does_not_validate_items():
    page = {"data": [None, 1, "x", {"id": ""}], "pagination": {}}
    assert problem("conversation_list_response", page) is None
    assert problem("message_list_response", {"data": [[], {}]}) is None


# ---------------------------------------------------------------------------
# Robustness: never raises on any value


def _deep(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("kind", KINDS)
def test_never_raises(kind):
    sample = SAMPLES[kind]
    deep = _deep(100_000)
    weird = [
        None, True, 0, 1.5, float("nan"), float("inf"), "", "x" * 5_000_000, [], {}, deep,
        {"data": deep}, (), set(), b"bytes", object(), {1: 2, None: 3, (1, 2): 4},
    ]
    for value in weird:
        assert problem(kind, value) is None or isinstance(problem(kind, value), str)
        for key in list(sample) + ["surface", "pagination", "metadata", "unknown"]:
            record = dict(sample)
            record[key] = value
            reason = problem(kind, record)
            assert reason is None or isinstance(reason, str)
    huge = dict(sample, messageCount=-(10**5000), totalCount=10**5000, id="y" * 5_000_000)
    assert isinstance(problem(kind, huge), str) or problem(kind, huge) is None


def test_huge_negative_integer_reason_does_not_format_the_number():
    assert problem("conversation", dict(CONVERSATION, messageCount=-(10**5000))) == "messageCount: must be >= 0"


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        problem("conversations", {})


def test_validator_instances_and_checker():
    v = Validator()
    check = v.checker("message")
    assert check is v.checker("message")  # compiled once
    assert check(MESSAGE) is None
    assert v.problem("message", {}) == "missing required field 'id'"
    assert checker("conversation")(CONVERSATION) is None


# ---------------------------------------------------------------------------
# messageCount fits SQLite's integer


@pytest.mark.parametrize("kind", ["conversation", "conversation_detail"])
def test_message_count_beyond_a_sqlite_integer_is_valid(kind):
    """Valid JSON for the API; the transform leaves the column empty (see test_real_api)."""
    from syncer.transform import ANOMALY, conversation_row
    sample = SAMPLES[kind]
    assert problem(kind, dict(sample, messageCount=2**63 - 1)) is None
    assert conversation_row(dict(sample, messageCount=2**63 - 1))["messageCount"] == 2**63 - 1
    for count in (2**63, 10**40):
        record = dict(sample, messageCount=count)
        assert problem(kind, record) is None
        assert_agrees(kind, record)
        row = conversation_row(record)
        assert row["messageCount"] is None and str(count) in row["_raw"] and ANOMALY in row


# ---------------------------------------------------------------------------
# How the schemas are found and compiled


def test_the_package_schemas_are_the_published_schemas():
    published = validate.SCHEMA_DIR.parent.parent / "schemas"
    for kind in KINDS:
        assert (published / f"{kind}.json").read_bytes() == (validate.SCHEMA_DIR / f"{kind}.json").read_bytes()


def _write(tmp_path, name, schema):
    (tmp_path / f"{name}.json").write_text(json.dumps(schema), encoding="utf-8")


BASE = "https://syncer.invalid/schemas/"


@pytest.mark.parametrize(
    "schema",
    [
        # draft-07 code would ignore the keywords beside a $ref, which 2020-12 applies
        {"$id": BASE + "message.json", "$ref": "conversation.json", "properties": {"id": {"type": "string"}}},
        # 2020-12 keywords the draft-07 code generator does not know
        {"type": "array", "prefixItems": [{"type": "string"}]},
        {"type": "object", "unevaluatedProperties": False},
        {"type": "objekt"},
        # a $ref anywhere but to one of our files is refused, never fetched
        {"$id": BASE + "message.json", "allOf": [{"$ref": "https://example.com/schemas/conversation.json"}]},
        {"$id": BASE + "message.json", "allOf": [{"$ref": "file:///etc/passwd"}]},
        {"$id": BASE + "message.json", "allOf": [{"$ref": "nonexistent.json"}]},
    ],
)
def test_schemas_that_cannot_be_checked_faithfully_raise(tmp_path, schema):
    _write(tmp_path, "conversation", {"$id": BASE + "conversation.json", "type": "object"})
    _write(tmp_path, "message", schema)
    with pytest.raises(SchemaError):
        Validator(tmp_path).checker("message")


def test_ref_must_match_the_target_id(tmp_path):
    _write(tmp_path, "conversation", {"$id": "https://elsewhere.invalid/conversation.json", "type": "object"})
    _write(tmp_path, "conversation_detail",
           {"$id": BASE + "conversation_detail.json", "allOf": [{"$ref": "conversation.json"}]})
    with pytest.raises(SchemaError):
        Validator(tmp_path).checker("conversation_detail")


def test_ref_resolves_from_the_schema_directory(tmp_path):
    _write(tmp_path, "conversation", {"$id": BASE + "conversation.json", "required": ["x"]})
    _write(tmp_path, "conversation_detail",
           {"$id": BASE + "conversation_detail.json", "allOf": [{"$ref": "conversation.json"}]})
    check = Validator(tmp_path).checker("conversation_detail")
    assert check({"x": 1}) is None
    assert check({}) == "missing required field 'x'"


def test_keywords_beyond_ours_compile_and_agree(tmp_path):
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": BASE + "message.json",
              "type": "object", "additionalProperties": False,
              "properties": {"id": {"type": "string", "pattern": "^c", "default": "c0"},
                             "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}
    _write(tmp_path, "message", schema)
    check = Validator(tmp_path).checker("message")
    reference = Draft202012Validator(schema)
    record = {}
    assert check(record) is None and record == {}  # defaults are never filled in
    for record in ({"id": "c1", "tags": ["a"]}, {"id": "x"}, {"tags": ["a", 1]}, {"tags": ["a"] * 3},
                   {"other": 1}):
        reason = check(record)
        assert (reason is None) == reference.is_valid(record), (record, reason)
        assert reason is None or ("\n" not in reason and len(reason) < 120)


def test_recursion_too_deep_for_a_recursive_schema_is_a_reason(tmp_path):
    _write(tmp_path, "message", {"$id": BASE + "message.json", "$ref": "#/$defs/node",
                                 "$defs": {"node": {"type": "object",
                                                    "properties": {"child": {"$ref": "#/$defs/node"}}}}})
    check = Validator(tmp_path).checker("message")
    deep = leaf = {}
    for _ in range(100_000):
        leaf["child"] = {}
        leaf = leaf["child"]
    assert check({"child": {"child": {}}}) is None
    assert check(deep) == "record is nested too deeply to validate"


def test_deep_values_and_lone_surrogates_in_real_records():
    deep = _deep(100_000)
    nested = {}
    for _ in range(100_000):
        nested = {"x": nested}
    assert problem("message", dict(MESSAGE, metadata=nested, extra=deep)) is None
    assert problem("conversation_detail", dict(CONVERSATION_DETAIL, context=nested)) is None
    assert problem("conversation_detail", dict(CONVERSATION_DETAIL, surface=nested)) is None
    assert problem("conversation_detail", dict(CONVERSATION_DETAIL, surface={"id": deep})) == \
        "surface.id: expected string, got array"
    lone = "\ud800 half a pair \udfff"
    assert problem("message", dict(MESSAGE, id=lone, content=lone)) is None
    assert problem("conversation", dict(CONVERSATION, id="\ud800")) is None
    assert problem("conversation", dict(CONVERSATION, subject=["\udc00"])) == \
        "subject: expected string or null, got array"


# ---------------------------------------------------------------------------
# Differential testing against jsonschema


POOL = [
    None, True, False, 0, 1, -1, 3, 3.0, -0.0, 2.5, -2.5, 1e300, -1e300, float("inf"), float("-inf"),
    float("nan"), 10**40, -(10**40), "", "x", "3", "conv_1", "2024-06-10T09:15:00Z", "null",
    [], [1, "a"], {}, {"id": "s"}, {"id": "s", "name": "n", "type": "t"}, {"a": {"b": [None]}},
]


def _all_keys(schema):
    """Property names (recursively through $ref) and nested object property names."""
    keys = dict()
    stack = [schema]
    while stack:
        s = stack.pop()
        if "$ref" in s:
            stack.append(SCHEMAS[s["$ref"].removesuffix(".json")])
        for key, sub in s.get("properties", {}).items():
            keys.setdefault(key, set()).update(sub.get("properties", {}))
        keys.update({k: keys.get(k, set()) for k in s.get("required", [])})
    return keys


def _mutate(rng, record, keys):
    if rng.random() < 0.04:
        return rng.choice(POOL)
    record = copy.deepcopy(record)
    for _ in range(rng.randint(1, 3)):
        if not isinstance(record, dict):
            break
        key = rng.choice(sorted(keys))
        op = rng.random()
        if op < 0.25:
            record.pop(key, None)
        elif op < 0.6:
            record[key] = copy.deepcopy(rng.choice(POOL))
        elif op < 0.7:
            record[f"extra_{rng.randint(0, 9)}"] = copy.deepcopy(rng.choice(POOL))
        else:
            nested = keys[key]
            inner = record.get(key)
            if not isinstance(inner, dict):
                inner = record[key] = {}
            sub = rng.choice(sorted(nested) or ["anything"])
            if rng.random() < 0.3:
                inner.pop(sub, None)
            else:
                inner[sub] = copy.deepcopy(rng.choice(POOL))
    return record


@pytest.mark.parametrize("kind", KINDS)
def test_differential_seeded_mutations(kind):
    rng = random.Random(f"validate-{kind}")
    keys = _all_keys(SCHEMAS[kind])
    valid = invalid = 0
    for _ in range(600):
        record = _mutate(rng, SAMPLES[kind], keys)
        if assert_agrees(kind, record):
            valid += 1
        else:
            invalid += 1
    assert valid >= 60 and invalid >= 60, (valid, invalid)  # both sides exercised


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([3.0, -0.0, -1.0, 0.5]),
    st.text(max_size=4),
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)


def _record_strategy(kind):
    keys = _all_keys(SCHEMAS[kind])
    sample = SAMPLES[kind]

    def value_for(key):
        nested = keys[key]
        options = [_json_values]
        if key in sample:
            options.append(st.just(copy.deepcopy(sample[key])))
        if nested:
            options.append(st.fixed_dictionaries({}, optional={k: _json_values for k in sorted(nested)}))
        return st.one_of(options)

    record = st.fixed_dictionaries(
        {k: st.just(v) for k, v in sample.items() if k not in keys},
        optional={k: value_for(k) for k in sorted(keys)},
    )
    return st.one_of(record, record, record, _json_values)


@pytest.mark.parametrize("kind", KINDS)
def test_differential_hypothesis(kind):
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_record_strategy(kind))
    def check(record):
        assert_agrees(kind, record)

    check()
