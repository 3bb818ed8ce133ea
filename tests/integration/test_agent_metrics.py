"""``/metrics`` of a real cp-agent on the real Docker engine: the values move with what the agent
does (a running container, its health probes, reconcile passes, heartbeats) and ``promtool check
metrics`` accepts the exposition (promtool as tests/integration/test_metrics.py obtains it).
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest
from agent_process import AgentProcess
from apiserver_fixture import ApiServer
from docker_fixture import build_local_images
from machine_helper import call, wait_for
from promtool_fixture import promtool_path
from test_api_failover_clients import UNIT, sample

from controlplane import __version__

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="session")
def promtool() -> str:
    return promtool_path()


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            return str(resp.read().decode())
    except OSError:
        return ""


def test_agent_metrics_move_and_promtool_accepts_them(apiserver: ApiServer, tmp_path: Path,
                                                       promtool: str) -> None:  # noqa: F811
    build_local_images()
    with AgentProcess([apiserver.url], "m2", tmp_path) as agent:
        try:
            idle = wait_for(lambda: scrape(agent.metrics_url), timeout=20, what="the agent's /metrics")
            assert sample(idle, "cp_agent_containers", state="running") == 0
            assert sample(idle, "cp_agent_build_info", version=__version__) == 1
            assert call(apiserver.url, "POST", "/api/v1/units", {**UNIT, "metadata": {"name": "web"}})[0] == 201

            def moved() -> str | None:
                text = scrape(agent.metrics_url)
                ok = (sample(text, "cp_agent_containers", state="running") == 1
                      and sample(text, "cp_agent_probes_total", kind="http", result="success") >= 1)
                return text if ok else None

            text = wait_for(moved, timeout=60, interval=0.2, what="a running container and a passed probe")
            assert sample(text, "cp_agent_containers", state="exited") == 0
            assert sample(text, "cp_agent_probe_duration_seconds_count", kind="http") >= 1
            assert sample(text, "cp_agent_sync_duration_seconds_count") >= 1
            assert sample(text, "cp_agent_heartbeats_total", result="ok") >= 1
            assert sample(text, "cp_agent_fenced") == 0
            assert sample(text, "process_resident_memory_bytes") > 0
            assert "cp_agent_api_errors_total" in text and "cp_agent_proxy_reloads_total" in text
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                   timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr
        except BaseException:
            print(f"--- agent\n{agent.log_tail()}")
            raise
