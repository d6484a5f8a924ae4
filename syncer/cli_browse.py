"""Read commands over the local mirror: search, show, conversations, stats, serve (export
is in cli_export.py).

They need no API key and no network, open the database read-only (a missing or foreign file is
an error, exit 2, and is never created), and default to a table on a terminal and to JSON Lines
(JSON for show and stats) when the output is piped.
"""
from __future__ import annotations

import contextlib
import functools
import sys

import click

from . import config, known, query, render
from .cli_context import App, Choice, command, pass_app
from .errors import ConfigError

BOLD = ("\x1b[1;33m", "\x1b[0m")
STATUSES = tuple(s for s in config.STATUSES if s != "all")   # the API's statuses
AGENT_MODES = ("auto", "human")     # the API's agentMode values (it may send others)


@contextlib.contextmanager
def _open(app: App, filters: query.Filters | None = None):
    """The mirror, read-only; a surface or role in `filters` that it does not hold is an error."""
    from .store import Store  # here: `--help` and usage errors never need it
    store = Store.open_readonly(app.settings().db_path)
    try:
        if filters is not None:
            known.check(store, surface=filters.surface, role=filters.role)
        yield store
    finally:
        store.close()


def filter_options(f):
    """The filters every read command shares; they become a `query.Filters` named `filters`."""
    options = [
        click.option("--status", multiple=True, type=Choice(STATUSES),
                     help="Conversation status (repeatable)."),
        click.option("--surface", multiple=True,
                     help="Surface id or type, e.g. surface_002 or email (repeatable)."),
        click.option("--role", multiple=True, help="Message role, e.g. user (repeatable)."),
        click.option("--since", help="From this date/time or this long ago (2024-05-01, "
                                     "2024-05-01T10:00, 7d); without an offset, in --tz."),
        click.option("--until", help="Before this date/time (a date means its end) or ago."),
        click.option("--conversation", "conversation_id", help="Only this conversation."),
        click.option("--participant", help="Part of the participant's name or email."),
        click.option("--include-deleted", is_flag=True,
                     help="Include conversations deleted upstream."),
        click.option("--agent-mode", type=Choice(AGENT_MODES),
                     help="Who answers: the agent (auto) or a person who took over (human); "
                          "a conversation the server sends no mode for matches neither."),
    ]

    @functools.wraps(f)
    def wrapper(*args, status, surface, role, since, until, conversation_id, participant,
                include_deleted, agent_mode, **kwargs):
        # a date or time typed without an offset is read in the zone times are shown in
        zone = click.get_current_context().find_object(App).zone() if since or until else None
        kwargs["filters"] = query.Filters(
            status=status, surface=surface, role=role,
            since=query.parse_time(zone.read(since)) if since else None,
            until=query.parse_time(zone.read(until, end=True), end=True) if until else None,
            conversation=conversation_id, participant=participant,
            include_deleted=include_deleted, agent_mode=agent_mode)
        return f(*args, **kwargs)
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def paging_options(limit: int, *, minimum: int, help_limit: str):
    """--limit and --offset, for the listing commands."""
    def apply(f):
        f = click.option("--offset", default=0, show_default=True, type=click.IntRange(0),
                         help="Skip this many first (for paging).")(f)
        return click.option("--limit", default=limit, show_default=True,
                            type=click.IntRange(minimum), help=help_limit)(f)
    return apply


def format_option(choices=render.LISTING_FORMATS):
    return click.option("--format", "fmt", type=Choice(choices),
                        help="Output format (default: table on a terminal, else "
                             f"{'jsonl' if 'jsonl' in choices else 'json'}).")


def _fmt(fmt: str | None, piped: str) -> str:
    return fmt or ("table" if sys.stdout.isatty() else piped)


def _term_width() -> int:
    import shutil
    return shutil.get_terminal_size((120, 24)).columns


def _term_lines() -> int:
    import shutil
    return shutil.get_terminal_size().lines


def _emit_rows(app: App, rows: list[dict], fmt: str | None, columns: list[tuple[str, str]],
               shown: str | None = None, optional: tuple[str, ...] = ()) -> None:
    """`rows` in `fmt`; on a terminal, `shown` (how many of how many) or "no matches" goes to
    stderr, so that a cut list says so and piped output stays data. A table never cuts an id
    (it is what `syncer show` takes) or a time, and leaves out the `optional` columns when the
    terminal is too narrow for them."""
    fmt = _fmt(fmt, "jsonl")
    out = sys.stdout
    if sys.stdout.isatty() and (shown or not rows):
        click.echo(shown or "no matches", err=True)
    if fmt == "table":
        color = app.use_color()
        mark = BOLD if color else ("[", "]")
        click.echo(render.table(rows, columns, _term_width(),
                                style=lambda s: render.marked(s, mark) + (BOLD[1] if color else "")
                                if query.MARK[0] in s else s, zone=app.zone(), whole=WHOLE,
                                optional=optional, marks=0 if color else 1), color=color)
        return
    rows = render.plain_snippets(rows)
    {"json": render.dump_json, "jsonl": render.dump_jsonl, "csv": render.dump_csv}[fmt](rows, out)


WHOLE = ("id", "conversationId", "createdAt", "updatedAt")
SEARCH_COLUMNS = [("conversationId", "conversation"), ("createdAt", "time"), ("role", "role"),
                  ("participantName", "participant"), ("subject", "subject"),
                  ("snippet", "match")]


@command()
@click.argument("words", nargs=-1, required=True)
@click.option("--fts", is_flag=True, help="Pass WORDS to SQLite FTS5 as query syntax.")
@click.option("--in", "scope", type=Choice(["all", "messages", "conversations"]),
              default="all", show_default=True,
              help="Search message content, conversation subject/participant, or both.")
@click.option("--exact", is_flag=True,
              help=f"Score every match, even past {query.EXACT_UP_TO:,} (slower).")
@paging_options(20, minimum=1, help_limit="At most this many hits.")
@filter_options
@format_option()
@pass_app
def search(app: App, words, fts, scope, exact, limit, offset, filters, fmt):
    """Full-text search of the mirror, best match (bm25) first, newest first on ties.

    WORDS are plain words that must all appear (punctuation is just a separator); a hit on a
    conversation's subject or participant is a row of its own with kind "conversation".

    When the words match more than 10,000 messages (or conversations), only the newest 5,000
    matches are scored and come first; the rest follow, newest first (--exact scores all).

    \b
    Examples:
      syncer search refund
      syncer search "don't" C++ --role user --since 7d --limit 50
      syncer search --fts 'refund NOT (billing OR invoice)' --format jsonl
      syncer search refund --exact
    """
    with _open(app, filters) as store:
        hits = query.search(store, " ".join(words), filters, limit=limit + 1, offset=offset,
                            fts=fts, scope=scope, scoring=query.Scoring(exact=exact))
    more = len(hits) > limit
    shown = (f"showing {limit:,} of more than {limit:,} matches (use --limit or --offset)"
             if more else None)
    _emit_rows(app, hits[:limit], fmt, SEARCH_COLUMNS, shown,
               optional=("participantName", "subject"))


@command()
@click.argument("conversation_id")
@format_option(("table", "json"))
@click.option("--no-pager", is_flag=True,
              help="Never page (by default a thread longer than the terminal goes to $PAGER).")
@pass_app
def show(app: App, conversation_id, fmt, no_pager):
    """Show one conversation: its header and every message in order.

    \b
    Examples:
      syncer show conv_0123456789abcdef0123
      syncer show conv_0123456789abcdef0123 --format json | jq .messages
    """
    with _open(app) as store:
        thread = query.show(store, conversation_id)
    if _fmt(fmt, "json") == "json":
        render.dump_json(thread, sys.stdout)
        return
    text = _thread_text(thread, app.zone())
    if (not no_pager and sys.stdout.isatty()
            and text.count("\n") + 1 > _term_lines() - 1):
        click.echo_via_pager(text)
    else:
        click.echo(text)


def _thread_text(t: dict, zone) -> str:
    """The thread for people; every time in `zone`, labelled."""
    def when(value):
        return render.when(value, zone)

    held, count = t["_messages_held"], t["messageCount"]
    complete = "complete" if t["_messages_complete"] else f"incomplete ({held} of {count} held)"
    surface = (t.get("surface") or {}).get("name") or t["surfaceId"]
    lines = [f"{t['subject'] or '(no subject)'}",
             f"  {t['id']}  {t['status']}  via {surface}",
             f"  participant: {t['participantName'] or ''} <{t['participantEmail'] or ''}>",
             *_agent_line(t, when),
             f"  created {when(t['createdAt'])}  updated {when(t['updatedAt'])}  "
             f"last message {when(t['lastMessageAt'])}",
             f"  {count} messages, {complete}" +
             (f"; DELETED upstream at {when(t['_deleted_at'])}" if t["_deleted_at"] else ""), ""]
    for m in t["messages"]:
        lines.append(f"[{when(m['createdAt'])}] {m['role']}:")
        lines += ["    " + line for line in (m["content"] or "").splitlines() or [""]]
    return "\n".join(lines)


def _agent_line(t: dict, when) -> list[str]:
    """Who answers, and when a person took over: by whom, when (`when` shows the time) and
    why. None for a conversation the server sent none of these for."""
    mode = t.get("agentMode")
    taken = t.get("takeoverAt") or t.get("takeoverActorId") or mode == "human"
    if mode is None and not taken:
        return []
    line = f"  agent: {mode or '(not sent)'}"
    if taken:
        actor = " ".join(filter(None, (t.get("takeoverActorType"), t.get("takeoverActorId"))))
        line += (", taken over" + (f" by {actor}" if actor else "")
                 + (f" at {when(t['takeoverAt'])}" if t.get("takeoverAt") else "")
                 + (f": {t['takeoverReason']}" if t.get("takeoverReason") else ""))
    return [line]


CONVERSATION_COLUMNS = [("id", "id"), ("updatedAt", "updated"), ("status", "status"),
                        ("surfaceId", "surface"), ("messageCount", "msgs"),
                        ("participantName", "participant"), ("subject", "subject")]


@command("conversations")
@click.option("--sort", type=Choice(list(query.SORTS)), default="updated",
              show_default=True, help="Newest (or most messages) first.")
@paging_options(50, minimum=0, help_limit="At most this many (0: all).")
@filter_options
@format_option()
@pass_app
def conversations_command(app: App, sort, limit, offset, filters, fmt):
    """List conversations (deleted ones only with --include-deleted).

    --since/--until apply to updatedAt; --role keeps conversations with a message of that role.

    \b
    Examples:
      syncer conversations --status open --sort last-message
      syncer conversations --surface email --since 7d --format csv > recent.csv
    """
    with _open(app, filters) as store:
        rows = query.conversations(store, filters, sort=sort, limit=limit or None, offset=offset)
        shown = None
        if sys.stdout.isatty() and limit and len(rows) == limit:
            total = query.count_conversations(store, filters)
            if total > offset + limit:
                shown = f"showing {len(rows):,} of {total:,} (use --limit or --offset)"
    _emit_rows(app, rows, fmt, CONVERSATION_COLUMNS, shown,
               optional=("surfaceId", "participantName"))


@command()
@click.option("--per", type=Choice(["auto", "day", "week", "month"]), default="auto",
              show_default=True,
              help="Bucket of the message volume (auto: day up to 62 days, else week).")
@filter_options
@format_option(("table", "json", "csv"))
@pass_app
def stats(app: App, per, filters, fmt):
    """Counts by status, surface, role and direction; volume over time; median first-response
    time; busiest participants. Messages are dated by createdAt, conversations by updatedAt,
    days and weeks are UTC. --format json gives every figure, --format csv the same numbers as
    section,key,value rows for scripts.

    \b
    Examples:
      syncer stats
      syncer stats --since 2024-05-01 --per week --format json
      syncer stats --per month --format csv
    """
    from . import stats as stats_module    # here: only this command needs it
    with _open(app, filters) as store:
        result = stats_module.stats(store, filters, per=per)
    fmt = _fmt(fmt, "json")
    if fmt == "json":
        render.dump_json(result, sys.stdout)
    elif fmt == "csv":
        render.dump_csv(stats_rows(result), sys.stdout, ["section", "key", "value"])
    else:
        click.echo(_stats_text(result))


def stats_rows(s: dict) -> list[dict]:
    """The figures of `query.stats` as (section, key, value) rows: one per number."""
    c, m, fr = s["conversations"], s["messages"], s["firstResponse"]
    rows = [("since", None, s["since"]), ("until", None, s["until"]),
            ("conversations.total", None, c["total"]), ("messages.total", None, m["total"]),
            ("messages.first", None, m["first"]), ("messages.last", None, m["last"]),
            ("firstResponse.turns", None, fr["turns"]),
            ("firstResponse.medianSeconds", None, fr["medianSeconds"])]
    rows += [(f"takeovers.{k}", None, v) for k, v in s["takeovers"].items()
             if k != "timeToTakeover"]
    rows += [(f"takeovers.timeToTakeover.{k}", None, v)
             for k, v in s["takeovers"]["timeToTakeover"].items()]
    for section, items, key in (("conversations.byStatus", c["byStatus"], "status"),
                                ("conversations.bySurface", c["bySurface"], "surfaceId"),
                                ("messages.byRole", m["byRole"], "role"),
                                ("messages.byDirection", m["byDirection"], "direction")):
        rows += [(section, i[key], i["count"]) for i in items]
    rows += [(f"volume.{s['volume']['per']}", b["start"], b["messages"])
             for b in s["volume"]["buckets"]]
    for p in s["busiestParticipants"]:
        who = p["participantEmail"] or p["participantName"]
        rows += [("busiestParticipants.messages", who, p["messages"]),
                 ("busiestParticipants.conversations", who, p["conversations"])]
    return [{"section": a, "key": b, "value": v} for a, b, v in rows]


def _stats_text(s: dict) -> str:
    c, m, fr = s["conversations"], s["messages"], s["firstResponse"]
    median = "-" if fr["medianSeconds"] is None else _duration(fr["medianSeconds"])
    window = (f" ({'from ' + render.when(s['since']) if s['since'] else ''}"
              f"{' ' if s['since'] and s['until'] else ''}"
              f"{'before ' + render.when(s['until']) if s['until'] else ''})"
              if s["since"] or s["until"] else "")
    per = s["volume"]["per"]
    parts = [f"{_plural(c['total'], 'conversation')} updated{window or ' (all time)'}",
             f"{_plural(m['total'], 'message')} sent, first {render.when(m['first'])}, "
             f"last {render.when(m['last'])}",
             f"first response: median {median} of {_plural(fr['turns'], 'reply', 'replies')} "
             "(a user's message to the first answer after it)", _takeover_text(s["takeovers"])]
    surfaces = [(_surface_label(i), i["count"]) for i in c["bySurface"]]
    for title, items in (
            ("conversations by status", [(i["status"] or "(none)", i["count"])
                                         for i in c["byStatus"]]),
            ("conversations by surface", surfaces),
            ("messages by role", [(i["role"] or "(none)", i["count"]) for i in m["byRole"]]),
            ("messages by direction", [(i["direction"] or "(none)", i["count"])
                                       for i in m["byDirection"]])):
        parts += ["", title, render.bar_chart(items)]
    parts += ["", f"messages per {per} (UTC{', weeks from Monday' if per == 'week' else ''})",
              render.bar_chart([(_period(b["start"], per), b["messages"])
                                for b in s["volume"]["buckets"]]),
              "", "busiest participants (messages)",
              render.bar_chart(_participant_labels(s["busiestParticipants"]))]
    return "\n".join(parts)


def _takeover_text(t: dict) -> str:
    """The takeover figures in a line (stats' definitions: takeovers.py)."""
    line = f"taken over by a person: {_plural(t['conversations'], 'conversation')}"
    if t["share"] is not None:
        line += f" ({t['share']:.1%})"
    d = t["timeToTakeover"]
    if d["conversations"]:
        line += (f", from the first message in median {_duration(d['medianSeconds'])}, "
                 f"90% within {_duration(d['p90Seconds'])} (of {d['conversations']:,})")
    return line


def _period(start: str | None, per: str) -> str:
    """A bucket's label: its day, the Monday of its week, or its month as YYYY-MM."""
    if start is None:
        return "(no time)"
    return start[:7] if per == "month" else start


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _surface_label(item: dict) -> str:
    """'Support Email (email, surface_002)': a surface by name and type, and its id."""
    inner = ", ".join(filter(None, (item["type"], item["surfaceId"])))
    if item["name"]:
        return f"{item['name']} ({inner})" if inner else item["name"]
    return item["surfaceId"] or "(none)"


def _participant_labels(people: list[dict]) -> list[tuple[str, int]]:
    """Each participant by name; with the email too where two share a name (or no name)."""
    names = [p["participantName"] for p in people]
    out = []
    for p, name in zip(people, names):
        email = p["participantEmail"]
        if name and names.count(name) == 1:
            label = name
        elif name:
            label = f"{name} <{email}>" if email else f"{name} (no email)"
        else:
            label = email           # one with neither is not counted as anybody
        out.append((label, p["messages"]))
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


@command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8001, show_default=True, type=int, help="Port to listen on.")
@click.option("--metadata", "print_metadata", is_flag=True,
              help="Print the Datasette metadata (JSON) and exit, to run datasette yourself.")
@pass_app
def serve(app: App, host, port, print_metadata):
    """Browse the mirror in Datasette: search ranked best first (the canned query `search`),
    facets on status, surface and role, and a thread view (`thread`).

    \b
    Examples:
      syncer serve --port 8001
      syncer serve --metadata > metadata.json
    """
    import importlib.util

    from . import serve as serving
    path = app.settings().db_path
    with _open(app):
        pass  # a missing or foreign file is an error here, with its exit code
    name = serving.database_name(path)
    if print_metadata:
        render.dump_json(serving.metadata(name), sys.stdout)
        return
    if importlib.util.find_spec("datasette") is None:
        raise ConfigError("Datasette is not installed: pip install 'runtype-syncer[serve]'")
    click.echo(f"Datasette on http://{host}:{port}/{name} (Ctrl-C stops it)", err=True)
    serving.serve(path, host=host, port=port)


COMMANDS = [search, show, conversations_command, stats, serve]
