"""GET /api/v1/units/NAME throughput of cp-apiserver (real etcd behind it; reads come from the
watch cache) against a bare aiohttp handler returning the same bytes, both driven by the same
load generator: ``wrk`` when installed (apt-get install -y wrk), else an aiohttp client with N
connections in a separate process. Prints requests/s of each and the ratio (goal >= 0.5).

    python bench/bench_get.py [--seconds 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _env import HEADERS, TOKEN, cluster, unit_body
from etcd_fixture import free_port

BARE_SERVER = r'''
import sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
async def handler(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/api/v1/units/{name}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
'''

CLIENT = r'''
import asyncio, sys, time, aiohttp
url, seconds, conns, token = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
async def main():
    count = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     headers={"Authorization": "Bearer " + token}) as s:
        end = time.monotonic() + seconds
        async def worker():
            nonlocal count
            while time.monotonic() < end:
                async with s.get(url) as r:
                    await r.read()
                    count += r.status == 200
        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(conns)))
        print(count / (time.monotonic() - start))
asyncio.run(main())
'''


def load(url: str, seconds: int, connections: int) -> float:
    """Requests per second against ``url``."""
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"Authorization: Bearer {TOKEN}",
                              url], capture_output=True, text=True, check=True).stdout
        if "Non-2xx" in out:
            raise RuntimeError(f"non-2xx answers:\n{out}")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    out = subprocess.run([sys.executable, "-c", CLIENT, url, str(seconds), str(connections), TOKEN],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    with cluster() as (_etcd, api):
        req = urllib.request.Request(api.url + "/api/v1/units", data=json.dumps(unit_body("web")).encode(),
                                     headers=HEADERS, method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        with urllib.request.urlopen(urllib.request.Request(api.url + "/api/v1/units/web", headers=HEADERS)) as r:
            body = r.read()
        ours = load(api.url + "/api/v1/units/web", args.seconds, args.connections)

    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        path = Path(tmp) / "body.json"
        path.write_bytes(body)
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(path), str(port)])
        try:
            url = f"http://127.0.0.1:{port}/api/v1/units/web"
            wait_up(url)
            baseline = load(url, args.seconds, args.connections)
        finally:
            bare.terminate()
            bare.wait(10)
    tool = "wrk" if shutil.which("wrk") else "aiohttp client"
    print(f"load generator: {tool}, {args.connections} connections, {args.seconds}s each, body {len(body)} bytes")
    print(f"cp-apiserver GET /api/v1/units/web: {ours:,.0f} req/s")
    print(f"baseline bare aiohttp handler:      {baseline:,.0f} req/s")
    print(f"ratio: {ours / baseline:.2f} (goal >= 0.5)")


if __name__ == "__main__":
    main()
