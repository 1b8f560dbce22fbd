"""/metrics as Prometheus reads it: every series there from the start, requests in their
histogram bucket and status class, no ``instance`` label, build information."""

from __future__ import annotations

import importlib.metadata
import math

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sockact import __version__
from sockact.controller import canary
from sockact.runtime.metrics import (
    BUCKETS,
    NO_STATUS,
    REQUEST_DURATION,
    STATUS_CLASSES,
    Metrics,
    Stopwatch,
    build_labels,
)
from sockact.runtime.phase import Phase

SOCKACT_FAMILIES = {
    REQUEST_DURATION: "histogram",
    "sockact_http_requests": "counter",
    "sockact_http_requests_in_flight": "gauge",
    "sockact_http_open_connections": "gauge",
    "sockact_connections_cut": "counter",
    "sockact_accept_paused": "counter",
    "sockact_phase": "gauge",
    "sockact_warmup_duration_seconds": "gauge",
    "sockact_drain_duration_seconds": "gauge",
    "sockact_build_info": "gauge",
}


def samples(metrics: Metrics) -> list[Sample]:
    return [s for f in text_string_to_metric_families(metrics.render()) for s in f.samples]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """The one sample ``name`` with exactly ``labels``; fails when there is none."""
    found = [s.value for s in samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_every_family_is_there_from_the_start_with_its_type() -> None:
    text = Metrics(3).render()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in SOCKACT_FAMILIES.items():
        assert families.get(name) == kind, (name, families.get(name))
    # the process and platform metrics a Prometheus user expects
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "python_info"):
        assert name in families, sorted(families)


def test_no_label_is_named_instance() -> None:
    """Prometheus adds ``instance`` to every target; one of ours would become
    ``exported_instance``."""
    metrics = Metrics(77)
    metrics.request_started()
    metrics.request_finished(200, 0.01)
    labels = {name for s in samples(metrics) for name in s.labels}
    assert "instance" not in labels, labels
    assert "77" not in {v for s in samples(metrics) for v in s.labels.values()}


def test_a_request_lands_in_its_bucket_status_class_and_status() -> None:
    metrics = Metrics(1)
    for status, seconds in ((200, 0.003), (200, 0.2), (503, 0.004), (NO_STATUS, 30.0)):
        metrics.request_started()
        metrics.request_finished(status, seconds)

    def bucket(klass: str, le: str) -> float:
        return value(metrics, f"{REQUEST_DURATION}_bucket", status_class=klass, le=le)

    assert bucket("2xx", "0.0025") == 0
    assert bucket("2xx", "0.005") == 1  # 3 ms
    assert bucket("2xx", "0.1") == 1
    assert bucket("2xx", "0.25") == 2  # 200 ms
    assert bucket("2xx", "+Inf") == 2
    assert value(metrics, f"{REQUEST_DURATION}_count", status_class="2xx") == 2
    assert math.isclose(value(metrics, f"{REQUEST_DURATION}_sum", status_class="2xx"), 0.203)
    assert value(metrics, f"{REQUEST_DURATION}_count", status_class="5xx") == 1
    # no response written: class and status "none"; past the last bound: +Inf only
    assert bucket("none", repr(BUCKETS[-1])) == 0
    assert bucket("none", "+Inf") == 1
    assert value(metrics, "sockact_http_requests_total", status="200") == 2
    assert value(metrics, "sockact_http_requests_total", status="503") == 1
    assert value(metrics, "sockact_http_requests_total", status="none") == 1
    assert value(metrics, "sockact_http_requests_in_flight") == 0
    for klass in STATUS_CLASSES:  # every class is there, with or without requests
        value(metrics, f"{REQUEST_DURATION}_count", status_class=klass)


def test_in_flight_and_open_connections() -> None:
    metrics = Metrics(1)
    metrics.request_started()
    metrics.request_started()
    metrics.request_finished(200, 0.001)
    metrics.open_connections = lambda: 7
    assert value(metrics, "sockact_http_requests_in_flight") == 1
    assert value(metrics, "sockact_http_open_connections") == 7


def test_the_canary_reads_what_metrics_writes() -> None:
    """``sockact canary`` parses this exposition: requests, 5xx and p99 come through."""
    metrics = Metrics(1)
    for i in range(100):
        metrics.request_started()
        metrics.request_finished(500 if i < 5 else 200, 0.004 if i < 98 else 0.4)
    stats = canary.parse_metrics(metrics.render())
    assert (stats.requests, stats.errors) == (100, 5)
    p99 = stats.quantile(0.99)
    assert p99 is not None and 0.25 < p99 <= 0.5, p99


def test_cut_connections_and_fd_episodes_are_counted() -> None:
    metrics = Metrics(3)
    assert value(metrics, "sockact_connections_cut_total", reason="drain_timeout") == 0
    assert value(metrics, "sockact_connections_cut_total", reason="unread_request") == 0
    assert value(metrics, "sockact_accept_paused_total") == 0
    metrics.connections_cut("drain_timeout", 2)
    metrics.connections_cut("drain_timeout", 1)
    metrics.connections_cut("unread_request", 1)
    metrics.out_of_descriptors()
    assert value(metrics, "sockact_connections_cut_total", reason="drain_timeout") == 3
    assert value(metrics, "sockact_connections_cut_total", reason="unread_request") == 1
    assert value(metrics, "sockact_accept_paused_total") == 1


def test_phase_is_one_of_the_lifecycle_phases_and_only_the_current_one_is_1() -> None:
    metrics = Metrics(1)
    metrics.phase = Phase.DRAINING
    phases = {s.labels["phase"]: s.value for s in samples(metrics) if s.name == "sockact_phase"}
    assert phases == {p.value: (1.0 if p is Phase.DRAINING else 0.0) for p in Phase}
    assert "listening" not in phases  # advertised once, never set


def test_stopwatch_grows_until_stopped() -> None:
    now = [100.0]
    watch = Stopwatch(clock=lambda: now[0])
    assert watch.seconds() == 0  # not started
    watch.start()
    now[0] = 102.5
    assert watch.seconds() == 2.5  # so far
    watch.stop()
    now[0] = 200.0
    assert watch.seconds() == 2.5  # final
    watch.stop()  # a second stop changes nothing
    assert watch.seconds() == 2.5


def test_warmup_and_drain_durations_are_exposed() -> None:
    metrics = Metrics(1)
    now = [0.0]
    metrics.warmup = Stopwatch(clock=lambda: now[0])
    metrics.warmup.start()
    now[0] = 1.25
    metrics.warmup.stop()
    assert value(metrics, "sockact_warmup_duration_seconds") == 1.25
    assert value(metrics, "sockact_drain_duration_seconds") == 0


def test_build_info_names_the_app_distribution_and_its_version() -> None:
    labels = build_labels("sockact_demo.app:create_app", release_digest="sha256:0f1e")
    assert labels == {
        "version": __version__,
        "app": "sockact_demo.app:create_app",
        "app_distribution": "sockact-demo",
        "app_version": importlib.metadata.version("sockact-demo"),
        "release_digest": "sha256:0f1e",
    }
    metrics = Metrics(1)
    metrics.set_build_info(labels)
    assert value(metrics, "sockact_build_info", **labels) == 1


def test_build_info_of_an_app_no_distribution_provides() -> None:
    labels = build_labels("tests.integration.apps:create_app")
    empty = ("", "", "")
    assert (labels["app_distribution"], labels["app_version"], labels["release_digest"]) == empty
    assert labels["version"] == __version__


def test_openmetrics_when_asked_for() -> None:
    metrics = Metrics(1)
    metrics.request_started()
    metrics.request_finished(200, 0.01)
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text"), content_type
    parsed = openmetrics_families(body.decode())  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed}
    assert families[REQUEST_DURATION].type == "histogram"
    assert families["sockact_build"].type == "info"
    body, content_type = metrics.exposition(None)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_instances_in_one_process_have_registries_of_their_own() -> None:
    one, two = Metrics(1), Metrics(2)
    one.request_started()
    one.request_finished(200, 0.01)
    assert value(one, f"{REQUEST_DURATION}_count", status_class="2xx") == 1
    assert value(two, f"{REQUEST_DURATION}_count", status_class="2xx") == 0
