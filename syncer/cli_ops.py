"""Operating commands: daemon, status, verify."""
from __future__ import annotations

from .cli import main  # noqa: F401  (commands attach themselves to the group)
