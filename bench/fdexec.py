"""Hand a listening socket to a program the way systemd does, then exec it.

    python bench/fdexec.py FD NAME -- PROGRAM [ARGS...]

Moves FD to fd 3 and sets LISTEN_FDS=1, LISTEN_PID=<this pid> and LISTEN_FDNAMES=NAME
before exec: exec keeps the pid, so LISTEN_PID is the program's own pid, as
sd_listen_fds() requires. The benchmark binds one socket and starts every instance
through this, so several instances share one listening socket without systemd.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: fdexec.py FD NAME -- PROGRAM [ARGS...]")
    fd, name, program = int(argv[0]), argv[1], argv[3:]
    if fd != 3:
        os.dup2(fd, 3)  # inheritable by default
        os.close(fd)
    else:
        os.set_inheritable(3, True)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=name)
    os.execv(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
