"""Apply a rendered nginx config safely: validate, swap atomically, reload, PROVE, or roll back.

Why this module exists: ``nginx -s reload`` exiting 0 does not mean the new config
took. A ``listen`` on a busy port passes ``nginx -t``; on reload the master logs
``bind() failed`` and keeps the old config, silently. Other proxies (nginx-proxy,
confd) then believe the new routes are live. :class:`NginxApplier` owns one config
folder and does, for every new config text::

    identical to the current good config?  -> nothing to do (no reload)
    write <dir>/nginx.conf.staged           -> nginx -t -c <staged>   (refused: live config untouched)
    os.replace(staged, <dir>/nginx.conf)    -> atomic swap
    reload                                  -> poll the loopback status server until it
                                               serves the new config's hash (bounded)
    hash seen   -> write <dir>/last-good.conf (temp file + os.replace); success
    hash unseen -> restore last-good.conf as nginx.conf, reload, report the failure

``last-good.conf`` stays on disk, and :meth:`NginxApplier.prepare` copies it over
``nginx.conf`` before nginx starts, so a restart after a failed (or interrupted)
update boots the last config that was proven to serve.

Every file is read and written through safefs.py: relative to a descriptor of the folder,
never following a symlink, so a symlink planted in the folder (``nginx.conf -> /etc/shadow``)
is neither read nor written through; it is replaced by the applier's own file.

The nginx process itself is reached through an :class:`NginxRunner`; runners.py has the
two kinds (a local child process, a container reached by exec).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.proxy import safefs
from agent.proxy.render import extract_hash

CONF_NAME = "nginx.conf"
STAGED_NAME = "nginx.conf.staged"
LAST_GOOD_NAME = "last-good.conf"


class NginxRunner(Protocol):
    """How the applier reaches one nginx (a local process or a container)."""

    async def test(self, conf: Path) -> tuple[bool, str]:
        """``nginx -t -c conf`` (``conf`` is a path in the applier's host folder); (ok, output)."""
        ...

    async def reload(self) -> tuple[bool, str]:
        """Ask the running master to reload ``nginx.conf``; (ok, output)."""
        ...

    async def fetch_hash(self) -> str | None:
        """The config hash nginx serves on its status server right now, or None if unreachable."""
        ...

    async def reload_settled(self) -> bool:
        """True once the workers that ran before the last ``reload()`` stopped accepting.

        nginx starts the new workers, sleeps 100 ms, and only then tells the old ones to
        stop: in between, both accept on the shared sockets, so one answer with the new
        hash does not yet mean every new connection gets the new config.
        """
        ...


@dataclass(frozen=True)
class ApplyResult:
    ok: bool  # the requested config is live (or already was)
    changed: bool  # a reload happened for it
    config_hash: str | None  # the hash nginx serves after this call, as far as we know
    reason: str = ""  # why not ok; empty on success
    rolled_back: bool = False  # the live config was swapped and then restored
    seconds: float = 0.0


class NginxApplier:
    """Owns ``conf_dir`` (``nginx.conf``, ``nginx.conf.staged``, ``last-good.conf``).

    Calls are serialized by a lock; use one applier per proxy instance.
    """

    def __init__(
        self,
        conf_dir: Path | str,
        runner: NginxRunner,
        *,
        verify_timeout: float = 2.0,
        poll_interval: float = 0.01,
        retry_failed_after: float = 30.0,
        confirmations: int = 2,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.runner = runner
        self.verify_timeout = verify_timeout
        self.poll_interval = poll_interval
        self.retry_failed_after = retry_failed_after
        self.confirmations = max(1, confirmations)
        self._lock = asyncio.Lock()
        self._good_text: str | None = None
        self._failed: tuple[str, float, str] | None = None  # (hash, when, reason)
        self.reloads = 0  # reloads this applier asked for (including rollbacks)

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / CONF_NAME

    @property
    def staged_path(self) -> Path:
        return self.conf_dir / STAGED_NAME

    @property
    def last_good_path(self) -> Path:
        return self.conf_dir / LAST_GOOD_NAME

    @property
    def current_hash(self) -> str | None:
        return extract_hash(self._good_text) if self._good_text is not None else None

    def prepare(self, initial_text: str) -> Path:
        """Make ``nginx.conf`` bootable before nginx starts; return its path.

        With a ``last-good.conf`` on disk (a restart), that is what boots, whatever
        ``nginx.conf`` holds (an update may have failed or been interrupted). Without
        one (first start), ``initial_text`` -- normally the render with no routes --
        becomes both ``nginx.conf`` and ``last-good.conf``; the next :meth:`apply`
        brings the real routes.
        """
        with safefs.open_dir(self.conf_dir) as folder:
            good = safefs.read_text(folder, LAST_GOOD_NAME)
            if good is None:
                good = initial_text
                safefs.write_atomic(folder, LAST_GOOD_NAME, good, durable=True)
            if safefs.read_text(folder, CONF_NAME) != good:
                safefs.write_atomic(folder, CONF_NAME, good)
            safefs.unlink(folder, STAGED_NAME)
        self._good_text = good
        return self.conf_path

    async def apply(self, text: str) -> ApplyResult:
        """Make ``text`` the live config, or leave the last good one live and say why."""
        async with self._lock:
            started = time.monotonic()
            res = await self._apply(text)
            return ApplyResult(
                ok=res.ok,
                changed=res.changed,
                config_hash=res.config_hash,
                reason=res.reason,
                rolled_back=res.rolled_back,
                seconds=time.monotonic() - started,
            )

    async def _apply(self, text: str) -> ApplyResult:
        if self._good_text is None:
            with safefs.open_dir(self.conf_dir, create=False) as folder:
                self._good_text = safefs.read_text(folder, LAST_GOOD_NAME)
            if self._good_text is None:
                raise RuntimeError("NginxApplier.prepare() must run before apply()")
        good_hash = self.current_hash
        if text == self._good_text:
            return ApplyResult(ok=True, changed=False, config_hash=good_hash)
        new_hash = extract_hash(text)
        if new_hash is None:
            return ApplyResult(False, False, good_hash, "config carries no '# cp-config-hash:' line")
        if self._failed and self._failed[0] == new_hash:
            if time.monotonic() - self._failed[1] < self.retry_failed_after:
                return ApplyResult(False, False, good_hash, f"same config failed before: {self._failed[2]}")

        # 1. stage and validate the whole file; the live config is not touched on refusal
        self._write(STAGED_NAME, text)
        ok, out = await self.runner.test(self.staged_path)
        if not ok:
            with safefs.open_dir(self.conf_dir) as folder:
                safefs.unlink(folder, STAGED_NAME)
            return self._fail(new_hash, good_hash, f"nginx -t refused the config: {out.strip()}", False)

        # 2. atomic swap, 3. reload, 4. prove
        with safefs.open_dir(self.conf_dir) as folder:
            safefs.replace(folder, STAGED_NAME, CONF_NAME)
        self.reloads += 1
        ok, out = await self.runner.reload()
        if ok and await self._wait_for_hash(new_hash):
            self._write(LAST_GOOD_NAME, text, durable=True)
            self._good_text = text
            self._failed = None
            return ApplyResult(ok=True, changed=True, config_hash=new_hash)
        reason = (
            f"reload failed: {out.strip()}"
            if not ok
            else f"nginx did not serve the new config hash within {self.verify_timeout:.1f}s "
            "(e.g. a listen port already in use); rolled back"
        )

        # 5. roll back to the last good config
        assert self._good_text is not None
        self._write(CONF_NAME, self._good_text)
        self.reloads += 1
        rok, rout = await self.runner.reload()
        # No settle: after a reload that did not take, the old workers ARE the good config;
        # waiting for them to go would wait out the master's bind() retries (~2.5 s).
        if not (rok and good_hash and await self._wait_for_hash(good_hash, settle=False)):
            reason += f"; rollback not confirmed either ({rout.strip() or 'old hash not served'})"
        return self._fail(new_hash, good_hash, reason, True)

    def _write(self, name: str, text: str, *, durable: bool = False) -> None:
        with safefs.open_dir(self.conf_dir) as folder:
            safefs.write_atomic(folder, name, text, durable=durable)

    def _fail(self, new_hash: str, good_hash: str | None, reason: str, rolled_back: bool) -> ApplyResult:
        self._failed = (new_hash, time.monotonic(), reason)
        return ApplyResult(False, False, good_hash, reason, rolled_back)

    async def _wait_for_hash(self, want: str, *, settle: bool = True) -> bool:
        """Poll until nginx serves ``want`` (and, with ``settle``, the old workers stopped accepting).

        Bounded by ``verify_timeout``. ``confirmations`` consecutive answers are required
        as well, which also covers runners whose ``reload_settled`` is only approximate.
        """
        deadline = time.monotonic() + self.verify_timeout
        streak = 0
        while True:
            if await self.runner.fetch_hash() == want:
                streak += 1
                if streak >= self.confirmations and (not settle or await self.runner.reload_settled()):
                    return True
            else:
                streak = 0
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
