"""``sockact-lab up | list | down | image``: the test-host tool's command line (the only exit)."""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from sockact_lab import image
from sockact_lab.errors import EXIT_INTERNAL, LabError
from sockact_lab.lab import DEFAULT_DIR, IMAGE_MINIMAL, IMAGE_MODES, Lab, is_running


def _print_progress(msg: str) -> None:
    print(msg, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(Path(args.dir))
    hosts = lab.up(args.hosts, progress=_print_progress, image=args.image)
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
    info = lab.info()
    base = info["image"] + (f" ({info['image_name']})" if info["image_name"] else "")
    proxy = f", apt proxy pid {info['apt_proxy_pid']}" if info["apt_proxy_pid"] else ""
    print(f"image: {base}{proxy}")
    print(f"inventory: {lab.inventory_path}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    lab = Lab(Path(args.dir))
    lab.down(progress=_print_progress, purge=args.purge)
    print(f"lab in {lab.directory} is down")
    return 0


def _cmd_image_build(args: argparse.Namespace) -> int:
    built = image.ensure_image(image_dir=Path(args.image_dir), progress=_print_progress)
    print(built.summary())
    print(f"rootfs: {built.rootfs}")
    return 0


def _cmd_image_list(args: argparse.Namespace) -> int:
    image_dir = Path(args.image_dir)
    found = image.list_images(image_dir)
    if not found:
        print(f"no images in {image_dir} ('sockact-lab image build' builds one)")
        return 0
    used = image.images_in_use(image_dir)
    current = image.DEFAULT_RECIPE.name
    for img in found:
        marks = [
            m for m, on in (("current", img.name == current), ("in use", img.name in used)) if on
        ]
        print(img.summary() + (f" [{', '.join(marks)}]" if marks else ""))
    return 0


def _cmd_image_prune(args: argparse.Namespace) -> int:
    keep = () if args.all else (image.DEFAULT_RECIPE.name,)
    removed = image.prune_images(keep, image_dir=Path(args.image_dir), progress=_print_progress)
    print(f"removed {len(removed)} image(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockact-lab",
        description="Throwaway hosts with a real systemd and sshd (systemd-nspawn), for "
        "sockact's Ansible runs and tests. Needs root. Not part of sockact's wheel.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad usage, 5 a host did not boot, "
        "answer or go away, or the image did not build.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="ACTION")

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir", default=str(DEFAULT_DIR), help=f"lab directory (default {DEFAULT_DIR})"
        )

    up = sub.add_parser("up", help="boot hosts and write inventory.ini")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    up.add_argument(
        "--image",
        choices=IMAGE_MODES,
        default=IMAGE_MINIMAL,
        help="minimal (default): hosts boot on the minimal Debian 12 image, built once and "
        "cached, like fresh servers; clone: on an overlay of this machine's / (faster, "
        "not realistic: the machine's python, venv module and checkout are visible)",
    )
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

    img = sub.add_parser("image", help="build, list or prune the minimal host image")
    img_sub = img.add_subparsers(dest="image_command", required=True, metavar="IMAGE_ACTION")
    for name, func, text in (
        ("build", _cmd_image_build, "build the image (once; reused while its recipe holds)"),
        ("list", _cmd_image_list, "show the cached images"),
        ("prune", _cmd_image_prune, "remove images of older recipes that no host uses"),
    ):
        p = img_sub.add_parser(name, help=text)
        p.add_argument(
            "--image-dir",
            default=str(image.IMAGE_DIR),
            help=f"where images are cached (default {image.IMAGE_DIR})",
        )
        if name == "prune":
            p.add_argument("--all", action="store_true", help="the current recipe's image too")
        p.set_defaults(func=func)
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
