"""How the fake Runtype API behaves where the real one is undocumented or unreliable.

A `Behaviour` may be mutated by tests while the server runs; every request reads it afresh.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

LIST_ORDERS = ("updated_desc", "created_desc", "last_message_desc", "id_asc", "shuffled")
# Wire spellings of timestamps (timestamps.py); "mixed" picks one of the first three per
# timestamp, "rfc3339" one of every other style.
TIMESTAMP_STYLES = ("z", "fraction", "offset", "mixed", "lower", "long_fraction", "numoffset",
                    "rfc3339")
# When the list carries pagination.totalCount/totalPages: only when asked with
# includeCount=true (the vendor's API), always (older servers), or never (a server that
# ignores the parameter).
COUNT_MODES = ("on_request", "always", "never")
MESSAGE_PAGINGS = ("none", "offset")
RATE_RESETS = ("delay", "epoch")
FAULT_KINDS = (
    "500", "503", "429", "429_no_retry_after", "timeout", "drop", "invalid_json", "html_200",
)


@dataclass
class Behaviour:
    list_order: str = "updated_desc"
    default_status: str = "open"
    message_paging: str = "none"
    message_bumps_updated: bool = False
    timestamp_style: str = "z"
    count_mode: str = "on_request"
    extra_fields: bool = True
    latency_ms: float = 0
    fault_rate: float = 0.0
    fault_kinds: tuple = ("500", "503", "429", "timeout", "drop", "invalid_json")
    fault_seed: int = 0
    fault_timeout_s: float = 5.0
    rate_limit: int | None = None
    rate_window: float = 10.0
    rate_reset: str = "delay"        # X-RateLimit-Reset as seconds ("delay") or a Unix time
    retry_after_header: bool = True
    date_header: bool = True         # False: answers without a Date header
    api_key: str = "rt_test_simulator"
    forbidden: bool = False
    on_request: Callable[[str, str, dict], None] | None = None
    max_page_size: int = 100

    # Runtime state, guarded by the Upstream's lock.
    _fault_rng: random.Random | None = field(default=None, init=False, repr=False, compare=False)
    _fault_rng_seed: int | None = field(default=None, init=False, repr=False, compare=False)
    _window: deque = field(default_factory=deque, init=False, repr=False, compare=False)

    def fault_rng(self) -> random.Random:
        """The fault RNG, re-seeded whenever `fault_seed` changes."""
        if self._fault_rng is None or self._fault_rng_seed != self.fault_seed:
            self._fault_rng = random.Random(self.fault_seed)
            self._fault_rng_seed = self.fault_seed
        return self._fault_rng

    def reset_rate_window(self) -> None:
        self._window.clear()
