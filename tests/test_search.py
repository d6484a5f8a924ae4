"""`syncer search`: results equal a direct scan of the data, every filter, ranking, formats,
on every path: every match scored, only the newest scored (thresholds made small here), and
filters that narrow the scope or are applied after ranking."""
import functools
import sqlite3
import json
import unicodedata

import pytest
from click.testing import CliRunner
from support import build_mirror, dict_rows, read_store

from syncer.cli import main
from syncer.query import Filters, QueryError, Scoring, _desc, fts_phrases, search
from syncer.store import Store

SPECIAL = [
    "Ça coûte 19,99 € — naïve QUESTION: C++/CLI or C#? ZÜRICH İstanbul",
    'say "hello" -minus NEAR(a b) AND OR NOT * ^ : col:umn',
    "Οδυσσέας wrote: ありがとう！東京へ 🙂 e-mail me at o'brien@example.com",
    "cafe vs café vs CAFÉ vs Café — résumé, naive, Nguyễn Văn",
]
WORDS = [
    "refund", "REFUND", "café", "cafe", "CAFÉ", "naïve", "naive", "résumé", "Straße",
    "strasse", "Zürich", "zurich", "São", "München", "東京", "ありがとう", "返金", "مرحبا", "don't",
    "C++", "C#", "Node.js", "e-mail", "follow-up", '"urgent"', "$19.99", "#1234", "50%", '"',
    "-", "NEAR", "AND", "OR", "NOT", "(again)", "[draft]", "it's", "Ελύτης", "Nguyễn",
    "refund billing", "thanks hello", "İstanbul", "col:umn", "*", "o'brien", "José", "jane",
]


def _special_texts(upstream):
    ids = upstream.conversation_ids()
    for n, text in enumerate(SPECIAL):
        upstream.add_message(ids[n], text, createdAt=f"2024-05-2{n}T10:00:00Z")
    upstream.add_message(ids[10], "a refund for a conversation deleted later")
    upstream.create_conversation(subject="Zebra crossing — Ünïcode", participantName="Zoë Q",
                                 participantEmail="zoe.q@example.com")
    upstream.add_message(ids[11], "a refund the system noted", role="system")
    # names that SQLite's simple case folding and Python's casefold fold apart (ß, Mtavruli)
    for name, email in (("Jürgen Straße", "jurgen@example.de"), ("ᲒᲘᲝᲠᲒᲘ Ო", None),
                        ("Al", "al@x.io")):
        cid = upstream.create_conversation(subject="Where is my refund?", participantName=name,
                                           participantEmail=email, surfaceId="surface_003")["id"]
        upstream.add_message(cid, f"refund for {name}", createdAt="2024-06-01T10:00:00Z")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("search") / "mirror.db", seed=3,
                        conversations=150, prepare=_special_texts, delete=10)


@pytest.fixture(scope="module")
def store(db):
    store = Store.open_readonly(db)
    yield store
    store.close()


rows = dict_rows


# -- a direct scan, tokenizing like FTS5's unicode61 (remove_diacritics=1) ---------------------
def fold(ch: str) -> str:
    """unicode61: a Latin letter with one diacritic loses it; then lower case (σ for ς)."""
    d = unicodedata.normalize("NFD", ch)
    if len(d) == 2 and d[0].isascii() and unicodedata.combining(d[1]):
        ch = d[0]
    low = ch.lower()
    return {"ς": "σ"}.get(low, low if len(low) == 1 else ch)


def tokens(text: str | None) -> list[str]:
    """Runs of letters, digits and private-use characters (categories L*, N*, Co)."""
    out, word = [], []
    for ch in text or "":
        if unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Co":
            word.append(fold(ch))
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


def has_phrase(toks: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(toks[i:i + n] == phrase for i in range(len(toks) - n + 1))


def matches(texts: list[str | None], query: str) -> bool:
    """Every whitespace-separated word is a phrase found within one of `texts`; words without
    tokens are ignored (as FTS5 ignores an empty phrase) but a query of only those finds nothing."""
    phrases = [p for p in (tokens(w) for w in query.split()) if p]
    return bool(phrases) and all(any(has_phrase(tokens(t), p) for t in texts) for p in phrases)


def scan_messages(db, query):
    return {r["id"] for r in rows(db, "SELECT m.id, m.content FROM messages m JOIN "
                                      "conversations c ON c.id = m.conversationId "
                                      "WHERE c._deleted_at IS NULL")
            if matches([r["content"]], query)}


def scan_conversations(db, query):
    return {r["id"] for r in rows(db, "SELECT * FROM conversations WHERE _deleted_at IS NULL")
            if matches([r["subject"], r["participantName"], r["participantEmail"]], query)}


def found(store, query, **kw):
    return search(store, query, kw.pop("filters", Filters()), limit=100_000, **kw)


# The paths a search can take. "capped": more than 5 matches in scope and only the newest 3
# are scored; "after ranking": no filter narrows the scope (only an empty list would), so every
# filter is applied to the ranked matches.
SCORINGS = {
    "default": Scoring(),
    "exact": Scoring(exact=True),
    "capped": Scoring(exact_up_to=5, newest_scored=3),
    "capped, filters after ranking": Scoring(exact_up_to=5, newest_scored=3, drive_up_to=0),
}


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("query", WORDS)
def test_plain_words_equal_a_scan(db, store, query, scoring):
    hits = found(store, query, scoring=SCORINGS[scoring])
    assert {h["id"] for h in hits if h["kind"] == "message"} == scan_messages(db, query)
    assert {h["id"] for h in hits if h["kind"] == "conversation"} == scan_conversations(db, query)


def test_the_sample_finds_things(db):
    assert all(scan_messages(db, w) for w in ("café", "don't", "C++", "東京", "AND", "Straße"))
    assert scan_messages(db, "İstanbul") and scan_messages(db, "ZÜRICH")
    assert scan_conversations(db, "Ünïcode") and scan_messages(db, "NEAR")
    assert not scan_messages(db, "strasse") and not scan_messages(db, "-")


def test_user_text_is_quoted_as_phrases():
    assert fts_phrases('don\'t C++ " NEAR -x') == '"don\'t" "C++" """" "NEAR" "-x"'
    assert fts_phrases("  ") == ""


def test_ranked_by_bm25_then_newest(store):
    hits = found(store, "refund")
    keys = [(h["rank"], h["createdAt"]) for h in hits]
    assert keys == sorted(keys, key=lambda k: (k[0], [-ord(c) for c in k[1]]))
    assert len({h["rank"] for h in hits}) < len(hits)  # there are ties to break
    assert [h["id"] for h in found(store, "refund")] == [h["id"] for h in hits]


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("filters", [Filters(), Filters(role=("user",))])
def test_limit_and_offset_page_through_the_same_order(store, scoring, filters):
    everything = [h["id"] for h in found(store, "refund", filters=filters,
                                         scoring=SCORINGS[scoring])]
    pages = [h["id"] for n in range(0, 56, 7)
             for h in search(store, "refund", filters, limit=7, offset=n,
                             scoring=SCORINGS[scoring])]
    assert pages == everything[:56] and len(everything) > 56


def scan_matches(db, table, query, texts):
    """(rowid, kind, id, time, deleted) of every row of `table` matching, deleted or not."""
    kind, time = ("message", "createdAt") if table == "messages" else ("conversation",
                                                                      "updatedAt")
    sql = ("SELECT m.rowid, m.*, c._deleted_at FROM messages m JOIN conversations c "
           "ON c.id = m.conversationId" if table == "messages"
           else "SELECT rowid, * FROM conversations")
    return [(r["rowid"], kind, r["id"], r[time], r["_deleted_at"])
            for r in rows(db, sql) if matches([r[t] for t in texts], query)]


def capped_order(db, store, query, keep, in_scope, exact_up_to, newest_scored):
    """The documented order, built from a scan and the exact path's ranks: per table, the
    newest `newest_scored` matches in scope (when more than `exact_up_to`) by rank, newest
    first on ties, then id; then the rest, last stored first; tables merged by that key, the
    unscored alternately."""
    ranks = {(h["kind"], h["id"]): h["rank"] for h in found(
        store, query, filters=Filters(include_deleted=True), scoring=Scoring(exact=True))}
    keyed = []
    for table, texts in (("messages", ["content"]),
                         ("conversations", ["subject", "participantName", "participantEmail"])):
        hits = sorted((m for m in scan_matches(db, table, query, texts) if in_scope(m)),
                      reverse=True)
        scored, rest = (hits[:newest_scored], hits[newest_scored:]) \
            if len(hits) > exact_up_to else (hits, [])
        keyed += [((0, ranks[m[1:3]], _desc(m[3]), m[2]), m[1:3]) for m in scored if keep(m)]
        keyed += [((1, n, m[1]), m[1:3]) for n, m in enumerate(m for m in rest if keep(m))]
    return [kind_id for _, kind_id in sorted(keyed)]


@pytest.mark.parametrize("case", ["no filter", "role, after ranking", "role, in scope",
                                  "since, in scope", "surface, in scope",
                                  "participant and role, in scope"])
def test_capped_order_is_the_newest_scored_then_the_rest(db, store, case):
    """A filter that narrows the scope decides which matches are the newest scored; one that
    does not (drive_up_to=0) is applied to the ranked matches."""
    live = lambda m: not m[4]  # noqa: E731
    since = "2024-01-01T00:00:00.000000Z"
    user = lambda m: m[1] == "message" and m[2] in users(db)  # noqa: E731
    emailed = conversations_where(db, "json_extract(surface, '$.type') = 'email'")
    joes = conversations_where(db, "participantEmail LIKE '%example.com%'")
    of = lambda m, ids: (m[2] if m[1] == "conversation" else conversation_of(db, m[2])) in ids  # noqa: E731
    filters, keep, in_scope, drive = {
        "no filter": (Filters(), live, lambda m: True, 10_000),
        "role, after ranking": (Filters(role=("user",)), lambda m: live(m) and user(m),
                                lambda m: True, 0),
        "role, in scope": (Filters(role=("user",)), lambda m: live(m) and user(m), user,
                           10_000),
        "since, in scope": (Filters(since=since), lambda m: live(m) and m[3] >= since,
                            lambda m: m[3] >= since, 10_000),
        "surface, in scope": (Filters(surface=("email",)), lambda m: live(m) and of(m, emailed),
                              lambda m: of(m, emailed), 10_000),
        "participant and role, in scope": (  # few conversations: the participant's list
            Filters(participant="EXAMPLE.com", role=("user",)),
            lambda m: live(m) and user(m) and of(m, joes), lambda m: user(m) and of(m, joes),
            10_000),
    }[case]
    got = [(h["kind"], h["id"]) for h in search(
        store, "refund", filters, limit=100_000,
        scoring=Scoring(exact_up_to=5, newest_scored=3, drive_up_to=drive))]
    want = capped_order(db, store, "refund", keep, in_scope, 5, 3)
    assert got == want and len(want) > 20


def conversations_where(db, condition):
    return {r["id"] for r in rows(db, f"SELECT id FROM conversations WHERE {condition}")}


def conversation_of(db, message_id):
    return _parents(db)[message_id]


@functools.lru_cache
def _parents(db):
    return {r["id"]: r["conversationId"] for r in rows(db, "SELECT id, conversationId FROM messages")}


def users(db):
    return {r["id"] for r in rows(db, "SELECT id FROM messages WHERE role = 'user'")}


def test_the_threshold_is_the_number_of_matches_in_scope(db, store):
    """Up to `exact_up_to` matches in an index, all are scored; one more and it is capped."""
    most = max(len(scan_matches(db, "messages", "café", ["content"])),
               len(scan_matches(db, "conversations", "café",
                                ["subject", "participantName", "participantEmail"])))
    assert most > 3

    def order(scoring):
        return [(h["kind"], h["id"]) for h in found(store, "café", scoring=scoring)]
    exact = order(Scoring(exact=True))
    assert order(Scoring(exact_up_to=most, newest_scored=1)) == exact
    capped = order(Scoring(exact_up_to=most - 1, newest_scored=1))
    assert capped == capped_order(db, store, "café", lambda m: not m[4], lambda m: True,
                                  most - 1, 1) != exact


def test_snippet_marks_the_words(store):
    hit = search(store, "Zürich", limit=1, scope="messages")[0]
    assert "\ue000" in hit["snippet"] and "\ue001" in hit["snippet"]


def part(c, needle):
    """The participant filter's meaning: part of the name or the email, casefolded."""
    return any(needle.casefold() in (v or "").casefold()
               for v in (c["participantName"], c["participantEmail"]))


FILTERS = {
    "status": (Filters(status=("open",)), lambda m, c: c["status"] == "open"),
    "two statuses": (Filters(status=("open", "closed")),
                     lambda m, c: c["status"] in ("open", "closed")),
    "surface id": (Filters(surface=("surface_002",)), lambda m, c: c["surfaceId"] == "surface_002"),
    "surface type": (Filters(surface=("email",)), lambda m, c: c["surfaceId"] == "surface_002"),
    "role": (Filters(role=("assistant",)), lambda m, c: m and m["role"] == "assistant"),
    "since": (Filters(since="2024-01-01T00:00:00.000000Z"),
              lambda m, c: (m["createdAt"] if m else c["updatedAt"]) >= "2024-01-01T00"),
    "until": (Filters(until="2023-09-01T00:00:00.000000Z"),
              lambda m, c: (m["createdAt"] if m else c["updatedAt"]) < "2023-09-01T00"),
    "participant": (Filters(participant="JOSÉ"),
                    lambda m, c: "josé" in (c["participantName"] or "").casefold()
                    or "josé" in (c["participantEmail"] or "").casefold()),
    "participant email": (Filters(participant="doe@EXAMPLE"),
                          lambda m, c: "doe@example" in (c["participantEmail"] or "").lower()),
    "participant, folded apart (ß)": (Filters(participant="STRASSE"),
                                      lambda m, c: "strasse" in (c["participantName"] or "").casefold()),
    "participant, folded apart (Mtavruli)": (
        Filters(participant="გიორგი"), lambda m, c: "გიორგი" in (c["participantName"] or "")
        .casefold()),
    "participant, two letters": (Filters(participant="aL"),
                                 lambda m, c: "al" in (c["participantName"] or "").casefold()
                                 or "al" in (c["participantEmail"] or "").casefold()),
    "participant, one conversation": (Filters(participant="al@X.IO"),
                                      lambda m, c: c["participantEmail"] == "al@x.io"),
    "role, one message": (Filters(role=("system",)), lambda m, c: m and m["role"] == "system"),
    "role, none": (Filters(role=("nosuch",)), lambda m, c: False),
    "surface, none": (Filters(surface=("fax",)), lambda m, c: False),
    "status, none": (Filters(status=("nosuch",)), lambda m, c: False),
    "participant and role": (Filters(participant="example.com", role=("assistant",)),
                             lambda m, c: m and m["role"] == "assistant"
                             and part(c, "example.com")),
    "participant and surface": (Filters(participant="jürgen", surface=("in_app",)),
                                lambda m, c: c["participantName"] == "Jürgen Straße"),
    "participant and since": (Filters(participant="example", since="2024-05-01T00:00:00.000000Z"),
                              lambda m, c: part(c, "example")
                              and (m["createdAt"] if m else c["updatedAt"]) >= "2024-05-01"),
    "role and surface": (Filters(role=("user",), surface=("email",)),
                         lambda m, c: m and m["role"] == "user"
                         and c["surfaceId"] == "surface_002"),
    "role and since": (Filters(role=("assistant",), since="2024-03-01T00:00:00.000000Z"),
                       lambda m, c: m and m["role"] == "assistant"
                       and m["createdAt"] >= "2024-03-01"),
    "status and surface": (Filters(status=("closed",), surface=("surface_004",)),
                           lambda m, c: c["status"] == "closed"
                           and c["surfaceId"] == "surface_004"),
    "status and until": (Filters(status=("open",), until="2023-12-01T00:00:00.000000Z"),
                         lambda m, c: c["status"] == "open"
                         and (m["createdAt"] if m else c["updatedAt"]) < "2023-12-01"),
    "surface and since": (Filters(surface=("webchat",), since="2024-01-01T00:00:00.000000Z"),
                          lambda m, c: c["surfaceId"] == "surface_001"
                          and (m["createdAt"] if m else c["updatedAt"]) >= "2024-01-01"),
    "role, surface, none together": (Filters(role=("system",), surface=("in_app",)),
                                     lambda m, c: m and m["role"] == "system"
                                     and c["surfaceId"] == "surface_003"),
    "include deleted": (Filters(include_deleted=True), lambda m, c: True),
}


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("name", FILTERS)
def test_every_filter(db, store, name, scoring):
    filters, keep = FILTERS[name]
    convs = {c["id"]: c for c in rows(db, "SELECT * FROM conversations")}
    msgs = {m["id"]: m for m in rows(db, "SELECT * FROM messages")}
    query = "refund"
    want = {("message", i) for i in scan_messages(db, query) if keep(msgs[i], convs[
        msgs[i]["conversationId"]])}
    if not filters.role:
        want |= {("conversation", i) for i in scan_conversations(db, query)
                 if keep(None, convs[i])}
    if filters.include_deleted:
        deleted = {i for i, c in convs.items() if c["_deleted_at"]}
        want |= {("message", i) for i, m in msgs.items()
                 if m["conversationId"] in deleted and matches([m["content"]], query)}
        assert any(msgs[i]["conversationId"] in deleted for k, i in want if k == "message")
    got = {(h["kind"], h["id"]) for h in found(store, query, filters=filters,
                                               scoring=SCORINGS[scoring])}
    assert got == want and (got or "none" in name)


def test_conversation_filter_and_scope(db, store):
    cid = rows(db, "SELECT conversationId FROM messages WHERE content LIKE '%ZÜRICH%'")[0][
        "conversationId"]
    hits = found(store, "zurich", filters=Filters(conversation=cid))
    assert {h["conversationId"] for h in hits} == {cid} and hits
    assert {h["kind"] for h in found(store, "Zebra", scope="conversations")} == {"conversation"}
    assert found(store, "Zebra", scope="messages") == []


def test_fts_syntax_passes_through(db, store):
    got = {h["id"] for h in found(store, "refund NOT billing", fts=True, scope="messages")}
    assert got == scan_messages(db, "refund") - scan_messages(db, "billing")
    subject = {h["id"] for h in found(store, "subject:zebra", fts=True)}
    assert subject == scan_conversations(db, "zebra")
    with pytest.raises(QueryError):
        found(store, "AND OR (", fts=True)
    with pytest.raises(QueryError):
        found(store, "nosuchcolumn:x", fts=True)


def cli(db, *args):
    return CliRunner().invoke(main, ["--db", db, *args])


def test_cli_json_has_the_documented_keys(db):
    result = cli(db, "search", "café", "--format", "json", "--limit", "3")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 3
    for hit in hits:
        assert {"id", "conversationId", "createdAt", "role", "content", "snippet", "rank",
                "subject", "participantName", "kind"} <= set(hit)
        assert "**" in hit["snippet"] and "\ue000" not in hit["snippet"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
def test_cli_formats(db, fmt):
    result = cli(db, "search", "refund", "--limit", "5", "--format", fmt)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == (5 if fmt == "jsonl" else 6)
    if fmt == "table":
        assert lines[0].split() == ["conversation", "time", "role", "participant", "subject", "match"]


@pytest.mark.parametrize("words", [['"'], ["-"], ["NEAR"], ["AND"], ["don't", "C++"], ["("]])
def test_cli_plain_words_never_a_syntax_error(db, words):
    result = cli(db, "search", *words, "--format", "json")
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.output), list)


def test_cli_bad_fts_is_one_line_exit_2(db):
    result = cli(db, "search", "--fts", "AND OR (")
    assert result.exit_code == 2
    assert result.output.startswith("error: bad full-text query") and \
        result.output.count("\n") == 1


def test_cli_filters_and_durations(db):
    result = cli(db, "search", "refund", "--since", "3650d", "--until", "2024-12-31",
                 "--role", "user", "--status", "open", "--format", "json", "--limit", "1000")
    hits = json.loads(result.output)
    assert hits and {h["role"] for h in hits} == {"user"}
    bad = cli(db, "search", "refund", "--since", "last tuesday")
    assert bad.exit_code == 2 and "not a date" in bad.output


def work(store, query, filters) -> int:
    """SQLite virtual-machine steps a search takes: a measure of work that, unlike time, is
    the same on every run (counted one by one: SQLite carries a cached statement's steps
    over between runs, so a coarser count would vary)."""
    steps = [0]

    def tick():
        steps[0] += 1
    store.conn.set_progress_handler(tick, 1)
    try:
        hits = search(store, query, filters)
    finally:
        store.conn.set_progress_handler(None, 0)
    return steps[0], hits


NOTHING_LEFT = {
    "conversation": Filters(conversation="conv_not_there"),
    "since": Filters(since="2999-01-01T00:00:00.000000Z"),
    "role and since": Filters(role=("user",), since="2999-01-01T00:00:00.000000Z"),
    "until": Filters(until="2000-01-01T00:00:00.000000Z"),
    "status": Filters(status=("no-such-status",)),
    "participant": Filters(participant="no such person"),
    "role": Filters(role=("nosuch",)),
    "surface": Filters(surface=("fax",)),
    "participant and status": Filters(participant="jürgen", status=("closed",)),
    "surface and role": Filters(surface=("in_app",), role=("nosuch",)),
    "conversation and role": Filters(conversation="conv_not_there", role=("user",)),
}


@pytest.mark.parametrize("name", NOTHING_LEFT)
def test_a_filter_that_leaves_nothing_does_not_walk_the_matches(store, name):
    """Its cost does not grow with the number of matches of the words."""
    common, hits = work(store, "the", Filters())
    rare, hit = work(store, "Οδυσσέας", Filters())
    assert len(hits) == 20 and hit and common > 1.5 * rare, (common, rare)
    work(store, "Οδυσσέας", NOTHING_LEFT[name])  # FTS5 reads an index's settings on first use
    common_none, none = work(store, "the", NOTHING_LEFT[name])
    rare_none, none_either = work(store, "Οδυσσέας", NOTHING_LEFT[name])
    assert none == none_either == []
    # a little slack: which rows a scan meets first follows the mirror's (threaded) write order
    assert common_none <= rare_none + max(300, rare_none // 4), (common_none, rare_none)
    assert common_none < common, (common_none, common)


def test_cli_exact_scores_every_match(db, store, monkeypatch):
    from syncer import query
    small = functools.partial(Scoring, exact_up_to=5, newest_scored=3)
    monkeypatch.setattr(query, "Scoring", small)  # as the command builds it

    def ids(*flags):
        result = cli(db, "search", "refund", *flags, "--format", "json", "--limit", "30")
        assert result.exit_code == 0, result.output
        return [h["id"] for h in json.loads(result.output)]
    exact = [h["id"] for h in search(store, "refund", limit=30, scoring=Scoring(exact=True))]
    capped = [h["id"] for h in search(store, "refund", limit=30, scoring=small())]
    assert ids("--exact") == exact != capped == ids()


# -- the indexes behind the filters (migrations.V6) -------------------------------------------
def test_unfolded_lists_every_character_the_trigram_index_may_fold_apart():
    """A row without those characters is found by the trigram index whenever casefold finds
    it: each of its characters casefolds to one character that SQLite folds as it folds the
    original. Checked against this SQLite and this Python over the planes that hold cased
    letters."""
    from syncer.migrations import UNFOLDED
    conn = sqlite3.connect(":memory:")
    conn.executescript("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram');"
                       "CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance');")
    points = [c for c in range(1, 0x20000) if not 0xD800 <= c <= 0xDFFF]
    conn.executemany("INSERT INTO t (rowid, x) VALUES (?, ?)", ((c, chr(c) * 3) for c in points))
    folded = {doc: term[0] for term, doc in conn.execute("SELECT term, doc FROM v")
              if len(term) == 3 and len(set(term)) == 1}
    conn.close()
    apart = {c for c in points if len(chr(c).casefold()) != 1 or c not in folded
             or folded.get(ord(chr(c).casefold())) != folded[c]}
    listed = {c for low, high in UNFOLDED for c in range(low, high + 1)}
    assert apart <= listed, sorted(hex(c) for c in apart - listed)


def participant_scan(db, needle):
    return {r["id"] for r in rows(db, "SELECT id, participantName, participantEmail "
                                      "FROM conversations") if part(r, needle)}


def participant_hits(store, needle):
    return {h["conversationId"] for h in found(store, "refund", scope="conversations",
                                               filters=Filters(participant=needle,
                                                               include_deleted=True))}


def fts_intact(db, table="participants_fts"):
    conn = sqlite3.connect(db)
    try:
        conn.execute(f"INSERT INTO {table} ({table}, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


def test_v6_migrates_an_existing_mirror_and_its_triggers_keep_the_index(tmp_path):
    """A mirror made at V5 (V6's objects removed) is migrated by the next open: the trigram
    index then holds every conversation, and stays in step with inserts, updates and deletes
    made by any writer."""
    from syncer import migrations
    db = build_mirror(tmp_path / "m.db", seed=5, conversations=40, prepare=_special_texts)
    conn = sqlite3.connect(db)
    conn.executescript("""
        DROP TRIGGER participants_fts_insert; DROP TRIGGER participants_fts_delete;
        DROP TRIGGER participants_fts_update; DROP TABLE participants_fts;
        DROP INDEX idx_messages_role; DROP INDEX idx_conversations_surface_type;
        DROP INDEX idx_conversations_unfolded; PRAGMA user_version = 5;""")
    conn.close()
    Store.open(db).close()
    assert dict_rows(db, "PRAGMA user_version")[0]["user_version"] == migrations.LATEST >= 6
    fts_intact(db)
    for needle in ("EXAMPLE", "jürgen", "strasse", "გიორგი", "al"):
        with read_store(db) as store:
            assert participant_hits(store, needle) == {
                i for i in participant_scan(db, needle)
                if matches([r["subject"] for r in rows(db, "SELECT subject FROM conversations "
                                                          "WHERE id = ?", (i,))], "refund")}
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE conversations SET participantName = 'Renée Rename' "
                     "WHERE participantName = 'Jürgen Straße'")
        conn.execute("UPDATE conversations SET participantEmail = 'NEW@Example.org' "
                     "WHERE participantName = 'Al'")
        conn.execute("DELETE FROM conversations WHERE participantName LIKE 'ᲒᲘ%'")
        conn.execute("INSERT INTO conversations (id, subject, participantName, _raw, _synced_at) "
                     "VALUES ('conv_added', 'refund asked', 'Ǆemal Ŋ', '{}', 'now')")
        conn.execute("INSERT INTO conversations_fts (rowid, subject, participantName) "
                     "SELECT rowid, subject, participantName FROM conversations "
                     "WHERE id = 'conv_added'")
    conn.close()
    fts_intact(db)
    with read_store(db) as store:
        for needle in ("renée", "jürgen", "new@example", "გიორგი", "ǆemal ŋ", "EXAMPLE"):
            assert participant_hits(store, needle) == {
                i for i in participant_scan(db, needle)
                if matches([r["subject"] for r in rows(db, "SELECT subject FROM conversations "
                                                          "WHERE id = ?", (i,))], "refund")}
        assert participant_hits(store, "renée") and participant_hits(store, "ǆemal")


def test_known_values_are_those_a_scan_finds(db, store):
    """The roles and surfaces a filter may name, walked off their indexes, equal a scan."""
    from syncer import known
    assert known.roles(store) == {r["role"] for r in rows(db, "SELECT role FROM messages")
                                  if r["role"]} >= {"user", "system"}
    assert known.surfaces(store) == {v for r in rows(
        db, "SELECT surfaceId, json_extract(surface, '$.type') AS t FROM conversations")
        for v in (r["surfaceId"], r["t"]) if v} >= {"email", "surface_003"}
