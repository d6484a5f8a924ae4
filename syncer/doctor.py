"""`syncer doctor`: what syncer would use and whether it can work with it.

It lists the effective configuration with the source of every value (the API key only as set
or unset), checks the database and the upstream it belongs to, and makes one live request to
the API (reachable, key accepted, rate-limit headers). Each check is OK or says what to fix."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .errors import ApiError, AuthError, ConfigError, StoreError, SyncerError

log = logging.getLogger(__name__)

# Values the environment (or --db) can set, and from where.
ENV_FOR = {("api", "base_url"): "RUNTYPE_BASE_URL", ("api", "key"): config.API_KEY_ENV,
           ("store", "path"): "SYNCER_DB", ("display", "tz"): config.TZ_ENV}
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str


@dataclass
class Report:
    config_file: str | None = None
    values: list[tuple[str, str, str]] = field(default_factory=list)   # name, shown, source
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, ok: bool, text: str) -> None:
        self.checks.append(Check(ok, text))


def examine(config_path: str | None, db_flag: str | None, *, tz_flag: str | None = None,
            env: Mapping[str, str] | None = None, transport=None) -> Report:
    """Everything `syncer doctor` shows. `transport` is for tests only."""
    env = os.environ if env is None else env
    report = Report()
    path = Path(config_path) if config_path else Path(config.DEFAULT_CONFIG_FILE)
    file_values: dict = {}
    if config_path or path.exists():
        report.config_file = str(path)
        try:
            file_values = config.read_file(path)
        except ConfigError as e:
            report.add(False, f"config file: {e}")
    report.values = _values(file_values, report.config_file, {("store", "path"): db_flag,
                                                               ("display", "tz"): tz_flag}, env)
    try:
        settings = config.load(config_path, db_path=db_flag, tz=tz_flag, env=env)
    except ConfigError as e:
        if not report.checks:
            report.add(False, f"configuration: {e}")
        return report
    report.add(True, f"configuration: {report.config_file or 'no config file'}"
                     f"{'' if report.config_file else ' (defaults and environment)'}")
    _check_key(report, settings)
    _check_database(report, settings)
    _check_api(report, settings, transport)
    return report


def _values(file_values: dict, file: str | None, flags: dict[tuple[str, str], str | None],
            env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    rows = []
    for section, keys in config.DEFAULTS.items():
        for key, (default, kind) in keys.items():
            name = f"[{section}].{key}"
            env_name = ENV_FOR.get((section, key))
            if flags.get((section, key)):
                value = flags[(section, key)]
                source = "--db" if (section, key) == ("store", "path") else "--tz"
            elif env_name and (env.get(env_name) or "").strip():
                value, source = env[env_name].strip(), env_name
            elif key in file_values.get(section, {}):
                value, source = file_values[section][key], file
            else:
                value, source = default, "default"
            if key == "key":
                value = "set" if value else "unset"
                source = source if value == "set" else f"set {config.API_KEY_ENV}"
            if kind == "duration" and isinstance(value, (int, float)):
                value = _duration(value)     # as the file would say it, not 86400.0
            rows.append((name, _shown(value), source))
    return rows


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:g}s"


def _shown(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "(all)"
    return str(value)


def _check_key(report: Report, settings: config.Settings) -> None:
    if not settings.api_key:
        report.add(False, f"API key: not set: export {config.API_KEY_ENV}=rt_live_... "
                          "(or [api].key in the config file)")
        return
    try:
        settings.require_key()
    except ConfigError as e:
        report.add(False, f"API key: {e}")
        return
    report.add(True, f"API key: set ({settings.key_source})")


def _check_database(report: Report, settings: config.Settings) -> None:
    from .binding import STATE_URL, canonical_url
    from .store import Store
    path = Path(settings.db_path)
    if not path.exists():
        parent = path.resolve().parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            report.add(True, f"database: {path} does not exist yet; the first `syncer sync` "
                             "creates it")
        else:
            report.add(False, f"database: {path}: cannot be created, {parent} is missing or "
                              "not writable; create it or pass --db")
        return
    try:
        store = Store.open_readonly(str(path))
    except StoreError as e:
        report.add(False, f"database: {e}")
        return
    try:
        live = store.conn.execute("SELECT count(*) FROM conversations "
                                  "WHERE _deleted_at IS NULL").fetchone()[0]
        upstream = store.get_state(STATE_URL)
    finally:
        store.close()
    report.add(True, f"database: {path} ({live:,} live conversation{'s' * (live != 1)})")
    if upstream is None:
        report.add(True, "upstream: none yet; the first sync binds this mirror to "
                         f"{settings.base_url}")
    elif canonical_url(upstream) != canonical_url(settings.base_url):
        report.add(False, f"upstream: this mirror belongs to {upstream}, but the base URL is "
                          f"{settings.base_url}: set RUNTYPE_BASE_URL={upstream}, or move the "
                          "mirror with `syncer sync --rebind`")
    else:
        report.add(True, f"upstream: {upstream} (the base URL in use)")


def _check_api(report: Report, settings: config.Settings, transport) -> None:
    from .api import RuntypeClient
    if not settings.api_key:
        report.add(False, f"API at {settings.base_url}: not checked without a key")
        return
    quick = dataclasses.replace(settings, max_retries=0, timeout=min(settings.timeout, 10.0),
                                concurrency=1)
    started = time.monotonic()
    try:
        with RuntypeClient(quick, transport=transport) as client:
            body, headers = client.probe()
    except AuthError as e:
        report.add(True, f"API at {settings.base_url}: reachable")
        problem = "refused" if e.status == 401 else "lacks messaging read scope"
        report.add(False, f"API key {problem} (HTTP {e.status}): check {settings.key_source}")
        return
    except (ApiError, SyncerError) as e:
        report.add(False, f"API at {settings.base_url}: {e}")
        return
    seconds = time.monotonic() - started
    report.add(True, f"API at {settings.base_url}: reachable (answered in {seconds:.2f}s)")
    total = (body.get("pagination") or {}).get("totalCount")
    listed = f", {total:,} conversations listed" if isinstance(total, int) else ""
    report.add(True, f"API key accepted{listed}")
    limit, remaining, reset = (headers.get(h) for h in RATE_HEADERS)
    if limit is None:
        report.add(True, "rate limit: the API sends no X-RateLimit headers; syncer slows down "
                         "on 429 answers")
    else:
        report.add(True, f"rate limit: {limit} requests a window, {remaining} left, "
                         f"window resets in {reset}s")
