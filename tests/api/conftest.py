"""API fixtures: the app over a fresh heap in tmp_path, driven in-process through httpx's
ASGITransport with the lifespan run (the store opens and closes as under uvicorn)."""

from __future__ import annotations

import httpx
import pytest
from apiutil import TOKEN, small_settings

from service.app import create_app
from service.client import AsyncClient


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def app(tmp_path):
    return create_app(small_settings(tmp_path / "api.heap"))


@pytest.fixture
async def api(app):
    """service.client.AsyncClient over the app (`api.http` is the raw httpx client)."""
    async with app.router.lifespan_context(app), AsyncClient(
            "http://test", transport=httpx.ASGITransport(app=app)) as c:
        yield c
    assert app.state.service.store.closed      # the lifespan closed the heap


@pytest.fixture
async def token_api(tmp_path):
    app = create_app(small_settings(tmp_path / "auth.heap", api_token=TOKEN))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            base_url="http://test", transport=httpx.ASGITransport(app=app)) as c:
        yield c
