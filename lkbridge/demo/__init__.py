"""`lkbridge demo`: the whole stack on this machine (LiveKit server, broker, agent, daemon)."""

from __future__ import annotations

from lkbridge.demo.replies import demo_reply
from lkbridge.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "demo_reply", "run_demo"]
