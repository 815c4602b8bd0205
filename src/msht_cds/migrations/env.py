"""Alembic environment, driven from `Storage.migrate()` with no alembic.ini.

`Storage.migrate()` passes its own connection (with the SQLite pragmas already applied) in
`config.attributes["connection"]`. For developer use (`alembic revision --autogenerate`) a
`sqlalchemy.url` main option is accepted instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from msht_cds.storage import _normalise_url, metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = create_engine(_normalise_url(url))
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
run_migrations()
