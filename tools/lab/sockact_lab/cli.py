"""``sockact-lab up | list | down``: the test-host tool's command line (the only exit)."""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from sockact_lab.errors import EXIT_INTERNAL, LabError
from sockact_lab.lab import DEFAULT_DIR, Lab, is_running


def _print_progress(msg: str) -> None:
    print(msg, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(Path(args.dir))
    hosts = lab.up(args.hosts, progress=_print_progress)
    for h in hosts:
        print(f"{h.name} {h.address}")
    print(f"inventory: {lab.inventory_path}")
    print(f"ssh: {shlex.join(hosts[0].ssh_args())}" if hosts else "no hosts")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    lab = Lab(Path(args.dir))
    hosts = lab.hosts()
    if not hosts:
        print(f"no hosts in {lab.directory}")
        return 0
    for h in hosts:
        state = "running" if is_running(h) else "stopped"
        print(f"{h.name} {h.address} {state} nspawn={h.nspawn_pid} init={h.init_pid}")
    print(f"inventory: {lab.inventory_path}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    lab = Lab(Path(args.dir))
    lab.down(progress=_print_progress, purge=args.purge)
    print(f"lab in {lab.directory} is down")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockact-lab",
        description="Throwaway hosts with a real systemd and sshd (systemd-nspawn), for "
        "sockact's Ansible runs and tests. Needs root. Not part of sockact's wheel.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad usage, 5 a host did not boot, "
        "answer or go away.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="ACTION")

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir", default=str(DEFAULT_DIR), help=f"lab directory (default {DEFAULT_DIR})"
        )

    up = sub.add_parser("up", help="boot hosts and write inventory.ini")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    add_dir(up)
    up.set_defaults(func=_cmd_up)

    ls = sub.add_parser("list", help="show the lab's hosts")
    add_dir(ls)
    ls.set_defaults(func=_cmd_list)

    down = sub.add_parser("down", help="stop hosts and remove mounts, netns and files")
    add_dir(down)
    down.add_argument(
        "--purge", action="store_true", help="also remove the key and the lab directory"
    )
    down.set_defaults(func=_cmd_down)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except LabError as exc:
        print(f"sockact-lab: error: {exc.message}", file=sys.stderr)
        for line in exc.details:
            print(f"sockact-lab: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"sockact-lab: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
