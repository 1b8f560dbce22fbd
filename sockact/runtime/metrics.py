"""Counters shared by the server threads and the admin server, rendered for Prometheus."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from sockact.runtime.phase import Phase

#: why the drain closed a connection that still had work on it
CUT_REASONS = ("drain_timeout", "unread_request")


class Metrics:
    """Thread-safe request counters and the current phase of one instance."""

    def __init__(self, instance: int) -> None:
        self.instance = instance
        self._lock = threading.Lock()
        self._by_status: Counter[int] = Counter()
        self._in_flight = 0
        self._cut: Counter[str] = Counter()
        self._out_of_descriptors = 0
        self.phase = Phase.STARTING
        #: set by the server adapter once it runs; returns the number of open connections
        self.open_connections: Callable[[], int] = lambda: 0

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self, status: int) -> None:
        with self._lock:
            self._in_flight -= 1
            self._by_status[status] += 1

    def connections_cut(self, reason: str, count: int) -> None:
        """Count connections the drain closed with work left on them (by ``reason``)."""
        with self._lock:
            self._cut[reason] += count

    def out_of_descriptors(self) -> None:
        """Count an episode of accept() failing for want of file descriptors."""
        with self._lock:
            self._out_of_descriptors += 1

    def cut_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._cut)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def by_status(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_status)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        label = f'instance="{self.instance}"'
        out = [
            "# HELP sockact_requests_total Requests answered, by HTTP status.",
            "# TYPE sockact_requests_total counter",
        ]
        for status, count in sorted(self.by_status().items()):
            out.append(f'sockact_requests_total{{{label},status="{status}"}} {count}')
        out += [
            "# HELP sockact_requests_in_flight Requests being handled now.",
            "# TYPE sockact_requests_in_flight gauge",
            f"sockact_requests_in_flight{{{label}}} {self.in_flight}",
            "# HELP sockact_open_connections Client connections open on the main listener.",
            "# TYPE sockact_open_connections gauge",
            f"sockact_open_connections{{{label}}} {self.open_connections()}",
            "# HELP sockact_connections_cut_total Connections the drain closed with a request "
            "unfinished (drain_timeout) or unread (unread_request).",
            "# TYPE sockact_connections_cut_total counter",
        ]
        cut = self.cut_by_reason()
        for reason in CUT_REASONS:
            out.append(
                f'sockact_connections_cut_total{{{label},reason="{reason}"}} {cut.get(reason, 0)}'
            )
        with self._lock:
            episodes = self._out_of_descriptors
        out += [
            "# HELP sockact_accept_paused_total Episodes of accept() paused for want of file "
            "descriptors (EMFILE, ENFILE).",
            "# TYPE sockact_accept_paused_total counter",
            f"sockact_accept_paused_total{{{label}}} {episodes}",
            "# HELP sockact_phase Current lifecycle phase (1 for the current one).",
            "# TYPE sockact_phase gauge",
        ]
        for phase in Phase:
            value = 1 if phase == self.phase else 0
            out.append(f'sockact_phase{{{label},phase="{phase}"}} {value}')
        return "\n".join(out) + "\n"
