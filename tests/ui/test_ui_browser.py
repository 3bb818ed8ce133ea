"""The web view (/ui/) in a real browser: headless Chromium over the DevTools protocol (browser_cdp.py).

One module-scoped cluster (tests/faults/agent_scenario.py: real etcd, cp-apiserver and four
cp-agents on Docker, running the seed scenario: web x2, web-lb x2, a global edge for
someapp.mywebsite.com) plus ``ticker``, a unit that prints a line a second so its log has
something to follow, and one Event whose reason and message are HTML, as an attacker would
write them. The tests run in file order on one page:

1. log in by typing a token: the four machine cards, every instance on the card of its machine,
   the units, the edge host; the token is in sessionStorage and nowhere in a URL; a phone-sized
   window has no sideways scroll. Screenshots ``ui.png`` and ``ui-phone.png``.
2. the attacker's HTML shows as text: no element made of it, no handler run.
3. an instance's details, its events (one written while it is open shows up) and its log, followed
   (the lines keep coming), opened and closed by keyboard.
4. admin actions, each after a confirmation (Escape cancels): cordon, uncordon, scale, drain.
5. a viewer sees the same page without any of those buttons.
6. a machine dies: its card turns NotReady within 2 s of the API saying so, and its instance
   shows up on another machine's card, with no list call in between (the page watches, never
   polls). Screenshot ``ui-machine-dead.png``.
7. the API server dies and comes back: the page re-lists and watches again by itself.

Screenshots go to ``$CP_TEST_ARTIFACTS`` (default ``build/test-artifacts/``). Without Chromium the
tests fail, unless ``CP_ALLOW_NO_BROWSER=1`` says a skip is fine (CI installs it: ``make deps``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "faults"))
from agent_scenario import FaultCluster, cpctl_ok, start_scenario, wait_converged, wait_until  # noqa: E402
from browser_cdp import Chromium, find_chromium  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("CP_TEST_ARTIFACTS") or TESTS.parent / "build" / "test-artifacts")
EVIL_MESSAGE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
EVIL_REASON = "<b onmouseover=alert(1)>Evil</b>"
PHONE_WIDTH = 390  # CSS pixels, a common phone's
TICKER = ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i from $CP_INSTANCE"; sleep 1; done']


def js(value: Any) -> str:
    """A Python value as a JavaScript literal."""
    return json.dumps(value)


def api_write(c: FaultCluster, method: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(c.api.url + path, data=json.dumps(body).encode(), method=method, headers={
        "Authorization": "Bearer admin-token",
        "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found:
        return found
    if os.environ.get("CP_ALLOW_NO_BROWSER") == "1":
        pytest.skip("chromium is not installed and CP_ALLOW_NO_BROWSER=1")
    pytest.fail("chromium is not installed: apt-get install chromium (make deps does), "
                "or set CP_ALLOW_NO_BROWSER=1 to skip the browser tests")


@pytest.fixture(scope="module")
def cluster(etcd: Any, chromium: str) -> Iterator[FaultCluster]:
    with FaultCluster(etcd.url, f"/cp-test/{uuid.uuid4().hex[:12]}", machines=4, machine_ttl=3) as c:
        start_scenario(c)
        cpctl_ok(c, "run", "ticker", "--image", "local/web:latest", "--timeout", "90", "--", *TICKER)
        wait_converged(c.api_get, timeout=60)
        api_write(c, "POST", "/api/v1/events", {
            "metadata": {"name": "evil-event"}, "type": "Warning", "reason": EVIL_REASON,
            "involvedObject": {"kind": "Instance", "name": "web-0"}, "message": EVIL_MESSAGE})
        yield c


@pytest.fixture(scope="module")
async def page(chromium: str) -> AsyncIterator[Chromium]:
    async with Chromium(binary=chromium) as browser:
        yield browser


EXPECTED_REFUSALS = (  # the page's probes: does the server want a token (401), is this an admin (403);
    ("status of 401", "/api/v1/machines?limit=1"), ("status of 403", "/api/v1/tokens?limit=1"),
    # and a drain's DELETE of a global instance the controller removed first (NotFound: gone already)
    ("status of 404", "/api/v1/instances/edge-"))


def unexpected_problems(page: Chromium) -> list[str]:
    """What the page reported (console errors, exceptions, failed loads), but its probes' refusals."""
    return [p for p in page.problems if not any(code in p and url in p for code, url in EXPECTED_REFUSALS)]


async def log_in(page: Chromium, token: str) -> None:
    await page.wait_for("!document.getElementById('login').hidden", what="the login form")
    assert await page.evaluate("document.activeElement.id") == "token"  # focused: just type
    await page.type_text(token)
    await page.press("Enter")
    await page.wait_for("document.getElementById('conn').dataset.conn === 'live'", what="the watches live")


def cards_js() -> str:
    """{machine: {state, instances}} as the page shows them."""
    return """Object.fromEntries([...document.querySelectorAll('[data-machine]')].map((card) => [card.dataset.machine,
      {state: card.dataset.state, instances: [...card.querySelectorAll('[data-instance]')].map((b) => b.dataset.instance).sort()}]))"""


def placed(c: FaultCluster) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {m: [] for m in c.names}
    for inst in c.instances():
        if inst["spec"].get("machine"):
            out.setdefault(inst["spec"]["machine"], []).append(inst["metadata"]["name"])
    return {m: sorted(names) for m, names in out.items()}


FOCUS = ("`focus on ${document.activeElement.tagName} ${document.activeElement.dataset.key || document.activeElement.id}; "
         "status: ${document.getElementById('action-status').textContent}; keys: ${JSON.stringify(window.__keys || [])}`")
KEYLOG = """if (!window.__keys) { window.__keys = [];
  for (const type of ['keydown', 'keypress', 'keyup', 'click']) document.addEventListener(type, (e) => {
    window.__keys.push(`${type}:${e.target.dataset?.key || e.target.id || e.target.tagName}:${e.target.isConnected}`);
    window.__keys = window.__keys.slice(-12); }, true); }"""


async def press_on(page: Chromium, selector: str) -> None:
    """Focus the element and press Enter on it, as a keyboard user does.

    A keyboard user whose focus did not land tabs to the button again: the focus is retried for up
    to 3 s (CI once saw one ``focus()`` not take, on a loaded machine, and never again here), and a
    miss after that fails with what the page had focused and which dialogs were open."""
    await page.evaluate(KEYLOG)
    target = f"document.querySelector({js(selector)})"
    await page.wait_for(f"(() => {{ const el = {target}; el.focus(); return document.activeElement === el; }})()",
                        timeout=3, what=f"the focus on {selector}",
                        diagnose=f"{FOCUS} + `; dialogs open: ${{[...document.querySelectorAll('dialog[open]')]"
                                 f".map((d) => d.id)}}; connected: ${{{target}?.isConnected}}`")
    await page.press("Enter")


async def test_login_by_token_shows_the_cluster(cluster: FaultCluster, page: Chromium) -> None:
    await page.goto(cluster.api.url + "/ui/")
    await log_in(page, "admin-token")
    await page.wait_for(f"(() => {{ const c = {cards_js()}; return Object.keys(c).length === 4 && "
                        f"Object.values(c).every((m) => m.state === 'Ready'); }})()", what="4 Ready cards")
    expected = placed(cluster)
    for _ in range(50):  # the API and the page agree (the page may be a watch event behind)
        shown = {m: v["instances"] for m, v in (await page.evaluate(cards_js())).items()}
        if shown == expected:
            break
        await asyncio.sleep(0.1)
    assert shown == expected
    assert sum(len(v) for v in expected.values()) == 2 + 2 + 4 + 1  # web, web-lb, edge on each, ticker
    assert await page.evaluate("document.querySelector('[data-unit=web] [data-role=ready]').textContent") == "2 / 2"
    host = await page.evaluate("document.querySelector('[data-host=\"someapp.mywebsite.com\"]').textContent")
    assert "web-lb" in host and "web-0" in host and "web-1" in host
    assert await page.evaluate("document.querySelectorAll('#events li').length") > 0
    assert await page.evaluate("sessionStorage.getItem('cp.token')") == "admin-token"
    urls = await page.evaluate("[location.href, ...performance.getEntriesByType('resource').map((e) => e.name)]")
    assert urls and not [u for u in urls if "admin-token" in u]
    await page.screenshot(ARTIFACTS / "ui.png")
    await page.emulate(width=PHONE_WIDTH, height=844, mobile=True, scale=2)
    try:
        await asyncio.sleep(0.3)
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH, "the page scrolls sideways"
        await page.screenshot(ARTIFACTS / "ui-phone.png")
    finally:
        await page.send("Emulation.clearDeviceMetricsOverride")
    assert not unexpected_problems(page)


async def test_untrusted_text_is_shown_as_text(cluster: FaultCluster, page: Chromium) -> None:
    item = await page.wait_for(f"[...document.querySelectorAll('#events li')].map((li) => li.textContent)"
                               f".find((t) => t.includes({js(EVIL_MESSAGE)}))", what="the evil event in the feed")
    assert EVIL_REASON in item
    assert await page.evaluate("document.querySelectorAll('img, script:not([src]), b').length") == 0
    assert await page.evaluate("window.__pwned === undefined")


async def test_instance_details_events_and_following_log(cluster: FaultCluster, page: Chromium) -> None:
    machine = next(i["spec"]["machine"] for i in cluster.instances("ticker"))
    opener = f"[data-machine={machine}] [data-instance=ticker-0]"
    await press_on(page, opener)
    await page.wait_for("document.getElementById('details').open", what="the details dialog")
    fields = await page.evaluate("document.getElementById('details-fields').textContent")
    assert f"machine{machine}" in fields and "phaseRunning" in fields
    api_write(cluster, "POST", "/api/v1/events", {  # while the dialog is open: it follows the events watch
        "metadata": {"name": "ticker-probe"}, "reason": "ProbeNote", "message": "written by the browser test",
        "involvedObject": {"kind": "Instance", "name": "ticker-0"}})
    events = await page.wait_for("document.getElementById('details-events').textContent.includes('ProbeNote') && "
                                 "document.getElementById('details-events').textContent", what="its new event")
    assert "written by the browser test" in events and EVIL_REASON not in events  # web-0's is not ticker-0's
    log_pane = "document.getElementById('details-log-state').textContent + ' ' + document.getElementById('details-log').textContent"
    first = await page.wait_for("(document.getElementById('details-log').textContent.match(/tick \\d+ from ticker-0/g) || []).length",
                                what="log lines", diagnose=log_pane)
    later = await page.wait_for(f"(() => {{ const n = (document.getElementById('details-log').textContent"
                                f".match(/tick \\d+ from ticker-0/g) || []).length; return n > {first} && n; }})()",
                                timeout=10, what="more log lines (following)", diagnose=log_pane)
    assert later > first
    assert await page.evaluate("document.getElementById('details-log-state').textContent") == "(following)"
    await page.press("Escape")
    await page.wait_for("!document.getElementById('details').open", what="the dialog closed")
    await page.wait_for(f"document.activeElement === document.querySelector({js(opener)})", timeout=2,
                        what="the focus back on the instance", diagnose=FOCUS)


async def confirm(page: Chromium, *, accept: bool) -> None:
    await page.wait_for("document.getElementById('confirm').open", what="the confirmation", diagnose=FOCUS)
    if accept:
        await press_on(page, "#confirm-ok")
    else:
        await page.press("Escape")
    await page.wait_for("!document.getElementById('confirm').open", what="the confirmation closed")


def unschedulable(c: FaultCluster, machine: str) -> bool:
    return bool(c.api_get(f"machines/{machine}")["spec"].get("unschedulable"))


async def test_admin_cordons_scales_and_drains_after_confirming(cluster: FaultCluster, page: Chromium) -> None:
    await press_on(page, "[data-key='cordon:m4']")
    await confirm(page, accept=False)
    await asyncio.sleep(0.5)
    assert not unschedulable(cluster, "m4")  # cancelled: nothing sent
    await press_on(page, "[data-key='cordon:m4']")
    await confirm(page, accept=True)
    wait_until(lambda: unschedulable(cluster, "m4"), timeout=5, what="m4 cordoned")
    await page.wait_for("document.querySelector('[data-machine=m4]').textContent.includes('cordoned')", what="the badge")
    await press_on(page, "[data-key='cordon:m4']")  # now Uncordon
    await confirm(page, accept=True)
    wait_until(lambda: not unschedulable(cluster, "m4"), timeout=5, what="m4 uncordoned")

    await press_on(page, "[data-key='scale:ticker']")
    await page.wait_for("document.getElementById('confirm').open", what="the scale dialog", diagnose=FOCUS)
    await page.evaluate("document.getElementById('confirm-input').select()")
    await page.type_text("2")
    await page.press("Enter")
    wait_until(lambda: cluster.api_get("units/ticker")["spec"]["replicas"] == 2, timeout=5, what="ticker scaled")
    await page.wait_for("document.querySelector('[data-unit=ticker] [data-role=ready]').textContent === '2 / 2'",
                        timeout=60, what="ticker 2 / 2 in the table")

    machine = next(i["spec"]["machine"] for i in cluster.instances("ticker") if i["metadata"]["name"] == "ticker-0")
    await press_on(page, f"[data-key='drain:{machine}']")
    await confirm(page, accept=True)
    status = await page.wait_for("document.getElementById('action-status').textContent.includes('drained') && "
                                 "document.getElementById('action-status').textContent", what="drained")
    assert status.startswith(f"{machine} drained: ")
    assert unschedulable(cluster, machine)
    wait_until(lambda: not [i for i in cluster.instances() if i["spec"].get("machine") == machine],
               timeout=30, what=f"{machine} empty")
    api_write(cluster, "PUT", "/api/v1/units/ticker/scale",
              {"apiVersion": "v1", "kind": "Scale", "metadata": {"name": "ticker"}, "spec": {"replicas": 1}})
    api_write(cluster, "PATCH", f"/api/v1/machines/{machine}", {"spec": {"unschedulable": False}})
    assert not unexpected_problems(page)


async def test_a_viewer_only_looks(cluster: FaultCluster, page: Chromium) -> None:
    await press_on(page, "#logout")
    await page.wait_for("!document.getElementById('login').hidden", what="the login form again")
    assert await page.evaluate("sessionStorage.getItem('cp.token')") is None
    await page.type_text("wrong-token")
    await page.press("Enter")
    await page.wait_for("document.getElementById('login-error').textContent.includes('refused')", what="refused")
    await page.evaluate("document.getElementById('token').value = ''")
    await log_in(page, "viewer-token")
    await page.wait_for("document.querySelectorAll('[data-machine]').length === 4", what="the cards")
    assert await page.evaluate("document.body.dataset.role") == "viewer"
    assert await page.evaluate("document.querySelectorAll('[data-key^=cordon], [data-key^=drain], "
                               "[data-key^=scale]').length") == 0


async def test_a_dead_machine_turns_notready_and_its_instance_moves(cluster: FaultCluster, page: Chromium) -> None:
    wait_converged(cluster.api_get, timeout=90, what="the scenario back on 4 machines")
    victim = next(i["spec"]["machine"] for i in cluster.instances("web") if i["metadata"]["name"] == "web-0")
    await page.wait_for(f"!!document.querySelector('[data-machine={victim}] [data-instance=web-0]')", what="web-0 shown")
    lists_before = await page.evaluate("performance.getEntriesByType('resource').filter((e) => "
                                       "e.name.includes('/api/v1/') && !e.name.includes('watch=1')).length")
    cluster.kill_machine(victim)
    api_saw = page_saw = 0.0
    deadline = time.monotonic() + 30
    while not page_saw and time.monotonic() < deadline:
        state = await asyncio.to_thread(lambda: cluster.api_get(f"machines/{victim}")["status"].get("state"))
        now = time.monotonic()
        if state == "NotReady" and not api_saw:
            api_saw = now
        if await page.evaluate(f"document.querySelector('[data-machine={victim}]').dataset.state") == "NotReady":
            page_saw = time.monotonic()
            api_saw = api_saw or page_saw
        await asyncio.sleep(0.1)
    assert page_saw, f"the card of {victim} never turned NotReady"
    assert page_saw - api_saw <= 2.0, f"the card turned NotReady {page_saw - api_saw:.1f}s after the API said so"
    moved_to = await page.wait_for(
        f"(() => {{ const b = document.querySelector('[data-machine]:not([data-machine={victim}])[data-state=Ready] "
        f"[data-instance=web-0]'); return b && !document.querySelector('[data-machine={victim}] [data-instance=web-0]')"
        f" && b.closest('[data-machine]').dataset.machine; }})()", timeout=60, what="web-0 on another card")
    assert moved_to != victim
    assert cluster.api_get("instances/web-0")["spec"]["machine"] == moved_to
    lists_after = await page.evaluate("performance.getEntriesByType('resource').filter((e) => "
                                      "e.name.includes('/api/v1/') && !e.name.includes('watch=1')).length")
    assert lists_after == lists_before, "the page listed again instead of following its watches"
    await page.screenshot(ARTIFACTS / "ui-machine-dead.png")
    assert not unexpected_problems(page)


async def test_a_broken_watch_is_listed_again(cluster: FaultCluster, page: Chromium) -> None:
    """The API server dies and comes back: the page says it is reconnecting, then lists and watches
    again on its own (with backoff), and shows a change made after the restart."""
    cluster.api.kill()
    await page.wait_for("document.getElementById('conn').dataset.conn === 'reconnecting'", timeout=15,
                        what="the page noticing the broken watches")
    await asyncio.to_thread(cluster.api.start)
    await page.wait_for("document.getElementById('conn').dataset.conn === 'live'", timeout=30,
                        what="the watches live again", diagnose="document.getElementById('conn').textContent")
    api_write(cluster, "PATCH", "/api/v1/machines/m2", {"metadata": {"labels": {"ui-check": "after-restart"}}})
    await page.wait_for("!!document.querySelector('[data-machine=m2] .chips')?.textContent.includes('ui-check=after-restart')",
                        timeout=10, what="the new label on m2's card")
