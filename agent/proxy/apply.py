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

The nginx process itself is reached through an :class:`NginxRunner`:

* :class:`LocalNginx` runs the host binary as a child process (``daemon off``; tests
  and benchmarks). Reload is a SIGHUP to the master we own -- exactly what
  ``nginx -s reload`` sends, without a process spawn that re-parses the config.
* :class:`DockerExecNginx` drives the proxy container through ``docker exec``
  (aiodocker): ``nginx -t -c``, ``nginx -s reload``, and the hash check as
  ``wget -qO- http://127.0.0.1:<status>/__cp/config-hash`` INSIDE the container
  (``local/nginx`` carries busybox wget). Chosen over an HTTP request from the host
  because the status server listens on the container's loopback only: it is never
  published, so it is never reachable from outside, and it does not need a host port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.proxy.render import STATUS_PATH, extract_hash

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


def _atomic_write(path: Path, text: str, *, durable: bool = False) -> None:
    """Write a temp file next to ``path`` and ``os.replace`` it: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


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
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        if self.last_good_path.exists():
            good = self.last_good_path.read_text(encoding="utf-8")
        else:
            good = initial_text
            _atomic_write(self.last_good_path, good, durable=True)
        if not self.conf_path.exists() or self.conf_path.read_text(encoding="utf-8") != good:
            _atomic_write(self.conf_path, good)
        self.staged_path.unlink(missing_ok=True)
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
            if not self.last_good_path.exists():
                raise RuntimeError("NginxApplier.prepare() must run before apply()")
            self._good_text = self.last_good_path.read_text(encoding="utf-8")
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
        _atomic_write(self.staged_path, text)
        ok, out = await self.runner.test(self.staged_path)
        if not ok:
            self.staged_path.unlink(missing_ok=True)
            return self._fail(new_hash, good_hash, f"nginx -t refused the config: {out.strip()}", False)

        # 2. atomic swap, 3. reload, 4. prove
        os.replace(self.staged_path, self.conf_path)
        self.reloads += 1
        ok, out = await self.runner.reload()
        if ok and await self._wait_for_hash(new_hash):
            _atomic_write(self.last_good_path, text, durable=True)
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
        _atomic_write(self.conf_path, self._good_text)
        self.reloads += 1
        rok, rout = await self.runner.reload()
        # No settle: after a reload that did not take, the old workers ARE the good config;
        # waiting for them to go would wait out the master's bind() retries (~2.5 s).
        if not (rok and good_hash and await self._wait_for_hash(good_hash, settle=False)):
            reason += f"; rollback not confirmed either ({rout.strip() or 'old hash not served'})"
        return self._fail(new_hash, good_hash, reason, True)

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


# ------------------------------------------------------------------ hash fetch over HTTP


async def fetch_hash_http(host: str, port: int, *, limit_s: float = 0.5) -> str | None:
    """GET the status location with a fresh connection (so a new worker may answer)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {STATUS_PATH} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(65536)
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        return None
    return body.decode(errors="replace").strip() or None


# ------------------------------------------------------------------ LocalNginx


class LocalNginx:
    """The host nginx binary as a child process (tests, benchmarks, agents without Docker).

    ``start()`` runs ``nginx -c <conf> -e <log> -g 'daemon off;'`` so the master is
    our child and ``stop()`` can always reap it. ``reload()`` sends SIGHUP to it.
    """

    def __init__(
        self,
        conf: Path | str,
        *,
        status_port: int,
        binary: str = "/usr/sbin/nginx",
        log_path: Path | str | None = None,
    ) -> None:
        self.conf = Path(conf)
        self.status_port = status_port
        self.binary = binary
        self.log_path = Path(log_path) if log_path else self.conf.parent / "nginx.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.reload_count = 0
        self._old_workers: set[int] = set()

    async def _run(self, *args: str, limit_s: float = 10.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, f"{self.binary} {' '.join(args)}: timed out after {limit_s}s"
        return proc.returncode or 0, out.decode(errors="replace")

    async def test(self, conf: Path) -> tuple[bool, str]:
        rc, out = await self._run("-t", "-q", "-e", "stderr", "-c", str(conf))
        return rc == 0, out

    async def start(self, *, limit_s: float = 5.0) -> None:
        """Start the master and wait until its status server answers (bounded)."""
        if self.proc is not None and self.proc.returncode is None:
            return
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(self.conf),
                "-e",
                str(self.log_path),
                "-g",
                "daemon off;",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self._log_tail()}")
            if await self.fetch_hash() is not None:
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise RuntimeError(f"nginx did not answer on 127.0.0.1:{self.status_port} within {limit_s}s")

    async def stop(self, *, limit_s: float = 5.0) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL if the master lingers; always reaps."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def reload(self) -> tuple[bool, str]:
        if self.proc is None or self.proc.returncode is not None:
            return False, "nginx is not running"
        self.reload_count += 1
        self._old_workers = set(self.worker_pids())
        try:
            os.kill(self.proc.pid, signal.SIGHUP)
        except ProcessLookupError:
            return False, "nginx is not running"
        return True, ""

    async def fetch_hash(self) -> str | None:
        return await fetch_hash_http("127.0.0.1", self.status_port)

    async def reload_settled(self) -> bool:
        """Every worker from before the reload has exited or is shutting down (it closes its
        listening sockets in the same step as it retitles itself), read from /proc."""
        self._old_workers = {pid for pid in self._old_workers if _accepting_worker(pid)}
        return not self._old_workers

    def worker_pids(self) -> list[int]:
        """The master's children (workers), from /proc."""
        if self.proc is None:
            return []
        master = self.proc.pid
        try:
            text = Path(f"/proc/{master}/task/{master}/children").read_text()
            return [int(x) for x in text.split()]
        except OSError:
            pass
        pids: list[int] = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(d.name))
        return pids

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _accepting_worker(pid: int) -> bool:
    """True while ``pid`` is a live nginx worker that has not started shutting down."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and b"shutting down" not in title


# ------------------------------------------------------------------ DockerExecNginx


class DockerExecNginx:
    """A proxy container whose config folder is the applier's folder, bind-mounted.

    ``host_dir`` (the applier's ``conf_dir``) is mounted at ``container_dir`` and
    nginx runs with ``-c <container_dir>/nginx.conf``. Every operation is a
    ``docker exec`` (aiodocker) into ``container``.
    """

    def __init__(
        self,
        docker: Any,  # aiodocker.Docker
        container: str,
        *,
        host_dir: Path | str,
        container_dir: str = "/etc/cp-nginx",
        status_port: int,
        exec_timeout: float = 10.0,
    ) -> None:
        self.docker = docker
        self.container = container
        self.host_dir = Path(host_dir)
        self.container_dir = container_dir.rstrip("/")
        self.status_port = status_port
        self.exec_timeout = exec_timeout
        self.reload_count = 0
        self.settle_seconds = 0.12
        self._new_seen_at: float | None = None

    def _in_container(self, path: Path) -> str:
        rel = Path(path).resolve().relative_to(self.host_dir.resolve())
        return f"{self.container_dir}/{rel.as_posix()}"

    async def _exec(self, cmd: list[str], *, limit_s: float | None = None) -> tuple[int, str]:
        limit = self.exec_timeout if limit_s is None else limit_s
        try:
            async with asyncio.timeout(limit):
                container = self.docker.containers.container(self.container)
                exe = await container.exec(cmd, stdout=True, stderr=True, tty=False)
                chunks: list[bytes] = []
                async with exe.start(detach=False) as stream:
                    for _ in range(100_000):  # bounded: output is tiny
                        msg = await stream.read_out()
                        if msg is None:
                            break
                        chunks.append(msg.data)
                info = await exe.inspect()
                for _ in range(50):  # the exit code may lag the end of the stream a little
                    if not info.get("Running"):
                        break
                    await asyncio.sleep(0.01)
                    info = await exe.inspect()
                code = info.get("ExitCode")
                return (code if isinstance(code, int) else -1), b"".join(chunks).decode(errors="replace")
        except TimeoutError:
            return -1, f"docker exec {' '.join(cmd)}: timed out after {limit}s"
        except Exception as e:  # aiodocker.DockerError, connection errors
            return -1, f"docker exec {' '.join(cmd)}: {e}"

    async def test(self, conf: Path) -> tuple[bool, str]:
        rc, out = await self._exec(["nginx", "-t", "-q", "-e", "stderr", "-c", self._in_container(conf)])
        return rc == 0, out

    async def reload(self) -> tuple[bool, str]:
        self.reload_count += 1
        conf = f"{self.container_dir}/nginx.conf"
        rc, out = await self._exec(["nginx", "-e", "stderr", "-c", conf, "-s", "reload"])
        self._new_seen_at = None
        return rc == 0, out

    async def reload_settled(self) -> bool:
        """Time-based (no ``ps`` in the container): the applier asks only once the new hash
        is served, i.e. the new workers run; nginx retires the old ones 100 ms after
        starting the new ones, so ``settle_seconds`` (120 ms) after the first ask they
        stopped accepting."""
        now = time.monotonic()
        if self._new_seen_at is None:
            self._new_seen_at = now
        return now - self._new_seen_at >= self.settle_seconds

    async def fetch_hash(self) -> str | None:
        url = f"http://127.0.0.1:{self.status_port}{STATUS_PATH}"
        # no `-T`: Debian's static busybox 1.35 wget segfaults with it; the exec timeout bounds it
        rc, out = await self._exec(["wget", "-q", "-O", "-", url], limit_s=2.0)
        value = out.strip()
        return value if rc == 0 and value else None
