"""The example apps (not sockact): the catalog depends on its warm-up, the demo reports
the version of its own distribution."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import catalog
import sockact_demo


def test_catalog_refuses_work_until_warm() -> None:
    app = catalog.create_app()
    client = app.test_client()
    assert client.get("/healthz").status_code == 503
    assert client.get("/products/1").status_code == 503
    catalog.warm_up(app)
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json == {"ok": True, "products": 5000, "version": version("catalog-api")}
    assert client.get("/products/42").json["id"] == 42
    assert client.get("/products/999999").status_code == 404
    results = client.get("/search", query_string={"q": "Steel LAMP"}).json["results"]
    assert results and all({"steel", "lamp"} <= set(r["name"].split()) for r in results)
    assert client.get("/search", query_string={"q": "x" * 201}).status_code == 400


def test_demo_reports_its_distribution_version() -> None:
    app = sockact_demo.create_app()
    assert app.test_client().get("/").json["version"] == version("sockact-demo")


def test_the_demo_lock_pins_every_runtime_dependency() -> None:
    """The demo deploy installs with --no-index from wheels of examples/demo/requirements.lock:
    a dependency of sockact or of an example app missing from it fails every deploy."""
    repo = Path(__file__).resolve().parents[2]
    pinned = {
        m.group(1).lower().replace("_", "-")
        for m in re.finditer(
            r"^([A-Za-z0-9_.-]+)==", (repo / "examples/demo/requirements.lock").read_text(), re.M
        )
    }
    for project in (
        "pyproject.toml",
        "examples/demo/pyproject.toml",
        "examples/catalog/pyproject.toml",
    ):
        deps = tomllib.loads((repo / project).read_text())["project"]["dependencies"]
        names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
        assert names - {"sockact"} <= pinned, f"{project}: {sorted(names - pinned)} not in the lock"
