"""Real parts at every edge: a fake registry on a loopback port, SQLite under tmp_path or a
fresh PostgreSQL database (`backend`: SQLite unless a module asks for both, see
`tests.helpers.BOTH_BACKENDS`)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from sync.config import Config, config_from_mapping
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store import Reader, Store, open_reader
from tests.fake_upstream import FakeRegistry
from tests.helpers import build_mirror, no_sleep, open_writer, serving
from tests.pg import PgServer, pg_dsn, pg_server

DATA = Path(__file__).parent / "data"
__all__ = ["pg_dsn", "pg_server"]  # fixtures for every test module (tests/pg.py)


@pytest.fixture(scope="session")
def catalogue() -> list[dict[str, Any]]:
    with (DATA / "registry-2025-12-12.json").open(encoding="utf-8") as f:
        items: list[dict[str, Any]] = json.load(f)["servers"]
    return items


@pytest.fixture
def fake(catalogue: list[dict[str, Any]]) -> FakeRegistry:
    return FakeRegistry(json.loads(json.dumps(catalogue)))


@pytest.fixture
async def fake_url(fake: FakeRegistry) -> AsyncIterator[str]:
    async with serving(fake.app()) as url:
        yield url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store's backend: "sqlite" unless the test is parametrised over both
    (`tests.helpers.BOTH_BACKENDS`)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def storage_section(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `[storage]` of this test's mirror: a file under tmp_path, or a fresh PostgreSQL
    database (its path stays under tmp_path for the files beside a store, such as the
    control socket)."""
    section: dict[str, Any] = {"path": str(tmp_path / "mirror.db")}
    if backend == "postgres":
        section["url"] = request.getfixturevalue("pg_dsn")
    return section


@pytest.fixture
def make_config(storage_section: dict[str, Any]) -> Callable[..., Config]:
    def make(*upstreams: dict[str, Any], **sections: Any) -> Config:
        data: dict[str, Any] = {
            "storage": storage_section,
            "upstreams": [{"page_delay": 0, "retries": 3, **u} for u in upstreams],
            **sections,
        }
        return config_from_mapping(data)

    return make


@pytest.fixture
def config(make_config: Callable[..., Config], fake_url: str) -> Config:
    return make_config({"name": "official", "url": fake_url})


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Store]:
    opened = await open_writer(config.storage)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def engine(config: Config, store: Store, metrics: Metrics) -> AsyncIterator[Engine]:
    made = Engine(config, store, metrics, sleep=no_sleep, backoff=(0.0, 0.0))
    await made.startup()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def reader(config: Config, store: Store) -> AsyncIterator[Reader]:
    opened = await open_reader(config.storage)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="session", autouse=True)
def _tool_storage_outside_the_tree(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hypothesis (in this process and in `st` children) keeps its files in a temporary
    directory: a test run writes nothing into the working tree."""
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp_path_factory.mktemp("hypothesis"))


@pytest.fixture(autouse=True)
def _clean_log_context() -> None:
    structlog.contextvars.clear_contextvars()


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_developer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon honours proxy variables; a developer's own must not route the suite's
    loopback traffic (in this process and the processes it starts). Proxy tests set theirs."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="session")
def mirror_db(tmp_path_factory: pytest.TempPathFactory, catalogue: list[dict[str, Any]]) -> Path:
    """A mirror of the real catalogue, built once; tests copy it before serving it."""
    path = tmp_path_factory.mktemp("mirror") / "mirror.db"
    asyncio.run(build_mirror(path, catalogue))
    return path


@pytest.fixture(scope="session")
def pg_mirror(
    pg_server: PgServer,
    tmp_path_factory: pytest.TempPathFactory,
    catalogue: list[dict[str, Any]],
) -> Iterator[str]:
    """`mirror_db`'s twin in PostgreSQL, built once by the same engine; only served read-only
    (`sync=False`), so tests share it."""
    with pg_server.database() as url:
        path = tmp_path_factory.mktemp("pg-mirror") / "unused.db"
        asyncio.run(build_mirror(path, catalogue, storage_url=url))
        yield url
