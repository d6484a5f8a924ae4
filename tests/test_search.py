"""`syncer search`: results equal a direct scan of the data, every filter, ranking, formats,
on every path: every match scored, only the newest scored (thresholds made small here), and
filters that narrow the scope or are applied after ranking."""
import functools
import json
import unicodedata

import pytest
from click.testing import CliRunner
from support import build_mirror, dict_rows

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


@pytest.mark.parametrize("case", ["no filter", "role, after ranking", "since, in scope"])
def test_capped_order_is_the_newest_scored_then_the_rest(db, store, case):
    live = lambda m: not m[4]  # noqa: E731
    since = "2024-01-01T00:00:00.000000Z"
    filters, keep, in_scope = {
        "no filter": (Filters(), live, lambda m: True),
        "role, after ranking": (Filters(role=("user",)),
                                lambda m: live(m) and m[1] == "message" and m[2] in users(db),
                                lambda m: True),
        "since, in scope": (Filters(since=since), lambda m: live(m) and m[3] >= since,
                            lambda m: m[3] >= since),
    }[case]
    got = [(h["kind"], h["id"]) for h in search(
        store, "refund", filters, limit=100_000, scoring=Scoring(exact_up_to=5, newest_scored=3))]
    want = capped_order(db, store, "refund", keep, in_scope, 5, 3)
    assert got == want and len(want) > 20


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
    assert got == want and got


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
    """SQLite virtual-machine steps (in hundreds) a search takes: a measure of work that,
    unlike time, is the same on every run."""
    steps = [0]

    def tick():
        steps[0] += 1
    store.conn.set_progress_handler(tick, 100)
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
}


@pytest.mark.parametrize("name", NOTHING_LEFT)
def test_a_filter_that_leaves_nothing_does_not_walk_the_matches(store, name):
    """Its cost does not grow with the number of matches of the words."""
    common, hits = work(store, "the", Filters())
    rare, hit = work(store, "Οδυσσέας", Filters())
    assert len(hits) == 20 and hit and common > 2 * rare, (common, rare)
    common_none, none = work(store, "the", NOTHING_LEFT[name])
    rare_none, none_either = work(store, "Οδυσσέας", NOTHING_LEFT[name])
    assert none == none_either == []
    # a little slack: which rows a scan meets first follows the mirror's (threaded) write order
    assert common_none <= rare_none + max(3, rare_none // 4), (common_none, rare_none)
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
