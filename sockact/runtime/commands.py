"""The ``serve``, ``check-config`` and ``print-config`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sockact.runtime import config
from sockact.runtime.config import SETTINGS, Config


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, metavar="FILE", help="TOML file with settings (flat keys)"
    )
    group = parser.add_argument_group(
        "settings", "each also as a TOML key or as SOCKACT_<KEY>; flags win over env over file"
    )
    for key, setting in SETTINGS.items():
        # Flags are passed as strings and converted by config.load, so a bad flag is
        # reported like a bad file value, together with every other problem.
        group.add_argument(
            setting.flag, dest=key, metavar=key.upper(), help=setting.help_text("serve")
        )


def _load(args: argparse.Namespace) -> Config:
    flags = {key: getattr(args, key) for key in SETTINGS}
    return config.load(args.config, flags=flags)


def _serve(args: argparse.Namespace) -> int:
    from sockact.runtime.lifecycle import Instance

    return Instance(_load(args)).run()


def _check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"sockact: configuration of instance {cfg.instance} is valid")
    return 0


def _print(args: argparse.Namespace) -> int:
    sys.stdout.write(config.describe(_load(args)))
    return 0


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``check-config`` and ``print-config``."""
    serve = sub.add_parser(
        "serve",
        help="run one instance: admin server, warm-up, listen, READY=1; drain on SIGTERM",
        description=(
            "Run one instance of a WSGI app. Order: admin server up (/live, /ready, /metrics), "
            "app factory and warm-up, main listener (inherited from systemd or SO_REUSEPORT), "
            "READY=1. SIGTERM/SIGINT/SIGQUIT drain: stop accepting, finish in-flight and "
            "pipelined requests, answer the last with Connection: close, close idle "
            "keep-alive connections after idle_grace; a second stop signal exits 130 at once. "
            "SIGHUP/SIGUSR1/SIGUSR2 are logged and ignored."
        ),
        epilog="example: sockact serve --app sockact_demo:create_app "
        "--warmup sockact_demo:warmup --instance 1 --port 8080",
    )
    _add_settings(serve)
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate the settings and exit (2 when invalid)")
    _add_settings(check)
    check.set_defaults(func=_check)

    show = sub.add_parser(
        "print-config", help="print the merged settings and where each value came from"
    )
    _add_settings(show)
    show.set_defaults(func=_print)
