"""Alembic environment of the store.

Essence passes an open connection (inside its own transaction) in ``config.attributes["connection"]``;
run from the ``alembic`` command line, the URL comes from ``ESSENCE_STORE_URL``. Logging is left alone.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from essence.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = os.environ.get("ESSENCE_STORE_URL")
    if not url:
        raise SystemExit(
            "set ESSENCE_STORE_URL to the store to migrate (e.g. sqlite:////path/essence.sqlite)"
        )
    with create_engine(url).begin() as conn:
        _run(conn)
