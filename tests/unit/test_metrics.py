"""The Prometheus text of /metrics: every series present from the start, counters add up."""

from __future__ import annotations

from sockact.runtime.metrics import Metrics


def test_cut_connections_and_fd_episodes_are_counted() -> None:
    metrics = Metrics(3)
    text = metrics.render()
    assert 'sockact_connections_cut_total{instance="3",reason="drain_timeout"} 0' in text
    assert 'sockact_connections_cut_total{instance="3",reason="unread_request"} 0' in text
    assert 'sockact_accept_paused_total{instance="3"} 0' in text

    metrics.connections_cut("drain_timeout", 2)
    metrics.connections_cut("drain_timeout", 1)
    metrics.connections_cut("unread_request", 1)
    metrics.out_of_descriptors()
    text = metrics.render()
    assert 'sockact_connections_cut_total{instance="3",reason="drain_timeout"} 3' in text
    assert 'sockact_connections_cut_total{instance="3",reason="unread_request"} 1' in text
    assert 'sockact_accept_paused_total{instance="3"} 1' in text
    assert "# TYPE sockact_connections_cut_total counter" in text
