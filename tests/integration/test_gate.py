"""The health gate: after the warm-up and before the listener opens, the instance sends
one request to ``check_path`` through its own app, in-process. A broken release fails
with exit 3 and one line saying why, and its port never accepts a connection."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.support import (
    TEST_APPS,
    NotifySocket,
    PortWatch,
    ServeFactory,
    connect_state,
    free_port_pair,
    http_json,
)

MakeNotify = Callable[..., NotifySocket]


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("not_callable", "returned a dict, not a WSGI callable"),
        ("answers_500", "GET / answered 500"),
        ("raises", "GET / raised RuntimeError: broken release"),
    ],
)
def test_broken_release_fails_the_gate_and_never_takes_a_connection(
    serve: ServeFactory, notify_socket: MakeNotify, factory: str, reason: str
) -> None:
    port, admin_port = free_port_pair()
    ns = notify_socket(f"{factory}.sock")
    with PortWatch(port) as watch:
        sp = serve.start(
            "--app",
            f"{TEST_APPS}:{factory}",
            # a warm-up that returns fine: the app is broken, not its warm-up
            "--warmup",
            f"{TEST_APPS}:warmup",
            port=port,
            admin_port=admin_port,
            demo=False,
            warmup=None,
            env={"NOTIFY_SOCKET": str(ns.path), "WARMUP": "1"},
        )
        code = sp.wait_exit(20)
    assert code == 3, sp.output()
    errors = sp.log_lines("sockact: error:")
    assert len(errors) == 1, sp.output()
    assert "health gate" in errors[0] and reason in errors[0], errors
    assert "Traceback" not in sp.stderr(), sp.output()
    assert len(watch.results) > 10  # the watch ran for the whole life of the process
    assert set(watch.results) == {"refused"}, sorted(set(watch.results))
    assert not [m for m in ns.snapshot() if "READY" in m.fields], ns.snapshot()


def test_check_status_sets_what_the_gate_accepts(serve: ServeFactory) -> None:
    app = ["--app", f"{TEST_APPS}:answers_404"]
    default = serve.start(*app, demo=False, warmup=None)  # 404 is below 500: accepted
    default.wait_ready()
    assert http_json(default.port, "/")[0] == 404

    strict = serve.start(*app, "--check-status", "200-399", demo=False, warmup=None)
    assert strict.wait_exit(15) == 3, strict.output()
    (line,) = strict.log_lines("sockact: error:")
    assert "GET / answered 404" in line and "check_status = 200-399" in line, line
    assert connect_state(strict.port) == "refused"


def test_gate_uses_check_path(serve: ServeFactory) -> None:
    sp = serve.start(
        "--app", f"{TEST_APPS}:create_app", "--check-path", "/nowhere", demo=False, warmup=None
    )
    sp.wait_ready()  # /nowhere answers 404: accepted by default
    sp2 = serve.start(
        "--app",
        f"{TEST_APPS}:create_app",
        "--check-path",
        "/nowhere",
        "--check-status",
        "200",
        demo=False,
        warmup=None,
    )
    assert sp2.wait_exit(15) == 3, sp2.output()
    assert "GET /nowhere answered 404" in sp2.stderr(), sp2.output()


def test_gate_that_hangs_runs_out_of_warmup_timeout(serve: ServeFactory) -> None:
    port, admin_port = free_port_pair()
    with PortWatch(port) as watch:
        sp = serve.start(
            "--app",
            f"{TEST_APPS}:create_app",
            "--check-path",
            "/slow?ms=60000",
            "--warmup-timeout",
            "1.5",
            port=port,
            admin_port=admin_port,
            demo=False,
            warmup=None,
        )
        assert sp.wait_exit(15) == 3, sp.output()
    (line,) = sp.log_lines("sockact: error:")
    assert "health gate did not finish within warmup_timeout = 1.5 s" in line, line
    assert set(watch.results) == {"refused"}, sorted(set(watch.results))
