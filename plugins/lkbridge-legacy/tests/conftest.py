"""Shares lkbridge's real-server fixtures (LiveKit server, scripted agent) with this plugin's tests."""

from __future__ import annotations

import sys
from pathlib import Path

# The fixtures live in the lkbridge checkout this plugin sits in (plugins/lkbridge-legacy/).
_CHECKOUT = Path(__file__).resolve().parents[3]
if (_CHECKOUT / "tests" / "conftest.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

from tests.conftest import (  # noqa: E402
    livekit_server,
    log_dir,
    scripted_agent,
    unique_name,
)

__all__ = ["livekit_server", "log_dir", "scripted_agent", "unique_name"]
