"""A mirror belongs to one upstream: the API base URL it was made from and the account behind
the key, recorded on its first sync.

The account is recorded as a fingerprint that does not reveal the key: an HMAC-SHA256 of the
key under a random salt of this mirror (never the key, never a plain hash of it, which could
be matched against a leaked key elsewhere). A sync, verify or daemon run against another base
URL is refused before anything is written; a different key on the same base URL (keys get
rotated) is accepted with a warning, and the new key is recorded after its run. The upstream
is recorded once a run has read a list page from it. `syncer sync --rebind` moves a mirror.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from urllib.parse import urlsplit

from .config import Settings
from .errors import StoreError
from .store import Store

log = logging.getLogger(__name__)

STATE_URL = "upstream_url"
STATE_SALT = "upstream_salt"
STATE_ACCOUNT = "upstream_account"


class UpstreamMismatch(StoreError):
    """The mirror was made from another upstream (exit 2, nothing written)."""


def canonical_url(url: str) -> str:
    """A base URL as compared: scheme and host lower-cased, default port and trailing slash
    dropped."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    if ":" in host:                       # an IPv6 literal
        netloc = f"[{host}]" if port in (None, default) else f"[{host}]:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def fingerprint(key: str, salt: str) -> str:
    return hmac.new(bytes.fromhex(salt), key.encode("utf-8"), hashlib.sha256).hexdigest()


def check(store: Store, settings: Settings, *, rebind: bool = False) -> None:
    """Before a run writes anything: refuse (UpstreamMismatch) a mirror made from another base
    URL unless `rebind`, and warn once of another key on the same one."""
    url = canonical_url(settings.base_url)
    mine = store.get_state(STATE_URL)
    if mine is not None and mine != url:
        if not rebind:
            raise UpstreamMismatch(
                f"this mirror was made from {mine}, not {url}: refusing to use it with another "
                "API (pass --db for a new mirror, or run `syncer sync --rebind` to move this one)")
        log.warning("rebinding this mirror from %s to %s: this run walks the whole list there "
                    "and marks what it does not find deleted (within [sync].max_delete)",
                    mine, url)
        return
    salt, account = store.get_state(STATE_SALT), store.get_state(STATE_ACCOUNT)
    if salt and account and not hmac.compare_digest(account,
                                                    fingerprint(settings.require_key(), salt)):
        log.warning("the API key differs from the one this mirror was last synced with (a "
                    "rotated key is fine; another account's key is not)")


def record(store: Store, settings: Settings) -> None:
    """After a run the API answered: this mirror belongs to this base URL and account."""
    url = canonical_url(settings.base_url)
    salt = store.get_state(STATE_SALT) or secrets.token_hex(16)
    account = fingerprint(settings.require_key(), salt)
    if store.get_state(STATE_URL) == url and store.get_state(STATE_ACCOUNT) == account:
        return
    with store.transaction():
        store.set_state(STATE_URL, url)
        store.set_state(STATE_SALT, salt)
        store.set_state(STATE_ACCOUNT, account)
