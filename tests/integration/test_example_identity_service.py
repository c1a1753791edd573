"""examples/identity_service: a user and its user_created event commit together, or neither."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from examples.identity_service.app import create_app
from outbox.settings import Settings
from tests.conftest import sqlalchemy_url


@pytest.fixture
async def client(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(create_async_engine(sqlalchemy_url(database_url, "asyncpg")))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://identity") as http:
            yield http


async def test_create_user_emits_user_created(
    client: httpx.AsyncClient, asyncpg_conn: asyncpg.Connection
) -> None:
    response = await client.post(
        "/users",
        json={"email": "ada@example.com", "name": "Ada", "role": "admin"},
        headers={"X-Correlation-ID": "req-ada", "X-User-ID": "admin-1"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["x-correlation-id"] == "req-ada"
    user = response.json()
    row = await asyncpg_conn.fetchrow("SELECT * FROM outbox_events")
    assert row is not None
    assert str(row["event_id"]) == user["event_id"]
    assert (row["stream"], row["event_type"], row["priority"]) == ("identity", "user_created", 2)
    assert row["correlation_id"] == "req-ada"
    assert row["user_id"] == "admin-1"
    assert row["aggregate_id"] == str(user["id"])
    assert json.loads(row["payload"]) == {
        "user_id": str(user["id"]),
        "email": "ada@example.com",
        "name": "Ada",
        "role": "admin",
    }
    assert (await client.get(f"/users/{user['id']}")).json()["email"] == "ada@example.com"


async def test_a_failed_insert_leaves_no_event(
    client: httpx.AsyncClient, asyncpg_conn: asyncpg.Connection
) -> None:
    first = await client.post("/users", json={"email": "bob@example.com", "name": "Bob"})
    assert first.status_code == 201
    duplicate = await client.post("/users", json={"email": "bob@example.com", "name": "Bob 2"})
    assert duplicate.status_code == 409
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM outbox_events") == 1
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM identity_users") == 1


async def test_invalid_input_is_refused_before_anything_is_written(
    client: httpx.AsyncClient, asyncpg_conn: asyncpg.Connection
) -> None:
    response = await client.post("/users", json={"email": "not-an-email", "name": "X"})
    assert response.status_code == 422
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM outbox_events") == 0
