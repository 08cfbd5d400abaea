"""`python -m schema.migrations revision -m "add streams"`: write the next migration script.

Autogenerate compares the models (schema/catalog.py) with a database at head: a throw-away SQLite file unless
`--url` names one (it is upgraded to head first). Review the file it writes: autogenerate misses renames, data
moves and PostgreSQL enum types of new columns.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from schema.migrations import SCRIPT_LOCATION, config, ensure_schema


def new_revision(message: str, *, autogenerate: bool = True, url: str | None = None,
                 script_location: Path = SCRIPT_LOCATION) -> Path:
    """Write the next revision (numbered after the current head) and return its path."""
    latest = ScriptDirectory.from_config(config(script_location=script_location)).get_current_head()
    rev_id = f"{int(latest) + 1:04d}" if latest and latest.isdigit() else None
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(url or f"sqlite:///{tmp}/catalog.db", poolclass=NullPool)
        try:
            ensure_schema(engine, script_location)
            with engine.connect() as conn:
                script = command.revision(config(conn, script_location), message=message,
                                          autogenerate=autogenerate, rev_id=rev_id)
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m schema.migrations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    revision = commands.add_parser("revision", help="write the next migration script")
    revision.add_argument("-m", "--message", required=True, help="what the revision does (also its file name)")
    revision.add_argument("--empty", action="store_true", help="no autogenerate: write upgrade() by hand")
    revision.add_argument("--url", help="compare against this database (upgraded to head first)")
    args = parser.parse_args(argv)
    path = new_revision(args.message, autogenerate=not args.empty, url=args.url)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
