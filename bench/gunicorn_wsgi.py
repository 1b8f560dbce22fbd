"""The demo app for gunicorn, warmed up at import: gunicorn loads it in each worker.

``gunicorn --pythonpath bench gunicorn_wsgi:app``: every worker imports this module, so
every worker spends DEMO_WARMUP seconds (default 1) before it can answer, which is
what sockact's warm-up-before-listen order avoids.
"""

from __future__ import annotations

from flask import Flask

from sockact_demo import create_app, warmup

app: Flask = create_app()
warmup(app)
