"""The ways the applier (apply.py) reaches one nginx: the :class:`~agent.proxy.apply.NginxRunner`s.

Why this module exists: the applier's safety (validate, swap, reload, prove, roll back) is the
same wherever nginx runs; only how a command reaches nginx differs:

* :class:`LocalNginx` runs the host binary as a child process (``daemon off``; tests
  and benchmarks). Reload is a SIGHUP to the master we own -- exactly what
  ``nginx -s reload`` sends, without a process spawn that re-parses the config.
* :class:`DockerExecNginx` drives the proxy container through ``docker exec``
  (aiodocker): ``nginx -t -c``, ``nginx -s reload``, and the hash check as
  ``wget -qO- http://127.0.0.1:<status>/__cp/config-hash`` INSIDE the container
  (``local/nginx`` carries busybox wget). Chosen over an HTTP request from the host
  because the status server listens on the container's loopback only: it is never
  published, so it is never reachable from outside, and it does not need a host port.
* :class:`RuntimeExecNginx` is :class:`DockerExecNginx` through the agent's ``Runtime``
  protocol, so proxies work over SSH too (what the proxy manager uses).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from agent.proxy.render import STATUS_PATH
from agent.runtime.base import Runtime

CONTAINER_DIR = "/etc/cp-nginx"


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
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
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
        container_dir: str = CONTAINER_DIR,
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
        # lexical, never resolve(): following a symlink planted in the folder is what we must not do
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.host_dir))
        if ".." in rel.parts:
            raise ValueError(f"{path} is not inside {self.host_dir}")
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


class RuntimeExecNginx(DockerExecNginx):
    """DockerExecNginx through the agent's Runtime protocol, so proxies work over SSH too."""

    def __init__(self, runtime: Runtime, container_id: str, *, host_dir: Path, status_port: int,
                 container_dir: str = CONTAINER_DIR) -> None:
        super().__init__(None, container_id, host_dir=host_dir, container_dir=container_dir,
                         status_port=status_port)
        self.runtime = runtime

    async def _exec(self, cmd: list[str], *, limit_s: float | None = None) -> tuple[int, str]:
        timeout = self.exec_timeout if limit_s is None else limit_s
        try:
            async with asyncio.timeout(timeout):
                result = await self.runtime.exec(self.container, cmd)
        except TimeoutError:
            return -1, f"exec {' '.join(cmd)}: timed out after {timeout}s"
        except Exception as err:  # runtime failures of any kind: the applier reports them
            return -1, f"exec {' '.join(cmd)}: {err}"
        return result.exit_code, result.output.decode(errors="replace")
