"""Settings: defaults < config file < environment < command-line flags, frozen once built.

Every key has its default in DEFAULTS below; config.example.toml documents the same keys
(a test checks that the two agree). A ConfigError names the key and the file.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "RUNTYPE_API_KEY"
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
    },
    "schedule": {
        "interval": ("15m", "duration"),
        "cron": (None, "str"),
        "jitter": ("10s", "duration"),
    },
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> float:
    """'90s', '5m', '1h30m', '2d' or a number of seconds -> seconds. ValueError if unparsable."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"negative duration: {text!r}")
        return float(text)
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h, 2d)")
    return total


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
    schedule_interval: float = 900.0
    schedule_cron: str | None = None
    schedule_jitter: float = 10.0
    config_file: str | None = None

    def require_key(self) -> str:
        if not self.api_key:
            raise ConfigError(f"no API key: set {API_KEY_ENV} (or [api].key in the config file)")
        return self.api_key


def _coerce(section: str, key: str, value: object, kind: str, source: str) -> object:
    where = f"[{section}].{key} in {source}"
    if kind in ("str", "secret"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}: expected a positive number of seconds, got {value!r}")
        return float(value)
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
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {source} is not valid TOML: {e}") from None
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"[api].base_url in {source}: not an http(s) URL: {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        if not allow_insecure:
            raise ConfigError(
                f"[api].base_url in {source}: plain http to {parts.hostname} would send the key "
                "unencrypted; use https (or set [api].allow_insecure_http = true)")
        log.warning("INSECURE: sending the API key over plain http to %s", parts.hostname)
    return url.rstrip("/")


def load(config_path: str | None = None, *, db_path: str | None = None,
         base_url: str | None = None, allow_insecure_http: bool | None = None,
         env: dict[str, str] | None = None) -> Settings:
    """Build Settings. Flags (db_path, base_url) > environment > file > defaults."""
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
    allow_insecure = (allow_insecure_http if allow_insecure_http is not None
                      else bool(get("api", "allow_insecure_http")))
    url = base_url or env.get("RUNTYPE_BASE_URL") or get("api", "base_url")
    url = check_base_url(str(url), allow_insecure, "--base-url" if base_url else source)
    return Settings(
        base_url=url,
        api_key=env.get(API_KEY_ENV) or get("api", "key"),  # type: ignore[arg-type]
        timeout=get("api", "timeout"),  # type: ignore[arg-type]
        concurrency=concurrency,  # type: ignore[arg-type]
        page_size=page_size,  # type: ignore[arg-type]
        max_retries=get("api", "max_retries"),  # type: ignore[arg-type]
        max_response_bytes=get("api", "max_response_mb") * 1024 * 1024,  # type: ignore[operator]
        allow_insecure_http=allow_insecure,
        db_path=db_path or env.get("SYNCER_DB") or get("store", "path"),  # type: ignore[arg-type]
        on_delete=on_delete,  # type: ignore[arg-type]
        status=sync_status,  # type: ignore[arg-type]
        surface_ids=tuple(get("sync", "surface_ids")),  # type: ignore[arg-type]
        lookback=_as_seconds(get("sync", "lookback")),
        fetch_details=get("sync", "fetch_details"),  # type: ignore[arg-type]
        reconcile_every=_as_seconds(get("sync", "reconcile_every")),
        schedule_interval=_as_seconds(get("schedule", "interval")),
        schedule_cron=get("schedule", "cron"),  # type: ignore[arg-type]
        schedule_jitter=_as_seconds(get("schedule", "jitter")),
        config_file=str(path) if file_values or config_path else None,
    )


def _as_seconds(value: object) -> float:
    return value if isinstance(value, float) else parse_duration(value)  # type: ignore[arg-type]
