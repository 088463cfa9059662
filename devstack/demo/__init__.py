"""`lkbridge demo`: the whole stack on this machine (LiveKit server, broker, agent, daemon)."""

from __future__ import annotations

from devstack.demo.replies import demo_reply
from devstack.demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "demo_reply", "run_demo"]
