"""The per-host table of ./deploy reads what real instances log (sockact.controller.journal).

Real ``sockact serve`` processes warm up, serve and drain here; their log lines (stderr
outside systemd: the same MESSAGE, INSTANCE and PHASE that journald gets on a host) are
turned into ``journalctl -o json`` entries and read back. A message changed in
sockact/runtime/lifecycle.py without the parser fails here, not in a lab deploy.
"""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime

from sockact.controller.journal import lives, parse_entries
from tests.integration.support import TEST_APPS, RawConn, ServeFactory, in_flight, poll

APP = ["--app", f"{TEST_APPS}:create_app"]
# setup_logging's stderr format: asctime sockact[pid] instance=I phase=P LEVEL message
_LINE = re.compile(
    r"^(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) sockact\[(?P<pid>\d+)\] "
    r"instance=(?P<instance>\d+) phase=(?P<phase>\w+) (?P<level>[A-Z]+) (?P<message>.*)$"
)


def as_journal(stderr: str, unit: str) -> list[str]:
    """The stderr lines of one instance as the JSON lines journalctl would print."""
    out = []
    when, pid = 0.0, "0"
    for line in stderr.splitlines():
        entry = {"_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": unit.removesuffix(".service")}
        m = _LINE.match(line)
        if m is None:  # a plain stderr line (sockact: error: ...), as journald keeps it
            entry["MESSAGE"] = line
        else:
            when = datetime.strptime(m["when"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            pid = m["pid"]
            entry.update(INSTANCE=m["instance"], PHASE=m["phase"], MESSAGE=m["message"])
        entry.update(__REALTIME_TIMESTAMP=str(int(when * 1e6)), _PID=pid)
        out.append(json.dumps(entry))
    return out


def test_warm_up_ready_and_a_clean_drain_are_read_from_the_log(serve: ServeFactory) -> None:
    sp = serve.start("--drain-timeout", "5", "--idle-grace", "0.2", instance=7, warmup=0.3)
    sp.wait_ready()
    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(15) == 0, sp.output()
    lines = as_journal(sp.stderr(), "api@7.service")
    assert lines, sp.output()
    (life,) = lives(parse_entries(lines))
    assert life.instance == 7
    assert life.warmup_s is not None and life.warmup_s >= 0.3, sp.output()
    assert life.ready is not None and life.drain_start is not None, sp.output()
    assert life.ready <= life.drain_start
    assert life.drain_s is not None and not life.drain_timed_out
    assert life.cut == 0 and life.failure == ""


def test_a_drain_cut_at_drain_timeout_is_counted(serve: ServeFactory) -> None:
    timing = ["--drain-timeout", "0.5", "--idle-grace", "0.2"]
    sp = serve.start(*APP, *timing, demo=False, warmup=None, instance=3)
    sp.wait_ready()
    conn = RawConn(sp.port)
    conn.send_get("/slow?ms=5000")
    poll("the request in flight", lambda: in_flight(sp), 5)
    sp.signal(signal.SIGTERM)
    assert sp.wait_exit(15) == 0, sp.output()
    conn.close()
    (life,) = lives(parse_entries(as_journal(sp.stderr(), "api@3.service")))
    assert life.drain_timed_out and life.drain_s == 0.5, sp.output()
    assert (life.cut_timeout, life.cut) == (1, 1), sp.output()


def test_a_failed_start_is_read_from_the_log(serve: ServeFactory) -> None:
    app = ["--app", f"{TEST_APPS}:answers_500"]
    sp = serve.start(*app, demo=False, warmup=None, instance=2)
    assert sp.wait_exit(15) == 3, sp.output()
    (life,) = lives(parse_entries(as_journal(sp.stderr(), "api@2.service")))
    assert life.ready is None
    assert "health gate" in life.failure, sp.output()
