"""cp-agent: flags and wiring (runtime choice, API client, log server, metrics, proxy manager).

One agent per machine. It talks only to the API servers (never to etcd), with a node token
bound to its machine; ``--server URL,URL`` names several, failed over in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import click
from aiohttp import web

from agent.agent import Agent, AgentConfig
from agent.discovery.settings import DiscoverySettings, open_discovery, parse_service_cidr
from agent.distimages import ClusterImages, ImageEngine
from agent.jointoken import finish_join_exchange, redeem_join_token
from agent.logserver import make_log_app
from agent.metrics import AgentMetrics, make_metrics_app, parse_metrics_listen
from agent.proxy.manager import ProxyManager
from agent.runtime.base import HostKeyRefused, Runtime, RuntimeUnavailable
from agent.secretenv import Scrubber, install_log_filter
from controlplane.client import Client
from controlplane.metadata_flag import parse_metadata as parse_metadata_flag
from controlplane.model import DEFAULT_PROXY_IMAGE
from controlplane.servers import parse_servers

log = logging.getLogger("cp-agent")


def parse_metadata(text: str) -> dict[str, str]:
    """``k=v,k=v`` -> labels (fleet's machine metadata; controlplane/metadata_flag.py)."""
    try:
        return parse_metadata_flag(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--metadata") from None


def host_capacity() -> tuple[float, int]:
    cpu = float(os.cpu_count() or 1)
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_mb = int(pages * page_size / (1024 * 1024))
    except (ValueError, OSError):
        memory_mb = 0
    return cpu, memory_mb


def source_problem(address: str, servers: str, *, local: bool) -> str | None:
    """Why the API connections cannot come from ``address`` (None: they can). Pure: ``local`` says
    whether this host owns it. A loopback source cannot reach another host, nor IPv4 an IPv6 one."""
    if not local:
        return "not an address of this host"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    for url in parse_servers(servers):
        host = urlsplit(url).hostname or ""
        try:
            server_ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        except ValueError:
            server_ip = None  # a host name: only a loopback source is known not to reach it
        if server_ip is not None and server_ip.version != ip.version:
            return f"the server {url} is IPv{server_ip.version}"
        if ip.is_loopback and not (server_ip is not None and server_ip.is_loopback):
            return f"a loopback address cannot reach the server {url}"
    return None


def source_address(address: str, servers: str) -> str | None:
    """The source address of the agent's API connections: ``--address`` when it can be (so one
    machine's traffic can be told from another's, and cut off alone); else the kernel's choice."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.bind((address, 0))
        local = True
    except OSError:
        local = False
    problem = source_problem(address, servers, local=local)
    if problem is not None:
        log.info("API connections from the default source address, not %s: %s", address, problem)
        return None
    return address


def make_runtime(docker: str, *, known_hosts: str | None, ssh_key: str | None) -> Runtime:
    if docker.startswith("ssh://"):
        from agent.runtime.ssh import SSHDockerRuntime

        return SSHDockerRuntime(docker, known_hosts=known_hosts, client_key=ssh_key)
    from agent.runtime.docker import DockerRuntime

    return DockerRuntime(docker)


async def serve_metrics(metrics: AgentMetrics, where: tuple[str, int] | None, *, required: bool) -> web.AppRunner | None:
    """``/metrics`` on ``where``. The default port already taken is a warning (the agent's own job
    goes on without metrics); a port the operator named that cannot be had stops the agent."""
    if where is None:
        return None
    runner = web.AppRunner(make_metrics_app(metrics), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, where[0], where[1], reuse_address=True).start()
    except OSError as err:
        await runner.cleanup()
        if required:
            raise RuntimeError(f"--metrics-listen {where[0]}:{where[1]}: {err.strerror or err}") from err
        log.warning("metrics not served on %s:%d: %s (set --metrics-listen HOST:PORT, or off)", *where,
                    err.strerror or err)
        return None
    log.info("metrics on http://%s:%d/metrics", *where)
    return runner


async def open_runtime(docker: str, *, known_hosts: str | None, ssh_key: str | None) -> Runtime:
    """The runtime, connected when it can be: for ssh:// a refused host key is fatal and said at once,
    not retried in a loop; an engine not reachable yet is retried by the agent's loops."""
    runtime = make_runtime(docker, known_hosts=known_hosts, ssh_key=ssh_key)
    connect = getattr(runtime, "connect", None)
    if connect is not None:
        try:
            await connect()
        except HostKeyRefused:
            await runtime.close()
            raise
        except RuntimeUnavailable as err:
            log.warning("container runtime not reachable yet (will retry): %s", err)
    return runtime


async def run_agent(*, server: str, token: str | None, ca: str | None, config: AgentConfig, docker: str,
                    known_hosts: str | None, ssh_key: str | None, scrubber: Scrubber | None = None,
                    metrics_listen: tuple[str, int] | None = None, metrics_required: bool = False,
                    token_file: str | None = None, discovery: DiscoverySettings | None = None) -> None:
    exchange_later = False
    if token_file and token:  # a join token becomes a node token, once (agent/jointoken.py)
        token, exchange_later = await redeem_join_token(server, token, token_file, ca=ca)
    runtime = await open_runtime(docker, known_hosts=known_hosts, ssh_key=ssh_key)
    metrics = AgentMetrics()
    client = Client(server, token=token, ca=ca, timeout=5.0, on_error=metrics.api_error,
                    local_address=source_address(config.address, server))
    proxies = ProxyManager(client, runtime, cluster=config.cluster, machine=config.machine,
                           address=config.address, state_dir=Path(config.state_dir), metrics=metrics)
    # Docker engines load missing images the cluster serves at /dist/ (the proxy image: agent/distimages.py)
    images = ClusterImages(client, cast(ImageEngine, runtime)) if hasattr(runtime, "load_image") else None
    names = await open_discovery(client, discovery, docker=docker)  # <unit>.<domain> (docs/discovery.md)
    agent = Agent(client, runtime, config, plugins=[proxies, *([names] if names else [])], scrubber=scrubber,
                  metrics=metrics,
                  image_source=images.provide if images else None)

    def container_ids() -> dict[str, str]:
        return {name: status["containerID"] for name, status in agent.reported.items() if status.get("containerID")}

    log_app = make_log_app(runtime, machine=config.machine, containers=container_ids,
                           signing_keys=lambda: agent.log_signing_keys)
    runner = web.AppRunner(log_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.address, config.agent_port, reuse_address=True)
    await site.start()
    metrics_runner = await serve_metrics(metrics, metrics_listen, required=metrics_required)
    log.info("cp-agent %s: machine %s, address %s, logs on port %d, docker %s", config.cluster, config.machine,
             config.address, config.agent_port, docker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    main_task = asyncio.create_task(agent.run())
    later = [asyncio.create_task(finish_join_exchange(client, token_file))] if exchange_later and token_file else []
    stop_task = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if main_task.done():
            main_task.result()
    finally:
        main_task.cancel()
        stop_task.cancel()
        for task in later:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await main_task
        await runner.cleanup()
        if names is not None:
            await names.close()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await client.close()
        await runtime.close()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="CP_SERVER", default="http://127.0.0.1:7070", show_default=True,
              metavar="URL[,URL...]", help="API servers, comma-separated: failed over in order")
@click.option("--token", envvar="CP_TOKEN", help="node token (or --token-file)")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--ca", type=click.Path(exists=True, dir_okay=False))
@click.option("--machine", default=lambda: socket.gethostname().split(".")[0].lower(), show_default="host name")
@click.option("--metadata", default="", help="machine labels k=v,k=v (fleet metadata)")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="where other machines reach this machine's containers")
@click.option("--cpu", type=float, default=None, help="capacity in CPUs (default: the host's)")
@click.option("--memory-mb", type=int, default=None, help="capacity in MB (default: the host's)")
@click.option("--docker", default="unix:///var/run/docker.sock", show_default=True,
              help="unix:///var/run/docker.sock or ssh://user@host[:port]")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="for ssh://: host keys to check against")
@click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False), help="for ssh://: identity file")
@click.option("--fence-after", type=float, default=None,
              help="stop own instances after this many seconds without the API (default 80%% of the machine TTL)")
@click.option("--agent-port", type=click.IntRange(0, 65535), default=7071, show_default=True,
              help="port of the agent's log endpoint, on --address")
@click.option("--cluster", default="cp", show_default=True, help="label that marks this cluster's containers")
@click.option("--proxy-image", default=DEFAULT_PROXY_IMAGE, show_default=True)
@click.option("--state-dir", default="/var/lib/cp-agent", show_default=True, help="proxy configs live here")
@click.option("--metrics-listen", default="", metavar="HOST:PORT|off",
              help="where /metrics is served (Prometheus text, no token) [default: --address, port 9102]")
@click.option("--cluster-domain", default="cp.internal", show_default=True,
              help="containers reach unit U at U.<domain> (docs/discovery.md)")
@click.option("--service-cidr", default="10.234.0.0/16", show_default=True, metavar="CIDR|off",
              help="IPv4 network of the units' virtual addresses on this host; its .1 is the resolver")
@click.option("--dns-upstream", default="", metavar="IP[,IP...]",
              help="resolvers for names outside the domain [default: the host's /etc/resolv.conf]")
@click.option("--log-level", default=os.environ.get("CP_LOG_LEVEL", "INFO"), show_default=True)
def main(server: str, token: str | None, token_file: str | None, ca: str | None, machine: str, metadata: str,
         address: str, cpu: float | None, memory_mb: int | None, docker: str, known_hosts: str | None,
         ssh_key: str | None, fence_after: float | None, agent_port: int, cluster: str, proxy_image: str,
         state_dir: str, metrics_listen: str, cluster_domain: str, service_cidr: str, dns_upstream: str,
         log_level: str) -> None:
    """The controlplane agent: runs this machine's instances as Docker containers."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scrubber = Scrubber()
    install_log_filter(scrubber)  # no Secret value the agent reads reaches its log
    if token_file:
        token = Path(token_file).read_text().strip()
    try:
        metrics_where = parse_metrics_listen(metrics_listen, address=address)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--metrics-listen") from err
    try:
        discovery = parse_service_cidr(service_cidr, domain=cluster_domain, upstreams=dns_upstream)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--service-cidr/--cluster-domain/--dns-upstream") from err
    host_cpu, host_memory = host_capacity()
    config = AgentConfig(
        machine=machine, address=address, cluster=cluster, labels=parse_metadata(metadata),
        cpu=cpu if cpu is not None else host_cpu, memory_mb=memory_mb if memory_mb is not None else host_memory,
        fence_after=fence_after, agent_port=agent_port, proxy_image=proxy_image, state_dir=state_dir,
    )
    try:
        asyncio.run(run_agent(server=server, token=token, ca=ca, config=config, docker=docker,
                              known_hosts=known_hosts, ssh_key=ssh_key, scrubber=scrubber,
                              metrics_listen=metrics_where, metrics_required=bool(metrics_listen.strip()),
                              token_file=token_file, discovery=discovery))
    except KeyboardInterrupt:
        pass
    except Exception as err:  # a clear one-line reason, the traceback in the debug log
        log.debug("agent failed", exc_info=True)
        click.echo(f"cp-agent: {scrubber.scrub(str(err))}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
