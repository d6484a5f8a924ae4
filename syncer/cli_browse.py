"""Read commands over the local mirror: search, show, conversations, stats, export."""
from __future__ import annotations

from .cli import main  # noqa: F401  (commands attach themselves to the group)
