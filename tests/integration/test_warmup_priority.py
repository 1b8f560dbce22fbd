"""The warm-up runs at a lower priority, so that a new release's start leaves the CPU to
the instances that serve; the server threads keep the process's own."""

from __future__ import annotations

import os

from tests.integration.support import TEST_APPS, ServeFactory, http_json

APP = ["--app", f"{TEST_APPS}:reports_warmup_nice"]


def test_the_factory_and_warm_up_run_at_warmup_nice(serve: ServeFactory) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    default = serve.start(*APP, demo=False, warmup=None)
    default.wait_ready()
    assert http_json(default.port, "/")[1] == {"factory_nice": max(own, 10)}
    # the main thread, which serves, was not lowered
    assert os.getpriority(os.PRIO_PROCESS, default.proc.pid) == own

    custom = serve.start(*APP, "--warmup-nice", "15", demo=False, warmup=None)
    custom.wait_ready()
    assert http_json(custom.port, "/")[1] == {"factory_nice": max(own, 15)}

    off = serve.start(*APP, "--warmup-nice", "0", demo=False, warmup=None)
    off.wait_ready()
    assert http_json(off.port, "/")[1] == {"factory_nice": own}
