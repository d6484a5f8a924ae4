"""The export command: conversations or messages to CSV, JSON Lines or Parquet, and the change
feed. A module of its own so that only `syncer export` imports the exporter."""
from __future__ import annotations

import click

from . import query
from .cli_browse import _emit_rows, _open, filter_options
from .cli_context import App, Choice, command, pass_app
from .export import FORMATS, TABLES, ExportError, check_format, export, private_output


@command("export")
@click.argument("table", required=False)
@click.option("--format", "fmt", type=Choice(FORMATS), default=None,
              help="parquet needs the optional extra: pip install 'runtype-syncer[parquet]'. "
                   "Default: csv.")
@click.option("-o", "--output", type=click.Path(allow_dash=True), default="-",
              help="File to write (default: stdout, but not Parquet on a terminal); with "
                   "--changes, the feed directory.")
@click.option("--changes", "consumer", metavar="NAME",
              help="Only what changed since consumer NAME's last export (a change feed: "
                   "rows with _seq and _deleted_at, tombstones included), then move NAME on.")
@click.option("--reset", is_flag=True, help="With --changes: start NAME over from nothing.")
@click.option("--partition-by", type=Choice(["month"]),
              help="With --changes and parquet: Hive-style createdAt_month=YYYY-MM/ parts.")
@click.option("--consumers", "list_consumers", is_flag=True,
              help="List the change-feed consumers with their position and lag (rows "
                   "still to deliver); --format csv or jsonl for scripts.")
@filter_options
@pass_app
def export_command(app: App, table, fmt, output, consumer, reset, partition_by,
                   list_consumers, filters):
    """Export conversations or messages, streaming, to CSV, JSON Lines or Parquet.

    With --changes NAME, a change feed for a warehouse: each export writes, into the directory
    -o, a part with the rows changed since NAME's last export (one per id, its latest state,
    tombstones with _deleted_at set); NAME moves on only once the part is in place.

    \b
    Examples:
      syncer export conversations --format jsonl --surface email > conversations.jsonl
      syncer export messages --format parquet -o messages.parquet
      syncer export messages --changes duckdb --format parquet -o feed/messages
      syncer export --consumers
    """
    from . import feed    # here: `--help` and usage errors never need it
    if list_consumers:
        if fmt == "parquet":
            raise ExportError("--consumers lists as a table, csv or jsonl, not parquet")
        with _open(app) as store:
            rows = feed.consumers(store)
        _emit_rows(app, rows, fmt, CONSUMER_COLUMNS)
        return
    if table is None:
        raise ExportError("name the table to export (conversations or messages), "
                          "or pass --consumers")
    fmt = fmt or "csv"
    if consumer is None:
        if reset or partition_by:
            raise ExportError(f"--{'reset' if reset else 'partition-by'} needs --changes NAME")
        if table not in TABLES:
            raise ExportError(f"cannot export {table!r} (use {' or '.join(TABLES)})")
        check_format(fmt)
        with _open(app, filters) as store, private_output(output, store.path, fmt) as out:
            n = export(store, table, fmt, out, filters)
        if output != "-":
            click.echo(f"{n} {table} written to {output}", err=True)
        return
    if filters != query.Filters():
        raise ExportError("a change feed exports whole tables: drop the filters "
                          "(--status, --since, ...) or the --changes option")
    feed.check_request(table, consumer, fmt, partition_by)
    with _open(app) as store:
        done = feed.export_changes(store, table, consumer, fmt, output, reset=reset,
                                   partition_by=partition_by)
    where = f"{len(done.files)} file(s) in {output}" if done.files else "no file (no change)"
    click.echo(f"{done.rows} {table} changes ({done.tombstones} tombstones) after position "
               f"{done.before}: {where}; consumer {consumer} now at {done.position}", err=True)


CONSUMER_COLUMNS = [("name", "consumer"), ("table", "table"), ("position", "position"),
                    ("lag", "lag"), ("exports", "exports"), ("updatedAt", "updated")]


COMMANDS = [export_command]
