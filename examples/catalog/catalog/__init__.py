"""An example app deployed with sockact: a product catalog API.

It is not part of sockact: its own distribution (``catalog-api``), its own version (in its
own metadata), its own data. Its warm-up does what a real one does: it loads the products
(here from a CSV file shipped with the app; in real life a database) and builds the search
index. The app depends on it: before the warm-up, ``/healthz`` answers 503 and every other
route 503 too, so sockact's health gate (``check_path = "/healthz"``) refuses a release
whose warm-up did not really happen.

Run it by hand::

    sockact serve --app catalog:create_app --warmup catalog:warm_up --instance 1 \\
        --check-path /healthz
    curl localhost:8080/products/42
    curl 'localhost:8080/search?q=steel+lamp'

Environment: ``CATALOG_DB_DELAY`` (seconds the data source takes to answer, default 0:
stands in for a slow database at start).
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import PackageNotFoundError, version

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

_WORD = re.compile(r"[a-z0-9]+")


def app_version() -> str:
    """The version of the installed ``catalog-api`` distribution."""
    try:
        return version("catalog-api")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Catalog:
    """The products and a word index over their names; empty until :meth:`load`."""

    products: dict[int, dict[str, object]] = field(default_factory=dict)
    index: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    loaded_at: float | None = None

    def load(self) -> None:
        delay = float(os.environ.get("CATALOG_DB_DELAY", "0") or 0)
        if delay > 0:
            time.sleep(delay)
        text = resources.files("catalog").joinpath("products.csv").read_text(encoding="utf-8")
        products: dict[int, dict[str, object]] = {}
        index: dict[str, set[int]] = defaultdict(set)
        for row in csv.DictReader(text.splitlines()):
            pid = int(row["id"])
            products[pid] = {
                "id": pid,
                "name": row["name"],
                "price_cents": int(row["price_cents"]),
                "stock": int(row["stock"]),
            }
            for word in _WORD.findall(row["name"].lower()):
                index[word].add(pid)
        if not products:
            raise RuntimeError("catalog: the product source is empty")
        self.products, self.index = products, index
        self.loaded_at = time.time()

    @property
    def ready(self) -> bool:
        return self.loaded_at is not None

    def search(self, query: str, limit: int = 20) -> list[dict[str, object]]:
        words = _WORD.findall(query.lower())
        if not words:
            return []
        hits = set.intersection(*(self.index.get(w, set()) for w in words))
        return [self.products[i] for i in sorted(hits)[:limit]]


def create_app() -> Flask:
    """The Flask app; cheap. :func:`warm_up` loads the data it needs."""
    app = Flask("catalog")
    catalog = Catalog()
    app.extensions["catalog"] = catalog
    started = time.time()

    @app.before_request
    def _require_warm() -> ResponseReturnValue | None:
        if not catalog.ready and request.path != "/healthz":
            return jsonify(error="catalog not loaded yet"), 503
        return None

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        if not catalog.ready:
            return jsonify(ok=False, error="catalog not loaded"), 503
        return jsonify(ok=True, products=len(catalog.products), version=app_version())

    @app.get("/")
    def index() -> ResponseReturnValue:
        return jsonify(
            app="catalog",
            version=app_version(),
            pid=os.getpid(),
            instance=os.environ.get("SOCKACT_INSTANCE"),
            products=len(catalog.products),
            up_seconds=round(time.time() - started, 1),
        )

    @app.get("/products/<int:pid>")
    def product(pid: int) -> ResponseReturnValue:
        found = catalog.products.get(pid)
        if found is None:
            abort(404)
        return jsonify(found)

    @app.get("/search")
    def search() -> ResponseReturnValue:
        query = request.args.get("q", "")
        if len(query) > 200:
            return jsonify(error="q is longer than 200 characters"), 400
        return jsonify(query=query, results=catalog.search(query))

    return app


def warm_up(app: Flask) -> None:
    """Load the products and build the index (what sockact runs before listening)."""
    catalog = app.extensions["catalog"]
    assert isinstance(catalog, Catalog)
    catalog.load()
