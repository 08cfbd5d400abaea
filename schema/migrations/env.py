"""Alembic environment. Migrations run only on a connection handed over by `schema.migrations` (which holds the
migration lock and the transaction), never on a URL read from a file."""

from alembic import context

from schema.catalog import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run catalog migrations through schema.migrations (upgrade(url), or "
                       "`python -m schema.migrations revision -m ...`), not the alembic command line")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters most things by copying the table; batch mode writes that for us
    compare_type=True,
)
with context.begin_transaction():  # a no-op inside the caller's transaction, which commits
    context.run_migrations()
