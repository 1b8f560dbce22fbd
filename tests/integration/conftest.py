"""Fixtures for integration tests that run real ``sockact serve`` processes.

The helpers they use (process wrappers, raw HTTP connections, the NOTIFY_SOCKET receiver,
network namespaces) are in ``support.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.support import Netns, NotifySocket, ServeFactory
from tests.needs import need_root, need_tool


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    factory = ServeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[Callable[..., NotifySocket]]:
    made: list[NotifySocket] = []

    def make(name: str = "notify.sock", watch_port: int | None = None) -> NotifySocket:
        ns = NotifySocket(tmp_path / name, watch_port)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A network namespace of this test's own, with ``lo`` up; deleted afterwards."""
    need_root("creates a network namespace")
    need_tool("ip", "iproute2")
    ns = Netns.create()
    try:
        yield ns
    finally:
        ns.delete()
