"""Security, through the real path: hostile upload names, what the app serves, escaping, optional login, defaults.

Two real servers: `vidsearch serve` as a subprocess with VIDSEARCH_AUTH pointing at a file of accounts (default host,
its own Milvus Lite server, a worker), and the app from `create_app` under uvicorn in a thread (no login) for the
refusals that must hold for anyone. Requests are real HTTP; paths that HTTP clients would normalise are sent raw.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest.library import MAX_TITLE, Outcome, enqueue_file, safe_title
from schema.catalog import Catalog
from schema.settings import Settings
from search_app import fusion
from tests.conftest import cli_env
from tests.procs import free_port, serve_in_thread, vidsearch_cmd, wait_http
from tests.videos import write_video

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ALICE = ("alice", "s3cret:with,comma and spaces")  # ':' and ',' only work from a file: the file form is used
BOB = ("bob", "hunter2")
SCRIPT_NAME = "<script>window.__xss=1</script>.mp4"
IMG_NAME = '<img src=x onerror="window.__xss=1">.mp4'
SECRET = b"TOP-SECRET-MARKER-7f3a"
LEAKS = (b"SQLite format 3", b"root:x:0:0", SECRET)

# Client-supplied names (title=) and the display title each must become. None: only the generic checks apply.
HOSTILE_TITLES = {
    "../../etc/passwd.mp4": "passwd.mp4",
    "/etc/passwd.mp4": "passwd.mp4",
    "..\\..\\windows\\system32\\evil.mp4": "evil.mp4",
    "evil\x00.mp4\x00.sh": "evil.mp4.sh",
    "line1\nline2\r\n.mp4": "line1 line2 .mp4",
    "tab\tand\x0bvtab  .mp4\n": "tab and vtab .mp4",
    "para\u2029graph\u2028sep.mp4": "para graph sep.mp4",
    "clip\u202e4pm.exe": "clip4pm.exe",  # right-to-left override: removed, so the title reads as it really is
    "فيديو عائلي ‏סרטון.mp4": "فيديو عائلي סרטון.mp4",
    "x" * 400 + ".mp4": "x" * (MAX_TITLE - 4) + ".mp4",
    "..": "..",
    "/": "untitled",
    SCRIPT_NAME: "script>.mp4",  # a name is cut at its last '/': a title is never a path
    IMG_NAME: IMG_NAME,
}
# File names that can exist on a Linux disk (no '/' or NUL), enqueued with their own name as title (the CLI path).
HOSTILE_DISK_NAMES = {
    "..\u202egnp.mp4": "..gnp.mp4",
    "new\nline.mp4": "new line.mp4",
    IMG_NAME: IMG_NAME,
    "\u05e1\u05e8\u05d8\u05d5\u05df.mp4": "\u05e1\u05e8\u05d8\u05d5\u05df.mp4",
    "y" * 249 + ".webm": "y" * 249 + ".webm",  # Linux allows 255 bytes; longer titles are tested above
}


# ---------------------------------------------------------------------------------------------------------- helpers

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def raw_get(base_url: str, target: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET with the request target sent exactly as given (httpx and browsers would normalise '..')."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", target, headers={"Authorization": authorization} if authorization else {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_title_is_safe(title: str) -> None:
    assert title and title == title.strip()
    assert len(title) <= MAX_TITLE
    assert "/" not in title and "\\" not in title and "\x00" not in title
    assert all(unicodedata.category(ch)[0] != "C" for ch in title), repr(title)
    assert all(unicodedata.category(ch) not in ("Zl", "Zp") for ch in title), repr(title)


def assert_stored_in_videos_dir(settings: Settings, stored_path: str, sha256: str) -> None:
    stored = Path(stored_path)
    assert stored.is_absolute() and stored.resolve() == stored
    assert stored.parent == settings.videos_dir / sha256[:2], stored
    assert re.fullmatch(rf"{sha256}(\.[a-z0-9]{{1,5}})?", stored.name), stored.name
    assert stored.is_file() and not stored.is_symlink()


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under root (size, mtime), except under `skip`: to prove nothing was written elsewhere."""
    found = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip) or not path.is_file():
            continue
        stat = path.stat()
        found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def distinct_video(path: Path, i: int) -> Path:
    """A real, decodable video whose bytes differ from every other i (so it is never deduplicated)."""
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    codec = {"codec": "libx264"} if path.suffix == ".mp4" else {}
    write_video(path, colour=colours[i % 4], shape=shapes[(i // 4) % 3], seconds=1.0, fps=6 + i, size=64, **codec)
    return path


@contextlib.contextmanager
def app_in_thread(settings: Settings) -> Iterator[str]:
    """The real app of `create_app` under uvicorn on a free loopback port; yields its base URL."""
    from ingest.runtime import Runtime
    from search_app.web import create_app

    runtime = Runtime(settings)
    try:
        with serve_in_thread(create_app(runtime), join_timeout=30) as url:
            yield url
    finally:
        runtime.close()


def gradio_call(client: httpx.Client, api_name: str, data: list) -> list:
    """Run a Gradio event through its HTTP API (POST /gradio_api/call/<name>, then read the event stream)."""
    response = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    with client.stream("GET", f"/gradio_api/call/{api_name}/{event_id}", timeout=120) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                assert event == "complete", line
                return json.loads(line.split(":", 1)[1])
    raise AssertionError("the event stream ended without a result")


# The Search tab's Filters panel as an untouched page sends it: durations, dates, tags; then the Experts panel's
# weights (appearance, speech, text, audio) at their defaults.
NO_FILTERS = [None, None, "", "", []]
DEFAULT_WEIGHTS = list(fusion.DEFAULT_WEIGHTS.values())


def upload_through_gradio(client: httpx.Client, files: list[tuple[str, bytes]]) -> tuple[list[str], list]:
    """POST files to Gradio's upload route under client-chosen names, then press "Add to library" via the API."""
    response = client.post("/gradio_api/upload", files=[("files", (name, data, "video/mp4")) for name, data in files])
    assert response.status_code == 200, response.text
    server_paths = response.json()
    assert len(server_paths) == len(files)
    payload = [{"path": p, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
               for p, (name, _) in zip(server_paths, files, strict=True)]
    return server_paths, gradio_call(client, "do_add", [payload, None])  # None: no tag


def listening_sockets(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, port) of every TCP socket in LISTEN state owned by `pids`, read from /proc."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                    continue
                address_hex, port_hex = fields[1].split(":")
                raw = bytes.fromhex(address_hex)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_loopback_address(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


# --------------------------------------------------------------------------------------------------------- fixtures

@dataclass
class Served:
    url: str
    home: Path
    proc: subprocess.Popen
    log: Path

    @property
    def settings(self) -> Settings:
        return Settings(home=self.home)


@pytest.fixture(scope="module")
def locked(tmp_path_factory, tiny_model) -> Iterator[Served]:
    """`vidsearch serve` with VIDSEARCH_AUTH = a file of accounts, default host, embedded Milvus Lite, a worker."""
    root = tmp_path_factory.mktemp("locked")
    users = root / "users.txt"
    users.write_text(f"# vidsearch accounts\n{ALICE[0]}:{ALICE[1]}\n\n  {BOB[0]}:{BOB[1]}  \n")
    home, log_path, port = root / "home", root / "serve.log", free_port()
    env = cli_env(home, tiny_model, VIDSEARCH_AUTH=str(users))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*vidsearch_cmd(), "serve", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(url + "/", proc)  # the login page is public
        except (RuntimeError, TimeoutError):
            raise RuntimeError("vidsearch serve did not start:\n" + log_path.read_text()[-4000:]) from None
        yield Served(url, home, proc, log_path)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run([*vidsearch_cmd(), "milvus", "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Chromium is required for the browser tests (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# ------------------------------------------------------------------------------------ 1. names never become paths

def test_hostile_names_never_become_paths(settings, runtime, tmp_path):
    """ingest.library.enqueue_file with client-supplied titles (the upload path) and hostile names on disk (the CLI)."""
    sources = tmp_path / "sources"
    sources.mkdir()
    before = tree(tmp_path, skip=(sources,))
    cases = [(distinct_video(sources / f"src{i}.mp4", i), title, expected)
             for i, (title, expected) in enumerate(HOSTILE_TITLES.items())]
    cases += [(distinct_video(sources / name, 100 + i), None, expected)
              for i, (name, expected) in enumerate(HOSTILE_DISK_NAMES.items())]
    for src, title, expected in cases:
        result = enqueue_file(runtime.catalog, settings, src, title=title)
        assert result.outcome is Outcome.QUEUED, (title, result)
        video = runtime.catalog.get_video(result.video_id)
        assert_stored_in_videos_dir(settings, video.stored_path, video.sha256)
        assert Path(video.stored_path).read_bytes() == src.read_bytes()
        assert_title_is_safe(video.title)
        assert video.title == expected, (title, src.name, video.title)
        # The extension survives (long names included), so the browser can tell the media type.
        assert Path(video.stored_path).suffix in ("", Path(expected).suffix)
        if expected.endswith((".mp4", ".webm")):
            assert Path(video.stored_path).suffix == Path(expected).suffix
    # Nothing was written anywhere but the videos folder and the catalog (the only new files outside it).
    after = tree(tmp_path, skip=(sources, settings.videos_dir))
    assert {p for p in after if p not in before} <= {str(settings.home_dir / n) for n in
                                                     ("catalog.db", "catalog.db-wal", "catalog.db-shm",
                                                      "catalog.db.migrate.lock")}
    assert not any(v != after[p] for p, v in before.items() if p in after and "catalog.db" not in p)
    assert not Path("/etc/passwd.mp4").exists() and not (tmp_path / "etc").exists()
    stored = [p for p in settings.videos_dir.rglob("*") if p.is_file()]
    assert len(stored) == len(cases)


def test_hostile_upload_names_through_the_running_app(locked, tmp_path):
    """Gradio's upload route, then the app's "Add to library" event, with names chosen by the client."""
    names = ["../../etc/passwd.mp4", "/etc/passwd.mp4", "tab\tnew\nline\u202e.mp4", "z" * 300 + ".mp4",
             "<b>bold</b>.mp4", "\u0645\u0642\u0637\u0639 \u05e1\u05e8\u05d8.mp4"]
    files = [(name, distinct_video(tmp_path / f"u{i}.mp4", 40 + i).read_bytes()) for i, name in enumerate(names)]
    client = httpx.Client(base_url=locked.url, headers={"Authorization": basic(*BOB)}, timeout=120)
    before = tree(locked.home, skip=(locked.settings.videos_dir,))
    # A name that is nothing but a parent-directory marker is refused by Gradio's upload route outright.
    refused = client.post("/gradio_api/upload", files=[("files", ("..", files[0][1], "video/mp4"))])
    assert refused.status_code == 400
    server_paths, (_tracked, table, _files) = upload_through_gradio(client, files)
    rows = table["data"] if isinstance(table, dict) else table
    assert len(rows) == len(names) and all(row[1] in ("queued", "processing", "ready") for row in rows), rows
    catalog = Catalog(locked.settings.catalog_url)
    try:
        videos = catalog.videos_by_ids([row[2] for row in rows])
        assert len(videos) == len(names)
        for (_, data), row in zip(files, rows, strict=True):
            video = videos[row[2]]
            assert_stored_in_videos_dir(locked.settings, video.stored_path, video.sha256)
            assert Path(video.stored_path).read_bytes() == data
            assert_title_is_safe(video.title)
            assert video.title == safe_title(row[0])  # the status table shows Gradio's stored name
        assert videos[rows[0][2]].title == videos[rows[1][2]].title == "passwd.mp4"
    finally:
        catalog.close()
    # Outside the videos folder only the catalog and the vector store changed; no file is named after the client.
    after = tree(locked.home, skip=(locked.settings.videos_dir,))
    new = [Path(p).relative_to(locked.home) for p in after if p not in before]
    assert all(p.parts[0] in ("milvus", "cache") or p.name.startswith(("catalog.db", "milvus-server"))
               for p in new), new
    assert not Path("/etc/passwd.mp4").exists()
    # Gradio's own copies of the uploads are gone once the library holds its copy.
    assert [p for p in server_paths if Path(p).exists()] == []


# ------------------------------------------------------------------------------ 2. only the data dir's media served

def refused_targets(home: Path) -> list[str]:
    return [
        "/media/../catalog.db", "/media/%2e%2e/catalog.db", "/media/..%2fcatalog.db", "/media/%2e%2e%2fcatalog.db",
        "/media/ab/../../catalog.db", "/media/..%5ccatalog.db", "/media//etc/passwd", "/media/%2fetc%2fpasswd",
        "/media/", "/media/link-out.mp4", "/media/ab/passwd-link.mp4", "/media/dir-link/catalog.db",
        "/media/dir-link/secret.txt",
        "/gradio_api/file=/etc/passwd", "/file=/etc/passwd", "/gradio_api/file/etc/passwd",
        f"/gradio_api/file={home}/catalog.db", f"/gradio_api/file={home}/secret.txt",
        f"/gradio_api/file={home}/videos/ab/real.mp4", f"/gradio_api/file={home}/videos/../catalog.db",
        f"/gradio_api/file={home}/milvus-server.json", f"/file={home}/catalog.db",
    ]


def plant(home: Path) -> None:
    """A real file to serve, a secret next to the videos folder, and symlinks inside it that point out of it."""
    videos = home / "videos"
    (videos / "ab").mkdir(parents=True, exist_ok=True)
    (videos / "ab" / "real.mp4").write_bytes(b"real video bytes")
    (home / "secret.txt").write_bytes(SECRET)
    (home / "milvus-server.json").exists() or (home / "milvus-server.json").write_text("{}")
    for link, target in ((videos / "link-out.mp4", home / "secret.txt"), (videos / "ab" / "passwd-link.mp4",
                         Path("/etc/passwd")), (videos / "dir-link", home)):
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def check_refusals(url: str, home: Path, authorization: str | None) -> None:
    status, _, body = raw_get(url, "/media/ab/real.mp4", authorization)
    assert (status, body) == (200, b"real video bytes")  # the route works: the refusals below are about paths
    assert (home / "catalog.db").read_bytes().startswith(b"SQLite format 3")  # what a leak would look like
    for target in refused_targets(home):
        status, _, body = raw_get(url, target, authorization)
        assert status in (400, 403, 404), (target, status, body[:200])
        assert not any(leak in body for leak in LEAKS), (target, body[:200])


def test_only_the_videos_folder_is_served_without_login(settings, tmp_path, monkeypatch):
    # Make Gradio's upload folder contain the data folder: its file route would then serve the catalog as one of its
    # "created" files, unless the app's blocked_paths keep the data folder out of Gradio's reach.
    gradio_tmp = tmp_path / "gradio-uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    settings = settings.model_copy(update={"home": gradio_tmp / "data"})
    settings.ensure_dirs()
    Catalog(settings.catalog_url).close()
    plant(settings.home_dir)
    with app_in_thread(settings) as url:
        check_refusals(url, settings.home_dir, None)
        # ... while what Gradio itself created there is still served: only the data folder is blocked.
        own = gradio_tmp / "abc123" / "note.txt"
        own.parent.mkdir(parents=True)
        own.write_text("gradio's own upload")
        status, _, body = raw_get(url, f"/gradio_api/file={own}")
        assert (status, body) == (200, b"gradio's own upload")


def test_only_the_videos_folder_is_served_when_logged_in(locked):
    plant(locked.home)
    check_refusals(locked.url, locked.home, basic(*ALICE))


def test_stored_media_is_never_served_as_a_page(settings, runtime, tmp_path):
    """A GIF that is also an HTML/SVG page, uploaded as page.html: /media must not serve it as a page of this site."""
    from search_app.present import media_url

    gif = write_video(tmp_path / "base.gif", colour="red", shape="circle", seconds=1.0, fps=4, size=64) or (
        tmp_path / "base.gif")
    urls = {}
    for i, title in enumerate(["page.html", "image.svg", "doc.xhtml", "clip.gif"]):
        src = tmp_path / f"poly{i}"
        src.write_bytes(gif.read_bytes() + b"<script>window.__xss=1</script>" + bytes(i))
        result = enqueue_file(runtime.catalog, settings, src, title=title)
        assert result.outcome is Outcome.QUEUED, title  # it really is a decodable video
        urls[title] = media_url(runtime, runtime.catalog.get_video(result.video_id).stored_path)
    assert urls["page.html"].endswith(".html")  # the extension came from the client's name
    with app_in_thread(settings) as url:
        for title, target in urls.items():
            status, headers, body = raw_get(url, target)
            assert status == 200 and body.startswith(b"GIF8"), title
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["content-security-policy"].startswith("sandbox")
            if title == "clip.gif":
                assert headers["content-type"] == "image/gif"  # real media keeps its type: players still work
            else:
                assert headers["content-type"] == "application/octet-stream", (title, headers["content-type"])
                assert headers["content-disposition"] == "attachment"


def test_gradio_blocked_paths_keep_gradio_folders_inside_the_data_folder(tmp_path):
    from search_app.auth import gradio_blocked_paths

    home = tmp_path / "data"
    (home / "videos").mkdir(parents=True)
    (home / "uploads" / "x").mkdir(parents=True)
    (home / "other.bin").write_bytes(b"1")
    assert gradio_blocked_paths(home, [tmp_path / "elsewhere"]) == [str(home.resolve())]
    blocked = gradio_blocked_paths(home, [home / "uploads" / "x"])
    assert str(home / "uploads") not in blocked
    must = {str(home / n) for n in ("videos", "catalog.db", "milvus", "other.bin", "milvus-server.json")}
    assert must <= set(blocked)


# ------------------------------------------------------------------------------------------- 4. login (auth)

def test_every_route_needs_login_when_auth_is_set(locked):
    plant(locked.home)
    protected = ["/config", "/gradio_api/info", "/gradio_api/queue/data?session_hash=x", "/media/ab/real.mp4",
                 "/gradio_api/file=/etc/passwd", "/gradio_api/upload_progress", "/monitoring", "/api/videos",
                 "/api/search?q=red", "/gradio_api/heartbeat/abc", "/no-such-route"]
    wrong = [None, basic(ALICE[0], "wrong"), basic("mallory", ALICE[1]), basic(BOB[0], ALICE[1]),
             "Basic !!notbase64", "Bearer " + ALICE[1], basic(ALICE[0], ALICE[1] + " ")]
    for target in protected:
        for authorization in wrong:
            status, headers, body = raw_get(locked.url, target, authorization)
            assert status == 401, (target, authorization, status)
            assert SECRET not in body and b"real video bytes" not in body and b"named_endpoints" not in body
            assert json.loads(body)["detail"]["error"] == "Not authenticated"
        # Non-Gradio routes invite HTTP Basic; Gradio's leave the prompt to its own login form.
        _, headers, _ = raw_get(locked.url, target)
        assert ("www-authenticate" in headers) == (target.startswith(("/media", "/api", "/no-such"))), target
    # A POST to Gradio's API is refused too.
    refused = httpx.post(locked.url + "/gradio_api/call/do_search",
                         json={"data": ["red", 3, *NO_FILTERS, *DEFAULT_WEIGHTS]})
    assert refused.status_code == 401
    # The right credentials (either account; a password with ':' and ',' from the file) open everything.
    for account in (ALICE, BOB):
        status, _, body = raw_get(locked.url, "/media/ab/real.mp4", basic(*account))
        assert (status, body) == (200, b"real video bytes")
        status, _, body = raw_get(locked.url, "/config", basic(*account))
        assert status == 200 and b'"components"' in body
        status, _, body = raw_get(locked.url, "/gradio_api/info", basic(*account))
        assert status == 200 and b"do_search" in body
    with httpx.Client(base_url=locked.url, auth=ALICE, timeout=120) as client:
        html_page = gradio_call(client, "do_search", ["a red circle", 3, *NO_FILTERS, *DEFAULT_WEIGHTS])[0]
        assert "vs-" in html_page
    # Unauthenticated: the login page shell only (no components, no API description).
    status, _, body = raw_get(locked.url, "/")
    assert status == 200 and b"auth_required" in body
    # (Gradio's login page does embed its API description, endpoint names and labels; no component, no data.)
    assert b"upload-files" not in body and b"delete-btn" not in body
    # Gradio's login form takes the same accounts; its session cookie then opens /media as well.
    with httpx.Client(base_url=locked.url) as client:
        assert client.post("/login", data={"username": ALICE[0], "password": "nope"}).status_code == 400
        assert client.get("/media/ab/real.mp4").status_code == 401
        assert client.post("/login", data={"username": ALICE[0], "password": ALICE[1]}).status_code == 200
        assert client.get("/media/ab/real.mp4").content == b"real video bytes"
        assert client.get("/config").status_code == 200
        client.get("/logout")
        client.cookies.clear()
        assert client.get("/media/ab/real.mp4").status_code == 401


@pytest.mark.parametrize("auth", [None, "carol:pa ss,dave:x"])
def test_inline_auth_and_no_auth(settings, auth):
    """Without VIDSEARCH_AUTH nothing changes; the inline form `user:password,user:password` works like the file."""
    settings = settings.model_copy(update={"auth": None if auth is None else Settings(auth=auth).auth})
    plant(settings.home_dir)
    with app_in_thread(settings) as url:
        anonymous = [raw_get(url, t)[0] for t in ("/media/ab/real.mp4", "/config", "/gradio_api/info")]
        if auth is None:
            assert anonymous == [200, 200, 200]
        else:
            assert anonymous == [401, 401, 401]
            for user, password in (("carol", "pa ss"), ("dave", "x")):
                status, _, body = raw_get(url, "/media/ab/real.mp4", basic(user, password))
                assert (status, body) == (200, b"real video bytes")
            assert raw_get(url, "/media/ab/real.mp4", basic("carol", "pa"))[0] == 401


def test_malformed_auth_is_refused_without_echoing_passwords(tmp_path):
    from search_app.auth import AuthConfigError, load_credentials, parse_credentials

    for bad in ("alice", "alice:", ":pw", "alice:pw,bob", str(tmp_path / "missing-file")):
        with pytest.raises(AuthConfigError) as info:
            parse_credentials(bad)
        assert "pw" not in str(info.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n\n")
    with pytest.raises(AuthConfigError):
        parse_credentials(str(empty))
    assert load_credentials(Settings(auth="").auth) is None and Settings(auth="   ").auth is None
    creds = load_credentials(Settings(auth="a:b:c, d:e").auth)
    assert creds.check("a", "b:c") and creds.check("d", "e")
    assert not creds.check("a", "b") and not creds.check("x", "b:c") and not creds.check("d", "")
    assert "e" not in repr(creds).replace("users", "").replace("Credentials", "")


def test_warns_when_exposed_without_login(caplog):
    from search_app.auth import load_credentials, warn_if_exposed

    creds = load_credentials("a:b")
    with caplog.at_level(logging.WARNING, logger="search_app.auth"):
        for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
            assert warn_if_exposed(host, None) is False
        assert warn_if_exposed("0.0.0.0", creds) is False
        assert caplog.records == []
        assert warn_if_exposed("0.0.0.0", None) is True
        assert warn_if_exposed("192.168.1.10", None) is True
    assert len(caplog.records) == 2 and "without a login" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------------------------------- 3. XSS

@pytest.mark.browser
def test_titles_are_escaped_in_the_browser(locked, browser, tmp_path, artifacts_dir):
    settings = locked.settings
    img_file = distinct_video(tmp_path / IMG_NAME, 60)  # a real file with that name on disk (CLI-style ingest)
    script_src = distinct_video(tmp_path / "script.mp4", 61)
    catalog = Catalog(settings.catalog_url)
    try:
        ids = [enqueue_file(catalog, settings, img_file).video_id,
               enqueue_file(catalog, settings, script_src, title=SCRIPT_NAME).video_id]
        assert {v.title for v in catalog.videos_by_ids(ids).values()} == {IMG_NAME, "script>.mp4"}
        # The '/' in the <script> name cuts it like a path would; store the literal name as a title to render too.
        literal = distinct_video(tmp_path / "literal.mp4", 62)
        video, _job = catalog.add_video(sha256="f" * 64, title=SCRIPT_NAME, stored_path=str(literal), owned=False,
                                        size_bytes=literal.stat().st_size)
        ids.append(video.id)
    finally:
        catalog.close()

    dialogs: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.set_default_timeout(60_000)
    page.goto(locked.url + "/")
    # Gradio's login form, with an account from the VIDSEARCH_AUTH file.
    page.get_by_label("username").fill(ALICE[0])
    page.get_by_label("password").fill(ALICE[1])
    page.get_by_role("button", name="Login").click()
    page.locator("#query textarea").wait_for()

    # Upload the <img> name through the browser as well (Gradio strips <>" from uploaded file names).
    page.get_by_role("tab", name="Upload").click()
    page.locator("#upload-files input[type=file]").set_input_files(
        [{"name": IMG_NAME.replace(".mp4", "2.mp4"), "mimeType": "video/mp4",
          "buffer": distinct_video(tmp_path / "up.mp4", 63).read_bytes()}])
    page.locator("#upload-files td.filename").first.wait_for()
    page.locator("#add-btn").click()
    page.locator("#upload-status [role=row]", has_text="onerror").wait_for()

    # Wait until the worker has embedded every video, then search: the titles render as text.
    page.get_by_role("tab", name="Search").click()
    page.locator("#query textarea").fill("a red circle")
    deadline = time.monotonic() + 120
    while True:
        page.locator("#search-btn").click()
        page.locator("#results .vs-card, #results .vs-empty").first.wait_for()
        page.wait_for_timeout(300)
        titles = page.locator("#results .vs-title").all_inner_texts()
        if sum(IMG_NAME in t or SCRIPT_NAME in t or "script>.mp4" in t for t in titles) >= 2 and any(
                SCRIPT_NAME in t for t in titles):
            break
        assert time.monotonic() < deadline, titles
    assert any(IMG_NAME in t for t in titles) and any(SCRIPT_NAME in t for t in titles), titles
    # The only images are the thumbnails the app made (no title became an element).
    assert page.locator("#results img:not(.vs-thumb)").count() == 0 and page.locator("#results script").count() == 0
    assert all(src.startswith("/thumbnails/") for src in page.locator("#results img").evaluate_all(
        "imgs => imgs.map(i => i.getAttribute('src'))"))
    # A logged-in browser plays /media with Gradio's session cookie alone (no Basic credentials).
    src = page.locator("#results .vs-card video").first.get_attribute("src")
    assert src and src.startswith("/media/")
    assert page.request.get(locked.url + src).status == 200
    page.wait_for_function("() => [...document.querySelectorAll('#results video')].some(v => v.readyState >= 1)")
    page.screenshot(path=str(artifacts_dir / "security-xss-search.png"), full_page=True)

    page.get_by_role("tab", name="Library").click()
    page.get_by_role("button", name="Refresh").click()
    library = page.locator("#library [role=row]")
    library.get_by_text(SCRIPT_NAME, exact=True).first.wait_for()
    library.get_by_text(IMG_NAME, exact=True).first.wait_for()
    assert page.locator("#library img").count() == 0
    # Deleting names the titles in its question and its message: escaped there as well.
    row = library.filter(has=page.locator("[data-col='1']").get_by_text(str(ids[2]), exact=True))
    row.locator("input[type=checkbox]").click()
    page.locator("#delete-btn").click()
    page.locator("#delete-question").get_by_text(f"Delete 1 video: {SCRIPT_NAME}?").wait_for()
    assert page.locator("#delete-question script, #delete-question img").count() == 0
    page.locator("#delete-confirm-btn").click()
    page.get_by_text(f"Deleted 1 video: {SCRIPT_NAME}.").wait_for()
    page.screenshot(path=str(artifacts_dir / "security-xss-library.png"), full_page=True)

    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert dialogs == []
    context.close()


# -------------------------------------------------------------------------------------------------- 5. defaults

def test_defaults_bind_to_loopback_only(locked):
    assert Settings.model_fields["host"].default == "127.0.0.1" and Settings().host == "127.0.0.1"
    port = int(urllib.parse.urlsplit(locked.url).port)
    app_sockets = listening_sockets(descendants(locked.proc.pid))
    assert port in {p for _, p in app_sockets}, app_sockets
    assert all(is_loopback_address(a) for a, _ in app_sockets), app_sockets
    # The embedded Milvus Lite server that `serve` started for this data folder (and any process it spawned).
    state = json.loads((locked.home / "milvus-server.json").read_text())
    milvus_sockets = listening_sockets(descendants(int(state["pid"])))
    assert int(state["port"]) in {p for _, p in milvus_sockets}, milvus_sockets
    assert all(is_loopback_address(a) for a, _ in milvus_sockets), milvus_sockets
