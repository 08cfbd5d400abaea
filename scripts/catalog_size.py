"""The catalog's PostgreSQL bytes per video (search_app/capacity.py's POSTGRES_BYTES_PER_VIDEO), measured.

    python scripts/catalog_size.py [N]      (default 20000; a throwaway PostgreSQL as tests/postgres.py starts it)

N videos are added, their jobs finished with metadata and their speech and text runs finished, through Catalog's
own methods; then `vacuum analyze` and the database's growth.
"""
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import text

from schema.catalog import Catalog, ExpertState
from tests.postgres import start_server, stop_server

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
server = start_server()
try:
    url = server.create_database()
    cat = Catalog(url)
    with cat.sessions.begin() as s:
        base = s.execute(text("select pg_database_size(current_database())")).scalar()
    t = time.time()
    for i in range(N):
        d = hashlib.sha256(str(i).encode()).hexdigest()
        cat.add_video(sha256=d, title=f"holiday clip {i:06d}.mp4", stored_path=f"/videos/{d[:2]}/{d}.mp4", owned=True,
                      size_bytes=25_000_000, tag="beach")
    while jobs := cat.claim_jobs(500, "w"):
        cat.finish_jobs([(j.id, {"duration": 42.0, "fps": 30.0, "width": 1280, "height": 720}) for j in jobs],
                        experts=["speech", "text"])
    while runs := cat.claim_expert_runs(64, "w"):
        for r in runs:
            cat.finish_expert_run(r.id, ExpertState.DONE, segments=8)
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        c.execute("vacuum analyze")
        size = c.execute("select pg_database_size(current_database())").fetchone()[0]
        tables = c.execute("select relname, pg_total_relation_size(oid) from pg_class where relkind = 'r' "
                           "and relnamespace = 'public'::regnamespace order by 2 desc").fetchall()
    print(f"N={N} took {time.time()-t:.0f}s  db grew {(size-base)/1e6:.1f} MB -> {(size-base)/N:.0f} B/video")
    for name, b in tables[:8]:
        print(f"  {name}: {b/N:.0f} B/video")
finally:
    stop_server(server)
