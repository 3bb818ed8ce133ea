"""A headless Chromium driven over the DevTools protocol, with aiohttp's websocket client (no new dependency).

    async with Chromium() as page:
        await page.goto(url)
        await page.wait_for("document.querySelectorAll('[data-machine]').length === 4")
        await page.type_text("admin-token"); await page.press("Enter")
        await page.screenshot(path)

One browser, one page. The page's console errors, uncaught exceptions and CSP reports are kept in
``problems`` so a test can assert the page ran clean. ``find_chromium()`` is None when Debian's
``chromium`` is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import aiohttp

KEYS = {  # what Input.dispatchKeyEvent needs for the keys the tests press
    "Enter": {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"},
    "Tab": {"key": "Tab", "code": "Tab", "windowsVirtualKeyCode": 9},
    "Escape": {"key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27},
}


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    pass


class Chromium:
    def __init__(self, *, width: int = 1280, height: int = 900, binary: str | None = None) -> None:
        self.binary = binary or find_chromium() or "chromium"
        self.size = (width, height)
        self.profile = Path(tempfile.mkdtemp(prefix="cp-chromium-"))
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.problems: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chromium:
        log = self._open_log()
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--mute-audio",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={self.profile / 'data'}", f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank", stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            await self._connect(await self._devtools_port())
        except BaseException:
            await self.close()
            raise
        return self

    def _open_log(self) -> BinaryIO:
        return open(self.profile / "chromium.log", "wb")  # noqa: SIM115 - the process writes it

    async def _devtools_port(self) -> int:
        port_file = self.profile / "data" / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            if self.proc is not None and self.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        raise CdpError(f"chromium did not start:\n{self.log_tail()}")

    async def _connect(self, port: int) -> None:
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._note(data["method"], data.get("params") or {})
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    def _note(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            self.problems.append(f"exception: {(details.get('exception') or {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.problems.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                             for a in params.get("args", [])))
        elif method == "Log.entryAdded":
            entry = params.get("entry") or {}
            if entry.get("level") == "error" and "favicon.ico" not in entry.get("url", ""):
                self.problems.append(f"log: {entry.get('text')} ({entry.get('url', '')})")

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30) -> dict[str, Any]:
        assert self.ws is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params or {}}))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result") or {}
        return result

    async def evaluate(self, expression: str) -> Any:
        """``expression``'s value (JSON-able; promises awaited); a thrown error raises CdpError."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return (result.get("result") or {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float = 30, interval: float = 0.1, what: str = "",
                       diagnose: str = "") -> Any:
        """The first truthy value of ``expression``; on a timeout the error shows ``diagnose``'s value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.evaluate(expression)
            if last:
                return last
            await asyncio.sleep(interval)
        seen = f"; the page shows: {str(await self.evaluate(diagnose))[-2000:]}" if diagnose else ""
        problems = f"; the page reported: {self.problems[-5:]}" if self.problems else ""
        raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}; last: {last!r}{seen}{problems}")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", what=url)

    async def type_text(self, text: str) -> None:
        await self.send("Input.insertText", {"text": text})

    async def press(self, key: str) -> None:
        fields = KEYS[key]
        await self.send("Input.dispatchKeyEvent", {"type": "keyDown", **fields})
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", **{k: v for k, v in fields.items() if k != "text"}})

    async def emulate(self, *, width: int, height: int, mobile: bool = False, scale: float = 1) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "mobile": mobile,
                                                               "deviceScaleFactor": scale})

    async def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = (await self.send("Page.captureScreenshot", params))["data"]
        await asyncio.to_thread(_write_file, path, base64.b64decode(data))
        return path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.profile / "chromium.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the wrapper script and the browser it started
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
