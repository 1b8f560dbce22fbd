"""The example apps (not sockact): the catalog depends on its warm-up, the demo reports
the version of its own distribution."""

from __future__ import annotations

import re
import time
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import TestResponse

import catalog
import sockact_demo


def json_of(response: TestResponse) -> Any:
    """The response's JSON body (fails when it has none)."""
    body = response.json
    assert body is not None, response.data
    return body


def test_catalog_refuses_work_until_warm() -> None:
    app = catalog.create_app()
    client = app.test_client()
    assert client.get("/healthz").status_code == 503
    assert client.get("/products/1").status_code == 503
    catalog.warm_up(app)
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json == {"ok": True, "products": 5000, "version": version("catalog-api")}
    assert json_of(client.get("/products/42"))["id"] == 42
    assert client.get("/products/999999").status_code == 404
    results = json_of(client.get("/search", query_string={"q": "Steel LAMP"}))["results"]
    assert results and all({"steel", "lamp"} <= set(r["name"].split()) for r in results)
    assert client.get("/search", query_string={"q": "x" * 201}).status_code == 400


def test_demo_reports_its_distribution_version() -> None:
    app = sockact_demo.create_app()
    assert json_of(app.test_client().get("/"))["version"] == version("sockact-demo")


def test_demo_error_rate_fails_that_share_of_requests_never_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_ERROR_RATE", "0.05")
    client = sockact_demo.create_app().test_client()
    statuses = [client.get("/").status_code for _ in range(200)]
    assert statuses.count(500) == 10 and statuses.count(200) == 190
    assert statuses[:19] == [200] * 19 and statuses[19] == 500
    # other routes keep working
    assert client.get("/slow", query_string={"ms": "0"}).status_code == 200
    monkeypatch.setenv("DEMO_ERROR_RATE", "2")
    with pytest.raises(ValueError, match="DEMO_ERROR_RATE"):
        sockact_demo.create_app()


def test_demo_without_faults_answers_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_ERROR_RATE", raising=False)
    monkeypatch.setenv("DEMO_DELAY_MS", "20")
    client = sockact_demo.create_app().test_client()
    started = time.monotonic()
    assert {client.get("/").status_code for _ in range(5)} == {200}
    assert time.monotonic() - started >= 0.1  # 5 x 20 ms at least
    assert [sockact_demo.fails(n, 0.0) for n in range(1, 100)] == [False] * 99
    assert [sockact_demo.fails(n, 1.0) for n in range(1, 4)] == [True] * 3


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
