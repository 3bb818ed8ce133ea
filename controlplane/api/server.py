"""cp-apiserver: flags, logging and the process around make_app.

Every API server serves the REST API; the one that wins the etcd leader lease also runs
the scheduler and controllers (controlplane.controllers.manager, started by api/leadership.py).

``--workers N`` runs N such servers on one port (api/workers.py); the parent only keeps them.

SIGTERM (or SIGINT) ends the process within about a second, whether etcd answers or not: aiohttp
gives requests in flight ``SHUTDOWN_GRACE`` seconds to finish and as long again once cancelled,
the leader's lease revoke is bounded by its LeaseKeeper, and closing the store by
``STORE_CLOSE_TIMEOUT``. A supervisor's grace period is never spent waiting on a lost etcd.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from aiohttp import web

from controlplane.admission import POLICY_KEY, AdmissionPolicy, parse_capabilities
from controlplane.api.app import make_app
from controlplane.api.auth import TokenFileError, TokenTable, reload_tokens
from controlplane.api.priority import DEFAULT_SEATS
from controlplane.errors import CPError
from controlplane.model import DEFAULT_PIDS_LIMIT, DEFAULT_PROXY_IMAGE, MAX_PIDS_LIMIT
from controlplane.store.etcd_access import EtcdAccess, StoreConfigError

if TYPE_CHECKING:
    from controlplane.store import Store

log = logging.getLogger("cp-apiserver")
# The accept queue. aiohttp's default, 128, overflowed at 1,000 hollow machines (1,100 dropped SYNs in 10 s,
# /proc/net/netstat ListenOverflows): each dropped SYN costs the client a 1 s retransmit, past an agent's
# heartbeat timeout, and each timed-out request's new connection meets the full queue again. Go's
# listeners (the Kubernetes API server) take net.core.somaxconn; the kernel caps this at it too.
LISTEN_BACKLOG = 4096
# `make wheelhouse` fills build/wheelhouse of the checkout this package runs from
SHUTDOWN_GRACE = 0.25
STORE_CLOSE_TIMEOUT = 0.5
DEFAULT_WHEELHOUSE = str(Path(__file__).resolve().parents[2] / "build" / "wheelhouse")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (C, libuv) when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop




def _run(main: Coroutine[Any, Any, None]) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main)


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {listen!r}", param_hint="--listen")
    return host.strip("[]"), int(port)


def _server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The listener's TLS context (``--tls-cert``/``--tls-key``), or None for plain HTTP."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(
    *,
    etcd: str,
    prefix: str,
    listen: str,
    token_file: str | None,
    insecure_no_auth: bool,
    machine_ttl: int,
    proxy_image: str,
    tls_cert: str | None,
    tls_key: str | None,
    controllers: bool = True,
    admission: AdmissionPolicy | None = None,
    metrics_anonymous: bool = False,
    etcd_access: EtcdAccess | None = None,
    wheelhouse: str | None = None,
    reuse_port: bool = False,
    max_requests_inflight: int = DEFAULT_SEATS,
) -> None:
    from controlplane.store import open_store

    tokens = TokenTable.from_file(token_file) if token_file else None
    if tokens is None:
        log.warning("running WITHOUT authentication (--insecure-no-auth): anyone who reaches %s is admin", listen)
    store = open_store(etcd, prefix=prefix, access=etcd_access)
    connect = getattr(store, "connect", None)
    if connect is not None:
        await connect()  # StoreUnavailable (exit 1 with the reason) when no endpoint answers
    config = {"machine_ttl": machine_ttl, "proxy_image": proxy_image, "etcd_prefix": prefix, "listen": listen,
              POLICY_KEY: admission or AdmissionPolicy(proxy_image=proxy_image),
              "metrics_anonymous": metrics_anonymous, "wheelhouse": wheelhouse, "max_requests_inflight": max_requests_inflight}
    contexts = []
    if controllers:
        from controlplane.api.leadership import leadership_context

        contexts.append(leadership_context)
    app = make_app(store, tokens=tokens, config=config, extra_contexts=contexts)
    host, port = _split_listen(listen)
    ssl_context = _server_tls(tls_cert, tls_key)
    runner = web.AppRunner(app, access_log=None, handle_signals=True, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True, reuse_port=reuse_port or None,
                       backlog=LISTEN_BACKLOG)
    await site.start()
    tune_gc()
    log.info("cp-apiserver %d listening on %s (etcd %s, prefix %s)", os.getpid(), listen, etcd, prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if tokens is not None and token_file:
        loop.add_signal_handler(signal.SIGHUP, reload_tokens, tokens, token_file)
    try:
        await stop.wait()
        log.info("cp-apiserver stopping")
    finally:
        await runner.cleanup()
        await _close_store(store)
        log.info("cp-apiserver stopped")


# The cyclic GC's default first threshold (700 allocations) runs a collection every few requests,
# and each one that reaches the old generations walks the watch caches' objects (10,000 cached
# instances are ~300,000 objects): a third of a bulk create went there (bench_create,
# bench_scheduler_e2e), and at 1,000 heartbeats a second full collections stopped the loop for
# 60-170 ms every second or two (bench_scale). The server's garbage is freed by reference
# counting; cycles are rare, so collect far less often: set from the start (_run), and once
# listening, what was loaded is frozen out of them (tune_gc).
GC_THRESHOLDS = (10_000, 20, 50)


def tune_gc() -> None:
    """Fewer, cheaper collections: what was loaded at start (modules, the watch caches' first
    lists) is frozen out of them, the young generation is collected every 10,000 allocations
    rather than 700, so fewer requests in flight survive into the old one, and a full collection
    is considered every 1,000 young ones (about every 10-20 s at 1,000 heartbeats a second). With the defaults,
    1,000 heartbeats a second set off a full collection every second or two (60-170 ms with the
    event loop stopped at 500 machines: bench/bench_scale.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _close_store(store: Store) -> None:
    """Close the store's connections, giving up after STORE_CLOSE_TIMEOUT (the process exits anyway)."""
    try:
        async with asyncio.timeout(STORE_CLOSE_TIMEOUT):
            await store.close()
    except TimeoutError:
        log.warning("closing the store took over %g s; exiting without waiting", STORE_CLOSE_TIMEOUT)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "CP"})
@click.option("--etcd", envvar="CP_ETCD", default="http://127.0.0.1:2379", show_default=True,
              help="etcd endpoints, comma-separated (memory:// for a throwaway in-memory store)")
@click.option("--etcd-cacert", metavar="FILE", help="CA certificate(s) (PEM) that signed etcd's server certificate")
@click.option("--etcd-cert", metavar="FILE", help="client certificate (PEM) for etcd, with --etcd-key")
@click.option("--etcd-key", metavar="FILE", help="private key (PEM) of --etcd-cert")
@click.option("--etcd-user", metavar="USER", help="etcd user (etcd's own auth), with --etcd-password-file")
@click.option("--etcd-password-file", metavar="FILE", help="file whose first line is --etcd-user's password")
@click.option("--etcd-prefix", "prefix", default="/cp", show_default=True, help="key prefix of this cluster")
@click.option("--listen", default="127.0.0.1:7070", show_default=True)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False))
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="CSV token,user,role[,machine], mode 0600; SIGHUP reloads it")
@click.option("--insecure-no-auth", is_flag=True, help="serve without authentication (logged on every start)")
@click.option("--machine-ttl", type=click.IntRange(1, 3600), default=5, show_default=True)
@click.option("--proxy-image", default=DEFAULT_PROXY_IMAGE, show_default=True,
              help="the image of proxy units that name none (set at admission)")
@click.option("--default-pids-limit", type=click.IntRange(2), default=DEFAULT_PIDS_LIMIT, show_default=True,
              help="spec.pidsLimit of units that name none (set at admission)")
@click.option("--max-pids-limit", type=click.IntRange(2), default=MAX_PIDS_LIMIT, show_default=True,
              help="the largest spec.pidsLimit a unit may ask for (422 beyond)")
@click.option("--allow-privilege-escalation", is_flag=True,
              help="let units set spec.allowPrivilegeEscalation (else containers run with no-new-privileges)")
@click.option("--allowed-capabilities", default="", metavar="CAP,CAP",
              help="capabilities units may name in spec.capAdd (default: none)")
@click.option("--no-controllers", is_flag=True, help="serve the API only; never run the scheduler")
@click.option("--metrics-anonymous", is_flag=True, help="serve /metrics without a token (else admin or viewer)")
@click.option("--wheelhouse", type=click.Path(file_okay=False), default=DEFAULT_WHEELHOUSE, show_default=True,
              help="folder served at /dist/ without a token: this version's wheel, its dependencies, "
                   "image tarballs (what `cpctl machine join-config` installs from)")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="API server processes sharing --listen through SO_REUSEPORT, each a whole server (one of "
                   "all of them leads); SIGTERM stops them all. See docs/deploy.md")
@click.option("--worker-of", type=int, hidden=True, help="(internal) this process is a worker of that parent")
@click.option("--max-requests-inflight", type=click.IntRange(1, 100_000), default=DEFAULT_SEATS, show_default=True,
              help="requests served at once (heartbeats, watches, log and exec streams not counted: they "
                   "never wait); the rest wait their turn in arrival order (api/priority.py)")
@click.option("--log-level", default=os.environ.get("CP_LOG_LEVEL", "INFO"), show_default=True)
def main(
    etcd: str, prefix: str, listen: str, tls_cert: str | None, tls_key: str | None, token_file: str | None,
    insecure_no_auth: bool, machine_ttl: int, proxy_image: str, default_pids_limit: int, max_pids_limit: int,
    allow_privilege_escalation: bool, allowed_capabilities: str, no_controllers: bool, metrics_anonymous: bool,
    wheelhouse: str, workers: int, worker_of: int | None, max_requests_inflight: int, log_level: str,
    **etcd_flags: str | None,
) -> None:
    """The controlplane API server (and, when elected, scheduler and controllers)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not token_file and not insecure_no_auth:
        click.echo("cp-apiserver: refusing to start without --token-file (or --insecure-no-auth)", err=True)
        sys.exit(2)
    if bool(tls_cert) != bool(tls_key):
        click.echo("cp-apiserver: --tls-cert and --tls-key go together", err=True)
        sys.exit(2)
    _split_listen(listen)
    if not Path(wheelhouse).is_dir() and worker_of is None:
        log.warning("wheelhouse %s is not a folder: /dist/ serves nothing (make wheelhouse fills it)", wheelhouse)
    try:
        admission = AdmissionPolicy(
            proxy_image=proxy_image, default_pids_limit=default_pids_limit, max_pids_limit=max_pids_limit,
            allow_privilege_escalation=allow_privilege_escalation,
            allowed_capabilities=parse_capabilities(allowed_capabilities),
        )
    except ValueError as err:
        click.echo(f"cp-apiserver: --default-pids-limit/--max-pids-limit: {err}", err=True)
        sys.exit(2)
    if worker_of is not None:
        from controlplane.api.workers import die_with_parent

        die_with_parent(worker_of)
    try:
        etcd_access = EtcdAccess.from_flags(**etcd_flags)  # --etcd-cacert ... --etcd-password-file
        if workers > 1 and worker_of is None:
            from controlplane.api.workers import supervise

            if token_file:
                TokenTable.from_file(token_file)  # a bad file is refused once, here, not by every worker
            sys.exit(supervise(workers, sys.argv[1:]))
        _run(serve(
            etcd=etcd, prefix=prefix, listen=listen, token_file=token_file, insecure_no_auth=insecure_no_auth,
            machine_ttl=machine_ttl, proxy_image=proxy_image, tls_cert=tls_cert, tls_key=tls_key,
            controllers=not no_controllers, admission=admission, metrics_anonymous=metrics_anonymous,
            etcd_access=etcd_access, wheelhouse=wheelhouse, reuse_port=worker_of is not None,
            max_requests_inflight=max_requests_inflight,
        ))
    except TokenFileError as err:  # a configuration error, like a bad flag
        click.echo(f"cp-apiserver: {err.message}", err=True)
        sys.exit(2)
    except (CPError, StoreConfigError) as err:  # one line, never a traceback: etcd down, TLS, auth, files
        click.echo(f"cp-apiserver: {' '.join(str(err).splitlines())}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
