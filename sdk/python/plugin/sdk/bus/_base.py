from __future__ import annotations

from typing import Any


def unavailable(name: str) -> NotImplementedError:
    return NotImplementedError(f"{name} arrives with the message plane (not available in neko yet)")


class BusClient:
    """Base of the `ctx.bus.*` clients."""

    bus_name = "bus"

    def __init__(self, ctx: Any = None):
        self.ctx = ctx

    def _unavailable(self, method: str) -> NotImplementedError:
        return unavailable(f"ctx.bus.{self.bus_name}.{method}")
