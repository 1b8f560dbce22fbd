"""Canary analysis from real prometheus_client exposition text."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sockact.controller import canary
from sockact.errors import BadInput

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class FakeInstance:
    """An instance's request histogram, exposed the way the runtime exposes it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.hist = Histogram(
            canary.HISTOGRAM,
            "request duration",
            ["status_class"],
            registry=self.registry,
            buckets=BUCKETS,
        )

    def serve(self, n: int, seconds: float, status_class: str = "2xx") -> None:
        for _ in range(n):
            self.hist.labels(status_class).observe(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_parse_and_quantile_follow_histogram_quantile() -> None:
    inst = FakeInstance()
    inst.serve(90, 0.003)
    inst.serve(10, 0.2, "5xx")
    stats = canary.parse_metrics(inst.text())
    assert (stats.requests, stats.errors) == (100, 10)
    assert stats.error_ratio == pytest.approx(0.1)
    # rank 50 falls in the first bucket (0..5 ms): interpolated
    assert stats.quantile(0.5) == pytest.approx(0.005 * 50 / 90)
    # rank 99 falls in (0.1, 0.25]: 90 below, 10 inside
    assert stats.quantile(0.99) == pytest.approx(0.1 + 0.15 * 9 / 10)


def test_a_p99_past_the_last_bucket_is_above_the_highest_bound() -> None:
    """histogram_quantile would say 2.5 s: a floor, not an estimate; the canary says
    "above", and the table shows the floor as such."""
    inst = FakeInstance()
    inst.serve(10, 30.0)
    stats = canary.parse_metrics(inst.text())
    assert stats.quantile(0.99) == float("inf")
    assert canary.Side.of(stats) == canary.Side(10, 0, 0.0, 2500.0, p99_above=True)


def run_window(
    old_rate: tuple[int, float, int], new_rate: tuple[int, float, int]
) -> canary.Verdict:
    """Two colors of two instances each; serve during the window, then compare."""
    old = [FakeInstance(), FakeInstance()]
    new = [FakeInstance(), FakeInstance()]
    for inst in old + new:
        inst.serve(500, 0.004)  # before the window: must not count
    by_address = {f"o{i}": inst for i, inst in enumerate(old)}
    by_address |= {f"n{i}": inst for i, inst in enumerate(new)}

    def during(_seconds: float) -> None:
        for insts, (ok, latency, errors) in ((old, old_rate), (new, new_rate)):
            for inst in insts:
                inst.serve(ok, latency)
                inst.serve(errors, latency, "5xx")

    return canary.run(
        ["o0", "o1"],
        ["n0", "n1"],
        30,
        canary.Thresholds(min_requests=200),
        fetch=lambda address: by_address[address].text(),
        sleep=during,
    )


def test_a_good_release_passes() -> None:
    verdict = run_window((300, 0.004, 0), (300, 0.004, 0))
    assert verdict.ok, verdict.table()
    assert (verdict.old.requests, verdict.new.requests) == (600, 600)
    # the window compared, in wall-clock time: what a load report is aligned with
    assert 0 < verdict.started_at <= verdict.ended_at, verdict


def test_five_percent_errors_only_under_load_fail() -> None:
    verdict = run_window((300, 0.004, 0), (285, 0.004, 15))
    assert not verdict.ok
    assert verdict.new.errors == 30 and "error ratio 5.00%" in verdict.reasons[0]
    assert "FAIL" in verdict.table()


def test_the_table_and_the_reason_show_the_same_error_ratio() -> None:
    """36 errors in 715 requests (5.0349...%): the JSON keeps 5 decimals (0.05035), but the
    table rounded that again to 5.04% beside a reason that said 5.03% (a bad canary on a
    lab host printed both)."""
    verdict = canary.analyse(
        canary.Stats(2122.0, 0.0, {0.005: 2122.0, float("inf"): 2122.0}),
        canary.Stats(715.0, 36.0, {0.005: 715.0, float("inf"): 715.0}),
        canary.Thresholds(min_requests=200),
        15,
    )
    assert "error ratio 5.03% > old 0.00% + 1.00%" in verdict.reasons[0], verdict.reasons
    row = next(line for line in verdict.table().splitlines() if "error ratio" in line)
    assert row.split() == ["error", "ratio", "0.00%", "5.03%"], row


def test_a_tripled_p99_fails() -> None:
    verdict = run_window((300, 0.04, 0), (300, 0.2, 0))
    assert not verdict.ok
    assert any(r.startswith("p99") for r in verdict.reasons), verdict.reasons


def test_too_few_requests_fail_closed() -> None:
    verdict = run_window((50, 0.004, 0), (50, 0.004, 0))
    assert not verdict.ok
    assert all(r.startswith("inconclusive") for r in verdict.reasons)


def test_bad_thresholds_name_the_setting() -> None:
    with pytest.raises(BadInput) as err:
        canary.Thresholds(min_requests=0, max_p99_ratio=0.5)
    assert any("min_requests" in d for d in err.value.details)
    assert any("max_p99_ratio" in d for d in err.value.details)


def test_an_unreachable_instance_fails_closed(capsys: pytest.CaptureFixture[str]) -> None:
    from sockact.cli import main

    rc = main(["canary", "--old", "127.0.0.1:1", "--new", "127.0.0.1:1", "--window", "0.01"])
    assert rc == 7
    assert "cannot read http://127.0.0.1:1/metrics" in capsys.readouterr().err


def test_json_output_carries_the_verdict_and_its_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Ansible role prints and records: the figures and the table for a human."""
    from sockact.cli import main

    verdict = run_window((300, 0.004, 0), (285, 0.004, 15))
    monkeypatch.setattr(canary, "run", lambda *args, **kwargs: verdict)
    argv = ["canary", "--old", "o0", "--new", "n0", "--window", "30", "--json"]
    assert main(argv) == 7
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["new"]["errors"], doc["table"]) == (False, 30, verdict.table())
    assert doc["started_at"] == verdict.started_at and doc["reasons"] == verdict.reasons
