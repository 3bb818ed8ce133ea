"""/ui/ (controlplane/api/ui.py): the web view's static files, public, under a strict policy.

In process: make_app over a MemoryStore with a token table, so "public" is tested against a server
that asks for tokens everywhere else. The page's own rules are checked on its source: no inline
script or style in the HTML (the CSP would block them), nothing from another origin, and no HTML
sink in the script (node-reported text must only ever become text).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from controlplane.api.app import make_app
from controlplane.api.auth import TokenTable, User
from controlplane.api.ui import UI_DIR, UI_FILES
from controlplane.store.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    tokens = TokenTable({"admin-token": User("admin", "admin")})
    test_client = TestClient(TestServer(make_app(MemoryStore(), tokens=tokens), host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


@pytest.mark.parametrize(("path", "file"), [("/ui/", "index.html"), ("/ui/index.html", "index.html"),
                                            ("/ui/app.js", "app.js"), ("/ui/app.css", "app.css")])
async def test_files_are_served_without_a_token_under_the_policy(client: TestClient, path: str, file: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.read() == (UI_DIR / file).read_bytes()
    assert resp.headers["Content-Type"] == UI_FILES[file]
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "frame-ancestors 'none'" in policy
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_ui_redirects_to_its_folder_and_the_api_still_wants_a_token(client: TestClient) -> None:
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 308 and resp.headers["Location"] == "/ui/"
    assert (await client.get("/api/v1/machines")).status == 401
    assert (await client.get("/ui/", headers={"Authorization": "Bearer wrong"})).status == 401


@pytest.mark.parametrize("path", ["/ui/ui.py", "/ui/..%2Fui.py", "/ui/%2e%2e%2fapp.py", "/ui/app.js%00",
                                  "/ui/sub/app.js", "/ui/.hidden", "/ui/APP.JS"])
async def test_only_the_named_files_are_served(client: TestClient, path: str) -> None:
    resp = await client.get(URL(path, encoded=True))
    assert resp.status == 404, path
    assert (await resp.json())["kind"] == "Status"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere() -> None:
    html = (UI_DIR / "index.html").read_text()
    parsed = _Tags()
    parsed.feed(html)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert scripts == [{"type": "module", "src": "app.js"}] and not parsed.script_text.strip()
    assert not [tag for tag, _ in parsed.tags if tag == "style"]
    for tag, attrs in parsed.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        for value in attrs.values():
            assert not re.match(r"\s*(https?:|//|javascript:)", value or ""), (tag, value)
    for file in UI_FILES:
        assert not re.search(r"https?://", (UI_DIR / file).read_text()), f"{file} names another origin"


def test_the_script_writes_text_only() -> None:
    script = (UI_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "createContextualFragment", "localStorage"):
        assert sink not in script, sink
    assert "sessionStorage" in script  # the token lives only for the tab


def test_the_wheel_carries_the_files() -> None:
    """pyproject's package-data matches every served file, so an installed server can serve them."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "controlplane"
    for file in UI_FILES:
        relative = (UI_DIR / file).relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns["controlplane"]), relative
