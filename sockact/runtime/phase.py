"""The phases of one instance's life: the one list the lifecycle, the admin server, the
logs (``PHASE=``) and ``/metrics`` (``sockact_phase``) share.

``starting -> warming -> ready -> draining -> stopped``, or ``failed`` from any of them.
The values are what ``/live``, ``/ready`` and ``/check`` report as ``"phase"``.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    #: the admin server answers; pre-flight checks (fd limit, listener, port) run
    STARTING = "starting"
    #: the app factory, the warm-up function and the health gate run; no listener yet
    WARMING = "warming"
    #: the listener is open and READY=1 sent: serving
    READY = "ready"
    #: a stop signal came: the listener is closed, open connections finish
    DRAINING = "draining"
    #: the drain ended (or a stop signal came during the warm-up): exiting 0
    STOPPED = "stopped"
    #: the start failed, or the listener broke while serving (then it drains, exits 8)
    FAILED = "failed"
