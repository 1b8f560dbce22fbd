"""sockact: zero-downtime upgrades of a WSGI app on systemd hosts."""

__version__ = "0.1.0"
