"""Filters of the sockact role's switch (tasks/switch.yml): how long a step took."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def seconds(delta: Any) -> float:
    """Seconds of a command result's ``delta`` (``H:MM:SS.ffffff``); 0.0 when there is none
    (a skipped task)."""
    if not isinstance(delta, str) or delta.count(":") != 2:
        return 0.0
    hours, minutes, secs = delta.split(":")
    try:
        return round(int(hours) * 3600 + int(minutes) * 60 + float(secs), 2)
    except ValueError:
        return 0.0


def steps(pairs: Any) -> str:
    """`` (start 1.5 s, canary 30.0 s)`` from ``[[name, delta], ...]``: the steps that
    ran (a skipped one has no delta), or "" when none did."""
    done = []
    for name, delta in pairs or []:
        secs = seconds(delta)
        if secs > 0:
            done.append(f"{name} {secs:.1f} s")
    return f" ({', '.join(done)})" if done else ""


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"sockact_seconds": seconds, "sockact_steps": steps}
