"""The identity service example: a FastAPI app publishing through the transactional outbox.

``POST /users`` inserts the user and emits ``user_created`` in one transaction: both commit or
neither does. The relay publishes the event to ``opsconductor:identity:events``; the
``user_directory`` projection (projections/examples/users.py) builds a read model from it.

Run it (after ``outbox migrate``)::

    uvicorn --factory examples.identity_service.app:create_app --port 8000
    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada", "role": "admin"}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import outbox
from outbox import CorrelationIdMiddleware, MessagePriority
from outbox.settings import get_settings


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "identity_users"
    __table_args__ = (UniqueConstraint("email", name="identity_users_email_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(50), default="viewer")


class NewUser(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(default="viewer", pattern="^(viewer|operator|admin)$")


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    role: str
    event_id: str | None = None


class UserCreated(BaseModel):
    """The schema of ``user_created`` data, checked by emit() before anything is sent."""

    user_id: str
    email: str
    name: str
    role: str


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


# FastAPI resolves annotations by name in this module: dependencies live at module level.
DbSession = Annotated[AsyncSession, Depends(get_session)]


def create_app(engine: AsyncEngine | None = None) -> FastAPI:
    engine = engine or create_async_engine(get_settings().sqlalchemy_url(driver="asyncpg"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    outbox.register_schema("user_created", UserCreated, service="identity")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:  # the example's own table (a real service migrates)
            await conn.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(title="identity service (example)", lifespan=lifespan)
    app.state.sessions = sessions
    app.add_middleware(CorrelationIdMiddleware)

    @app.post("/users", status_code=201)
    async def create_user(body: NewUser, db: DbSession, request: Request) -> UserOut:
        try:
            async with db.begin():
                user = User(email=body.email, name=body.name, role=body.role)
                db.add(user)
                await db.flush()  # assigns user.id; a duplicate email fails here
                event = await outbox.emit(
                    db,
                    service="identity",
                    event_type="user_created",
                    data={
                        "user_id": str(user.id),
                        "email": user.email,
                        "name": user.name,
                        "role": user.role,
                    },
                    priority=MessagePriority.HIGH,
                    aggregate_id=user.id,
                    user_id=request.headers.get("x-user-id"),
                )
        except IntegrityError:
            raise HTTPException(409, f"a user with email {body.email} exists") from None
        return UserOut(
            id=user.id,
            email=user.email,
            name=user.name,
            role=user.role,
            event_id=str(event.event_id),
        )

    @app.get("/users/{user_id}")
    async def get_user(user_id: int, db: DbSession) -> UserOut:
        user = (await db.execute(select(User).where(User.id == user_id))).scalar_one_or_none()
        if user is None:
            raise HTTPException(404, "no such user")
        return UserOut(id=user.id, email=user.email, name=user.name, role=user.role)

    return app
