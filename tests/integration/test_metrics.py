"""``/metrics`` of a live cp-apiserver: request counts and latency by route and code, open watches,
etcd latency, the process and platform collectors and ``cp_build_info``, watch streams counted apart
from the latency histogram, and ``promtool check metrics`` accepts the exposition.

promtool comes from Debian's ``prometheus`` package without installing it (350 MB with its web
assets): ``apt-get download`` + ``dpkg-deb -x`` into a temp dir, binary cached in /tmp/cp-promtool/.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from apiserver_fixture import ApiServer
from promtool_fixture import promtool_path

from controlplane import __version__


@pytest.fixture(scope="session")
def promtool() -> str:
    return promtool_path()


def call(api: ApiServer, method: str, path: str, body: object = None, token: str = "admin-token") -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)


def scrape(api: ApiServer, token: str = "viewer-token") -> str:
    req = urllib.request.Request(api.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def test_metrics_after_traffic(apiserver: ApiServer, promtool: str) -> None:
    unit = {"metadata": {"name": "web"}, "spec": {"image": "local/web:1"}}
    assert call(apiserver, "POST", "/api/v1/units", unit) == 201
    assert call(apiserver, "POST", "/api/v1/units", unit) == 409
    for _ in range(3):
        assert call(apiserver, "GET", "/api/v1/units/web") == 200
    assert call(apiserver, "GET", "/api/v1/units/nope") == 404
    assert call(apiserver, "GET", "/api/v1/units", token="bad") == 401
    # hold a watch open while scraping
    opened = threading.Event()
    stop = threading.Event()

    def watcher() -> None:
        req = urllib.request.Request(apiserver.url + "/api/v1/units?watch=1&timeoutSeconds=5",
                                     headers={"Authorization": "Bearer admin-token"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.readline()
            opened.set()
            stop.wait(10)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    assert opened.wait(10)
    try:
        text = scrape(apiserver)
    finally:
        stop.set()
        thread.join(15)

    def sample(name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}") + 1] if "{" in line else ""))
                if all(found.get(k) == v for k, v in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample {name} {labels} in:\n{text[:3000]}")

    assert sample("cp_apiserver_requests_total", route="/api/v1/units", method="POST", code="201") == 1
    assert sample("cp_apiserver_requests_total", route="/api/v1/units", method="POST", code="409") == 1
    assert sample("cp_apiserver_requests_total", route="/api/v1/units/{name}", method="GET", code="200") == 3
    assert sample("cp_apiserver_requests_total", route="/api/v1/units/{name}", method="GET", code="404") == 1
    assert sample("cp_apiserver_requests_total", route="/api/v1/units", method="GET", code="401") == 1
    assert sample("cp_apiserver_request_duration_seconds_count", route="/api/v1/units/{name}", method="GET") >= 4
    assert sample("cp_apiserver_request_duration_seconds_bucket", route="/api/v1/units", method="POST",
                  le="+Inf") == 2
    assert sample("cp_apiserver_watches", resource="units") == 1
    assert sample("cp_etcd_request_duration_seconds_count", operation="create") >= 2

    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def _anonymous_status(api: ApiServer, path: str) -> int:
    try:
        with urllib.request.urlopen(api.url + path, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_metrics_need_a_reader_unless_anonymous(apiserver: ApiServer, unique_prefix: str) -> None:
    assert _anonymous_status(apiserver, "/metrics") == 401
    assert "cp_apiserver_requests_total" in scrape(apiserver, "viewer-token")
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(apiserver, "node-m1-token")
    assert err.value.code == 403
    with ApiServer(apiserver.etcd_url, unique_prefix + "-anon", controllers=False,
                   extra_args=["--metrics-anonymous"]) as anonymous:
        assert _anonymous_status(anonymous, "/metrics") == 200
        assert _anonymous_status(anonymous, "/api/v1/units") == 401  # only /metrics is opened


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rfind("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_watches_stay_out_of_the_latency_histogram_and_process_metrics_are_there(
    apiserver: ApiServer, promtool: str
) -> None:
    req = urllib.request.Request(apiserver.url + "/api/v1/units?watch=1&timeoutSeconds=1",
                                 headers={"Authorization": "Bearer admin-token"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()  # the server ends the stream after its timeoutSeconds
    for _ in range(2):
        assert call(apiserver, "GET", "/api/v1/units") == 200
    text = scrape(apiserver)
    assert _sample(text, "cp_apiserver_watch_requests_total", route="/api/v1/units", code="200") == 1
    count = _sample(text, "cp_apiserver_request_duration_seconds_count", route="/api/v1/units", method="GET")
    total = _sample(text, "cp_apiserver_request_duration_seconds_sum", route="/api/v1/units", method="GET")
    assert count == 2, "the watch is not one of the timed requests"
    assert total is not None and total < 1.0, "a 1 s watch would have pushed the sum past 1 s"
    assert _sample(text, "cp_apiserver_requests_total", route="/api/v1/units", method="GET", code="200") == 2
    assert _sample(text, "cp_build_info", version=__version__) == 1
    assert (_sample(text, "process_resident_memory_bytes") or 0) > 0
    assert (_sample(text, "process_open_fds") or 0) > 0
    assert _sample(text, "python_info") == 1
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
