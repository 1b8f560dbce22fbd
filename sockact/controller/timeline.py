"""A PNG timeline of a probe run: who answered, how fast, what failed, what each host did.

Plotting is an optional extra: ``pip install 'sockact[plot]'`` (matplotlib; Debian's
``python3-matplotlib`` works too). The runtime wheel never imports this module's
matplotlib: it is imported when a timeline is drawn, and a missing one is one clear
error (:class:`sockact.errors.MissingExtra`, exit 2).

Input: the probe's JSON report (``sockact probe --json FILE``, :meth:`Report.to_dict`)
and a list of events ``(time, host, label)``, e.g. "new color started", "READY",
"old color stopping", "stopped". The picture, top to bottom:

1. requests per 100 ms by their due time, stacked by the version that answered, with
   failed requests stacked on top by failure kind (and marked above the bars);
2. latency per second: p99 (line) and max (dots), log scale;
3. one lane per host with its events.

From a script::

    sockact probe http://h1:8080/ --rate 50% --duration 120 --json probe.json
    sockact timeline probe.json --events events.json --out upgrade.png
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sockact.errors import BadInput, MissingExtra

#: colors of the versions that answered, in order of first appearance (colorblind-safe)
_VERSION_COLORS = (
    "#4477aa",
    "#66ccee",
    "#228833",
    "#ccbb44",
    "#aa3377",
    "#bbbbbb",
    "#332288",
    "#117733",
)
_FAILURE_COLORS = {
    "refused": "#e41a1c",
    "reset": "#ff7f00",
    "empty_reply": "#a65628",
    "truncated": "#f781bf",
    "timeout": "#984ea3",
    "http_5xx": "#b2182b",
    "http_other": "#fdae61",
    "bad_response": "#8c510a",
    "overload": "#525252",
    "internal": "#000000",
    "other": "#999999",
}
_EVENT_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
_EVENT_COLORS = (
    "#ee7733",
    "#009988",
    "#cc3311",
    "#0077bb",
    "#ee3377",
    "#33bbee",
    "#bbbbbb",
    "#000000",
)


@dataclass(frozen=True)
class Event:
    """Something a host did, ``t`` seconds after the probe started; with ``duration``, a
    span (a warm-up, a drain) drawn as a bar from ``t`` in the host's lane."""

    t: float
    host: str
    label: str
    duration: float | None = None


def events_from(items: Iterable[Mapping[str, Any]], started_at: float) -> list[Event]:
    """Events from dicts with ``host``, ``label`` and either ``t`` (seconds after the
    probe started) or ``time`` (Unix time, aligned with the report's ``started_at``), and
    optionally ``duration`` (seconds: a span)."""
    out = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            raise BadInput(f"timeline: event {n}: not an object")
        host, label = item.get("host"), item.get("label")
        if not isinstance(host, str) or not isinstance(label, str):
            raise BadInput(f"timeline: event {n}: needs string 'host' and 'label'")
        if isinstance(item.get("t"), int | float):
            t = float(item["t"])
        elif isinstance(item.get("time"), int | float):
            t = float(item["time"]) - started_at
        else:
            raise BadInput(f"timeline: event {n}: needs a number 't' or 'time'")
        duration = item.get("duration")
        if duration is not None and (
            not isinstance(duration, int | float) or not 0 <= duration < math.inf
        ):
            raise BadInput(f"timeline: event {n}: 'duration' must be a number of seconds >= 0")
        out.append(Event(t, host, label, None if duration is None else float(duration)))
    return out


def load_events(path: Path, started_at: float) -> list[Event]:
    """Events from a JSON list, or JSON lines, of event objects (see :func:`events_from`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"timeline: cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text) if text.lstrip().startswith("[") else None
        items = doc if doc is not None else [json.loads(line) for line in text.splitlines() if line]
    except ValueError as exc:
        raise BadInput(f"timeline: {path}: not JSON or JSON lines: {exc}") from None
    return events_from(items, started_at)


def load_report(path: Path) -> dict[str, Any]:
    """A probe JSON report, checked for what the timeline needs."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"timeline: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BadInput(f"timeline: {path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("buckets"), list):
        raise BadInput(
            f"timeline: {path}: not a probe report with buckets (sockact probe --json FILE)"
        )
    return doc


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra(
            "timeline: matplotlib is not installed: pip install 'sockact[plot]' "
            "(or apt install python3-matplotlib)"
        ) from None
    return Figure, FigureCanvasAgg


def render_timeline(
    report: Mapping[str, Any],
    events: Sequence[Event | tuple[float, str, str]] = (),
    out: Path | str = "timeline.png",
    title: str | None = None,
) -> Path:
    """Draw ``report`` (a probe JSON report) and ``events`` into the PNG ``out``.

    ``events``: :class:`Event` or ``(t, host, label)``, ``t`` in seconds after the probe
    started (``Probe.elapsed()`` at the time, or Unix time - ``report["started_at"]``).
    """
    figure_cls, canvas_cls = _matplotlib()
    from matplotlib import ticker

    evs = [e if isinstance(e, Event) else Event(float(e[0]), e[1], e[2]) for e in events]
    out = Path(out)
    buckets: list[Mapping[str, Any]] = list(report.get("buckets") or [])
    width_s = float(report.get("bucket_s") or 0.1)
    ts = [float(b["t"]) for b in buckets]
    versions: list[str] = []
    per_version: dict[str, list[int]] = {}
    kinds: list[str] = []
    per_kind: dict[str, list[int]] = {}
    unsampled: list[int] = []
    for n, b in enumerate(buckets):
        sampled = 0
        for _inst, ver, count in b.get("answered", []):
            key = str(ver)
            if key not in per_version:
                versions.append(key)
                per_version[key] = [0] * len(buckets)
            per_version[key][n] += int(count)
            sampled += int(count)
        unsampled.append(int(b.get("ok", 0)) - sampled)
        for kind, count in (b.get("failures") or {}).items():
            if kind not in per_kind:
                kinds.append(kind)
                per_kind[kind] = [0] * len(buckets)
            per_kind[kind][n] += int(count)
    hosts: list[str] = []
    for e in evs:
        if e.host not in hosts:
            hosts.append(e.host)
    labels: list[str] = []
    for e in evs:
        if e.label not in labels:
            labels.append(e.label)

    lanes = max(1, len(hosts))
    fig = figure_cls(figsize=(12, 7.5 + 0.25 * lanes), dpi=100, layout="constrained")
    canvas_cls(fig)
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2, 0.6 + 0.35 * lanes])
    ax_req = fig.add_subplot(grid[0])
    ax_lat = fig.add_subplot(grid[1], sharex=ax_req)
    ax_ev = fig.add_subplot(grid[2], sharex=ax_req)

    # 1. requests per bucket, stacked: versions, unanswered-by-JSON, failures by kind
    xs = [t for t in ts for _ in (0, 1)]
    xs = [x + (width_s if i % 2 else 0.0) for i, x in enumerate(xs)]

    def steps(values: Sequence[int]) -> list[int]:
        return [v for v in values for _ in (0, 1)]

    layers: list[tuple[str, list[int], str]] = []
    for i, ver in enumerate(versions):
        layers.append((ver, per_version[ver], _VERSION_COLORS[i % len(_VERSION_COLORS)]))
    if any(unsampled):
        layers.append(("ok (no version in body)", unsampled, "#dddddd"))
    for kind in kinds:
        layers.append((f"FAILED {kind}", per_kind[kind], _FAILURE_COLORS.get(kind, "#999999")))
    if buckets and layers:
        ax_req.stackplot(
            xs,
            *[steps(v) for _, v, _ in layers],
            labels=[name for name, _, _ in layers],
            colors=[c for _, _, c in layers],
            linewidth=0,
        )
    top = max((sum(v[n] for _, v, _ in layers) for n in range(len(buckets))), default=0)
    for kind in kinds:
        marks = [ts[n] + width_s / 2 for n, c in enumerate(per_kind[kind]) if c]
        ax_req.scatter(
            marks,
            [top * 1.1 + 1] * len(marks),
            marker="v",
            s=30,
            color=_FAILURE_COLORS.get(kind, "#999999"),
            zorder=3,
        )
    ax_req.set_ylim(0, top * 1.4 + 2)  # room for the failure marks and the legend
    ax_req.set_ylabel(f"requests / {width_s * 1000:.0f} ms")
    if layers:
        ax_req.legend(loc="upper left", fontsize=8, ncol=min(6, len(layers)), framealpha=0.85)
    ax_req.grid(axis="y", alpha=0.3)

    # 2. latency per second
    series: list[Mapping[str, Any]] = list(report.get("series") or [])
    sx = [float(s["t"]) for s in series if s.get("ok")]
    p99 = [max(float(s.get("p99_ms", 0.0)), 0.01) for s in series if s.get("ok")]
    mx = [max(float(s.get("max_ms", 0.0)), 0.01) for s in series if s.get("ok")]
    if sx:
        ax_lat.step([*sx, sx[-1] + 1], [*p99, p99[-1]], where="post", color="#333333", label="p99")
        ax_lat.scatter([x + 0.5 for x in sx], mx, s=10, color="#cc3311", label="max", zorder=3)
        ax_lat.set_yscale("log")
        ax_lat.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_lat.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_lat.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax_lat.legend(loc="upper left", fontsize=8)
    ax_lat.set_ylabel("latency per s, ms")
    ax_lat.grid(alpha=0.3, which="both")
    if report.get("mode") == "open":
        ax_lat.set_title("latency from each request's due time", fontsize=9, loc="right")

    # 3. events per host: spans as bars, then the points on top
    for i, label in enumerate(labels):
        mine = [e for e in evs if e.label == label]
        color = _EVENT_COLORS[i % len(_EVENT_COLORS)]
        for e in mine:
            if e.duration is not None:
                lane = hosts.index(e.host)
                ax_ev.broken_barh(
                    [(e.t, max(e.duration, 0.0))], (lane - 0.3, 0.6), color=color, alpha=0.35
                )
        ax_ev.scatter(
            [e.t for e in mine],
            [hosts.index(e.host) for e in mine],
            marker=_EVENT_MARKERS[i % len(_EVENT_MARKERS)],
            s=45,
            color=color,
            label=label,
            zorder=3,
        )
    for e in evs:
        for ax in (ax_req, ax_lat):
            ax.axvline(e.t, color="#888888", alpha=0.35, linewidth=0.8)
    ax_ev.set_yticks(range(lanes), hosts or [""])
    ax_ev.set_ylim(-0.6, lanes - 0.4)
    ax_ev.invert_yaxis()
    if labels:
        # below the lanes, so that it hides none of them
        ax_ev.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.45 / (0.6 + 0.35 * lanes)),
            fontsize=8,
            ncol=min(5, len(labels)),
            frameon=False,
        )
    ax_ev.set_xlabel("seconds since the probe started")
    ax_ev.grid(axis="x", alpha=0.3)
    end = max([*(t + width_s for t in ts), *(e.t + (e.duration or 0.0) for e in evs), 0.0]) or 1.0
    start = min([0.0, *(e.t for e in evs)])
    ax_ev.set_xlim(start, end + 0.02 * (end - start))

    fig.suptitle(title or default_title(report), fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png")
    except OSError as exc:
        raise BadInput(f"timeline: cannot write {out}: {exc.strerror or exc}") from None
    return out


def default_title(report: Mapping[str, Any]) -> str:
    """The date, the targets, the load and its figures (two lines)."""
    started = report.get("started_at")
    when = (
        datetime.fromtimestamp(float(started), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if isinstance(started, int | float) and started > 0
        else "?"
    )
    if report.get("mode") == "open":
        load = f"open loop {float(report.get('rate') or 0):,.0f} req/s ({report.get('schedule')})"
    else:
        load = (
            f"closed loop, {report.get('keepalive_clients')} keep-alive + "
            f"{report.get('new_conn_clients')} new-connection clients"
        )
    lat = report.get("latency_ms") or {}
    failed = int(report.get("failed", 0))
    fails = ", ".join(f"{k} {v}" for k, v in (report.get("failures") or {}).items() if v)
    targets = report.get("targets") or []
    shown = " ".join(targets[:3]) + (f" (+{len(targets) - 3})" if len(targets) > 3 else "")
    return (
        f"{when}  {shown}\n{load}: {int(report.get('total', 0)):,} requests, "
        f"{failed:,} failed{f' ({fails})' if fails else ''}, p99 "
        f"{float(lat.get('p99', math.nan)):.1f} ms, max {float(lat.get('max', math.nan)):.0f} ms"
    )


# -- command line -----------------------------------------------------------------


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sockact timeline REPORT.json --out FILE.png [--events FILE]``."""
    p = sub.add_parser(
        "timeline",
        help="draw a probe JSON report and host events as a PNG (needs sockact[plot])",
        description=(
            "Draw the requests per 100 ms stacked by the version that answered, failures "
            "by kind, p99 and max latency per second, and each host's events, as a PNG. "
            "Needs matplotlib: pip install 'sockact[plot]'."
        ),
        epilog=(
            "Events file: a JSON list (or JSON lines) of objects with 'host', 'label' and "
            "either 't' (seconds after the probe started) or 'time' (Unix time), and "
            "optionally 'duration' (seconds: a span, drawn as a bar). "
            "Exit codes: 0 written; 2 bad input, or matplotlib missing."
        ),
    )
    p.add_argument("report", type=Path, metavar="REPORT.json", help="sockact probe --json FILE")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    p.add_argument("--events", type=Path, metavar="FILE", help="host events (see below)")
    p.add_argument("--title", help="instead of the date, targets and figures")
    p.set_defaults(func=run_timeline)


def run_timeline(args: argparse.Namespace) -> int:
    """Handler of ``sockact timeline``."""
    report = load_report(args.report)
    events: list[Event] = []
    if args.events is not None:
        events = load_events(args.events, float(report.get("started_at") or 0.0))
    out = render_timeline(report, events, args.out, args.title)
    print(f"timeline: wrote {out}")
    return 0
