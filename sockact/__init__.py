"""sockact: zero-downtime upgrades of a WSGI app on systemd hosts.

``sockact.runtime`` is what runs on a host (``sockact serve``); ``sockact.controller`` is
what an operator runs (``sockact units render``, ``sockact probe``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sockact")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0.0.0+unknown"
