"""Settings: defaults < config file < environment < command-line flags, frozen once built.

Every key has its default in DEFAULTS below; config.example.toml documents the same keys
(a test checks that the two agree). A ConfigError names the key and where its value came
from: the flag, the environment variable or the file.

Durations written on the command line or as strings need a unit ("15" could mean seconds or
minutes); a bare TOML number in the file is seconds. Every duration and timeout is finite and at
most MAX_SECONDS, so no value can overflow a timedelta or a socket timeout halfway through a run.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from . import zones
from .errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "RUNTYPE_API_KEY"
TZ_ENV = "SYNCER_TZ"
DEFAULT_CONFIG_FILE = "syncer.toml"
STATUSES = ("open", "closed", "archived", "all")
ON_DELETE = ("keep", "purge")

# section -> key -> (default, kind)
DEFAULTS: dict[str, dict[str, tuple[object, str]]] = {
    "api": {
        "base_url": ("https://api.runtype.com", "str"),
        "key": (None, "secret"),
        "timeout": (30.0, "seconds"),
        "concurrency": (8, "int"),
        "page_size": (100, "int"),
        "max_retries": (6, "int"),
        "max_response_mb": (50, "int"),
        "allow_insecure_http": (False, "bool"),
    },
    "store": {
        "path": ("syncer.db", "str"),
        "on_delete": ("keep", "str"),
    },
    "sync": {
        "status": ("all", "str"),
        "surface_ids": ([], "strlist"),
        "lookback": ("10m", "duration"),
        "fetch_details": (True, "bool"),
        "reconcile_every": ("1d", "duration"),
        "max_delete": ("10%", "str"),
    },
    "schedule": {
        "interval": ("15m", "duration"),
        "cron": (None, "str"),
        "jitter": ("10s", "duration"),
    },
    "display": {
        "tz": ("UTC", "str"),
    },
}

MAX_SECONDS = 100 * 365 * 86400.0   # 100 years: anything longer is a typo
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> float:
    """'90s', '5m', '1h30m', '2d' -> seconds; a number (a TOML value) is seconds.

    ValueError for anything else: a string without a unit, a negative, infinite or NaN value,
    or more than MAX_SECONDS."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        return _bounded(_as_float(text), text)
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        raise ValueError(f"{text!r} has no unit; did you mean {s}s or {s}m?")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h, 2d)")
    return _bounded(total, text)


def _as_float(number: int | float) -> float:
    try:
        return float(number)
    except OverflowError:       # an integer beyond any float
        return math.inf


def _bounded(seconds: float, given: object) -> float:
    if math.isnan(seconds):
        raise ValueError(f"not a duration: {given!r}")
    if seconds < 0:
        raise ValueError(f"negative duration: {given!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{given!r} is longer than 100 years")
    return seconds


@dataclass(frozen=True)
class Settings:
    base_url: str = "https://api.runtype.com"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    concurrency: int = 8
    page_size: int = 100
    max_retries: int = 6
    max_response_bytes: int = 50 * 1024 * 1024
    allow_insecure_http: bool = False
    db_path: str = "syncer.db"
    on_delete: str = "keep"
    status: str = "all"
    surface_ids: tuple[str, ...] = ()
    lookback: float = 600.0
    fetch_details: bool = True
    reconcile_every: float = 86400.0
    max_delete: str = "10%"
    schedule_interval: float = 900.0
    schedule_cron: str | None = None
    schedule_jitter: float = 10.0
    zone: zones.Zone = zones.DEFAULT     # where times are shown to people (not stored)
    config_file: str | None = None
    key_source: str = API_KEY_ENV    # where api_key came from, for errors about it

    def require_key(self) -> str:
        """The key, checked: one that cannot be an HTTP header value is refused here, before
        any request (and without ever printing it)."""
        if not self.api_key:
            raise ConfigError(f"no API key: set {API_KEY_ENV} (or [api].key in the config file)")
        if not all("!" <= c <= "~" for c in self.api_key):
            raise ConfigError(f"{self.key_source} contains characters that cannot be sent in "
                              "an HTTP header (only visible ASCII); check the key")
        return self.api_key


def check_max_delete(text: str, where: str) -> str:
    """A count ("250") or a share of the live mirror ("10%"); ConfigError otherwise."""
    if not re.fullmatch(r"\d{1,12}|(\d{1,3}(\.\d+)?)%", text.strip()) or (
            text.strip().endswith("%") and float(text.strip()[:-1]) > 100):
        raise ConfigError(f"{where}: {text!r} is not a count or a percentage up to 100% "
                          "(e.g. 50 or 10%)")
    return text.strip()


def delete_limit(spec: str, live: int) -> int:
    """How many conversations a run may tombstone out of `live`, by a checked max_delete."""
    if spec.endswith("%"):
        return int(live * float(spec[:-1]) / 100)
    return int(spec)


def _coerce(section: str, key: str, value: object, kind: str, source: str) -> object:
    where = f"[{section}].{key} in {source}"
    if kind in ("str", "secret"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        if "\0" in value:
            raise ConfigError(f"{where}: contains a NUL character")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind == "seconds":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0 < _as_float(value) <= MAX_SECONDS:  # type: ignore[arg-type]
            raise ConfigError(f"{where}: expected a positive number of seconds (at most 100 "
                              f"years), got {value!r}")
        return _as_float(value)  # type: ignore[arg-type]
    if kind == "duration":
        try:
            return parse_duration(value)  # type: ignore[arg-type]
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if kind == "strlist":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(kind)


def read_file(path: Path) -> dict[str, dict[str, object]]:
    """Parse and type-check a config file. Unknown sections or keys are errors."""
    import tomllib    # here: a command run without a config file never needs the parser
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {source} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {source} is not UTF-8 text (byte {e.object[e.start]:#x} "
                          f"at offset {e.start}); save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config file {source} is not valid TOML: arrays or tables nested "
                          "too deeply") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {source}: {e.strerror}") from None
    out: dict[str, dict[str, object]] = {}
    for section, values in data.items():
        if section not in DEFAULTS:
            raise ConfigError(f"unknown section [{section}] in {source} "
                              f"(known: {', '.join(DEFAULTS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {source} must be a table")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"unknown key [{section}].{key} in {source} "
                                  f"(known: {', '.join(DEFAULTS[section])})")
            kind = DEFAULTS[section][key][1]
            out.setdefault(section, {})[key] = _coerce(section, key, value, kind, source)
    if out.get("api", {}).get("key"):
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("config file %s holds an API key and is readable by others; "
                        "chmod 600 it or use %s instead", source, API_KEY_ENV)
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, allow_insecure: bool, source: str) -> str:
    """The base URL, checked; `source` names where it came from in any error."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{source}: {url!r} contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port                              # ValueError unless a number in 0..65535
        (parts.hostname or "").encode("idna")   # UnicodeError for an empty or too long label
    except (ValueError, UnicodeError) as e:
        raise ConfigError(f"{source}: {url!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: not an http(s) URL: {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        if not allow_insecure:
            raise ConfigError(
                f"{source}: plain http to {parts.hostname} would send the key unencrypted; use "
                "https (or pass --allow-insecure-http, or set [api].allow_insecure_http = true)")
        log.warning("INSECURE: sending the API key over plain http to %s", parts.hostname)
    return url.rstrip("/")


def _stripped(env: Mapping[str, object], name: str, label: str | None = None) -> str | None:
    """A value without surrounding whitespace (an env file saved with CRLF line ends gives
    every value a trailing \\r); None when unset or blank."""
    raw = env.get(name)
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    if value and value != raw:
        log.warning("%s has whitespace around it (an env file with CRLF line ends?); "
                    "it was stripped", label or name)
    return value or None


def load(config_path: str | None = None, *, db_path: str | None = None,
         base_url: str | None = None, allow_insecure_http: bool | None = None,
         tz: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings. Flags (db_path, base_url, tz) > environment > file > defaults."""
    env = os.environ if env is None else env
    path = Path(config_path) if config_path else Path(DEFAULT_CONFIG_FILE)
    file_values = read_file(path) if (config_path or path.exists()) else {}
    source = str(path) if file_values or config_path else "defaults"

    def get(section: str, key: str) -> object:
        return file_values.get(section, {}).get(key, DEFAULTS[section][key][0])

    sync_status = get("sync", "status")
    if sync_status not in STATUSES:
        raise ConfigError(f"[sync].status in {source}: {sync_status!r} is not one of "
                          f"{', '.join(STATUSES)}")
    on_delete = get("store", "on_delete")
    if on_delete not in ON_DELETE:
        raise ConfigError(f"[store].on_delete in {source}: {on_delete!r} is not one of "
                          f"{', '.join(ON_DELETE)}")
    page_size = get("api", "page_size")
    if not 1 <= page_size <= 100:  # type: ignore[operator]
        raise ConfigError(f"[api].page_size in {source}: must be 1..100, got {page_size}")
    concurrency = get("api", "concurrency")
    if not 1 <= concurrency <= 64:  # type: ignore[operator]
        raise ConfigError(f"[api].concurrency in {source}: must be 1..64, got {concurrency}")
    if get("api", "max_retries") < 0 or get("api", "max_response_mb") < 1:  # type: ignore[operator]
        raise ConfigError(f"[api].max_retries must be >= 0 and [api].max_response_mb >= 1 "
                          f"in {source}")
    max_delete = check_max_delete(str(get("sync", "max_delete")), f"[sync].max_delete in {source}")
    allow_insecure = (allow_insecure_http if allow_insecure_http is not None
                      else bool(get("api", "allow_insecure_http")))
    env_url = _stripped(env, "RUNTYPE_BASE_URL")
    url_source = ("--base-url" if base_url else "RUNTYPE_BASE_URL" if env_url
                  else f"[api].base_url in {source}" if "base_url" in file_values.get("api", {})
                  else "the default [api].base_url")
    url = check_base_url(str(base_url or env_url or get("api", "base_url")), allow_insecure,
                         url_source)
    zone = display_zone(tz, _stripped(env, TZ_ENV), file_values, source)
    env_key = _stripped(env, API_KEY_ENV)
    file_key = _stripped(file_values.get("api", {}), "key", f"[api].key in {source}")
    return Settings(
        base_url=url,
        api_key=env_key or file_key,
        key_source=f"[api].key in {source}" if file_key and not env_key else API_KEY_ENV,
        timeout=get("api", "timeout"),  # type: ignore[arg-type]
        concurrency=concurrency,  # type: ignore[arg-type]
        page_size=page_size,  # type: ignore[arg-type]
        max_retries=get("api", "max_retries"),  # type: ignore[arg-type]
        max_response_bytes=get("api", "max_response_mb") * 1024 * 1024,  # type: ignore[operator]
        allow_insecure_http=allow_insecure,
        db_path=(db_path or _stripped(env, "SYNCER_DB")
                 or get("store", "path")),  # type: ignore[arg-type]
        on_delete=on_delete,  # type: ignore[arg-type]
        status=sync_status,  # type: ignore[arg-type]
        surface_ids=tuple(get("sync", "surface_ids")),  # type: ignore[arg-type]
        lookback=_as_seconds(get("sync", "lookback")),
        fetch_details=get("sync", "fetch_details"),  # type: ignore[arg-type]
        reconcile_every=_as_seconds(get("sync", "reconcile_every")),
        max_delete=max_delete,
        schedule_interval=_as_seconds(get("schedule", "interval")),
        schedule_cron=get("schedule", "cron"),  # type: ignore[arg-type]
        schedule_jitter=_as_seconds(get("schedule", "jitter")),
        zone=zone,
        config_file=str(path) if file_values or config_path else None,
    )


def display_zone(flag: str | None, env_value: str | None, file_values: dict,
                 source: str) -> zones.Zone:
    """The zone times are shown in: --tz > SYNCER_TZ > [display].tz > UTC; ConfigError naming
    where an unknown zone came from."""
    in_file = file_values.get("display", {}).get("tz")
    spec, where = ((flag, "--tz") if flag is not None else
                   (env_value, TZ_ENV) if env_value else
                   (in_file, f"[display].tz in {source}") if in_file is not None else
                   (zones.UTC, "the default"))
    try:
        return zones.parse_zone(spec)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _as_seconds(value: object) -> float:
    return value if isinstance(value, float) else parse_duration(value)  # type: ignore[arg-type]
