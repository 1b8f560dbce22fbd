"""The open-loop probe against a real ``sockact serve`` (demo app) that stalls.

The stall is real: the server process is stopped (SIGSTOP) for 1 s, as a long GC pause,
a swapped-out process or a frozen VM would stop it. New connections complete in the
kernel's accept queue and requests wait in socket buffers; nothing is answered until
SIGCONT. An open-loop probe must show that second in the latency of every request that
fell due during it, and must still send exactly rate x duration requests.
"""

from __future__ import annotations

import signal
import time

from sockact.controller.probe import Probe, Target
from tests.integration.support import ServeFactory

RATE = 100
SECONDS = 4.0


def test_a_stopped_server_shows_in_open_loop_latencies(serve: ServeFactory) -> None:
    sp = serve.start(warmup=0.2)
    sp.wait_ready()
    target = Target("127.0.0.1", sp.port, "/")
    with Probe([target], rate=RATE, max_duration=SECONDS, timeout=5.0) as p:
        time.sleep(1.5)
        t_stop = p.elapsed()
        sp.signal(signal.SIGSTOP)
        try:
            time.sleep(1.0)
        finally:
            sp.signal(signal.SIGCONT)
        t_cont = p.elapsed()
        assert p.wait(15), "the probe did not end"
    r = p.report
    assert r is not None
    table = r.format_table()
    assert r.total == RATE * SECONDS, table  # no slot skipped, stall or not
    assert r.failed == 0, table
    assert r.samples and all(inst == str(1) for inst, _ in r.samples), table
    # the request due right after SIGSTOP waited until SIGCONT
    assert r.max_ms >= (t_cont - t_stop) * 1000 - 20, table
    assert r.p99_ms >= 900, table
    stalled = p.snapshot(window=(round(t_stop + 0.1, 1), round(t_stop + 0.5, 1)))
    assert stalled.total == RATE * 0.4 and stalled.p50_ms >= 450, stalled.format_table()
