"""What runs on a host: ``sockact serve`` (settings, lifecycle, server, admin, systemd)."""
