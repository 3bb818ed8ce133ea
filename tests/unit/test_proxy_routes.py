"""Table tests for agent.proxy.routes.choose_routes: exactly which routes a proxy keeps, which it
drops and why, and which endpoints of the kept routes it skips and why."""

from __future__ import annotations

import pytest

from agent.proxy.routes import (
    DroppedRoute,
    Endpoint,
    ProxySpec,
    Route,
    RouteChoice,
    SkippedEndpoint,
    choose_routes,
)

LB = ProxySpec(kind="loadbalancer", port=8080, target="web")
EDGE = ProxySpec(kind="edge", port=8088, domain="mywebsite.com")


def ep(i: int, port: int = 32768) -> Endpoint:
    return Endpoint(address=f"127.0.1.{i}", port=port, instance=f"web-{i}", machine=f"m{i}")


WEB = Route("web", (ep(1),))
API = Route("api", (ep(2),))
SOMEAPP = Route("someapp-lb", (ep(1),), host="someapp")
DOCS = Route("docs", (ep(3),), host="docs")

# name -> (proxy, routes, kept, dropped as (unit, reason))
CASES: dict[str, tuple[ProxySpec, list[Route], list[Route], list[tuple[str, str]]]] = {
    "lb: the target is kept": (LB, [WEB], [WEB], []),
    "lb: no route for the target: an empty one (503)": (LB, [], [Route("web")], []),
    "lb: other units dropped": (
        LB, [API, WEB, Route("zed")], [WEB],
        [("api", "not the target unit 'web' of this loadbalancer"),
         ("zed", "not the target unit 'web' of this loadbalancer")],
    ),
    "lb: a second route for the target dropped (the first given is kept)": (
        LB, [WEB, Route("web", (ep(2),))], [WEB], [("web", "duplicate route for the target unit")],
    ),
    "lb: hosts are not checked": (LB, [Route("web", (ep(1),), host="Bad!")], [Route("web", (ep(1),), host="Bad!")],
                                  []),
    "edge: kept sorted by host": (EDGE, [SOMEAPP, DOCS], [DOCS, SOMEAPP], []),
    "edge: nothing exposed": (EDGE, [], [], []),
    "edge: host not a DNS label": (
        EDGE, [SOMEAPP, Route("bad", (ep(1),), host="Bad_Host!")], [SOMEAPP],
        [("bad", "expose.host 'Bad_Host!' is not a DNS label")],
    ),
    "edge: host with a dot": (
        EDGE, [Route("bad", host="a.b")], [], [("bad", "expose.host 'a.b' is not a DNS label")],
    ),
    "edge: host too long": (
        EDGE, [Route("bad", host="a" * 64)], [], [("bad", f"expose.host {'a' * 64!r} is not a DNS label")],
    ),
    "edge: no host": (EDGE, [Route("bad", (ep(1),))], [], [("bad", "no expose.host")]),
    "edge: unit name not a DNS label": (
        EDGE, [Route("Bad Unit", host="badunit")], [], [("Bad Unit", "unit name 'Bad Unit' is not a DNS-1123 label")],
    ),
    "edge: expose port out of range": (
        EDGE, [Route("bad", host="bad", port=70000)], [], [("bad", "expose.port 70000 out of range 1-65535")],
    ),
    "edge: a taken host goes to the first unit by name": (
        EDGE, [Route("zzz", (ep(2),), host="someapp"), SOMEAPP], [SOMEAPP],
        [("zzz", "host someapp.mywebsite.com already routed to unit 'someapp-lb'")],
    ),
    "edge: several drops, in unit-name order": (
        EDGE, [Route("zzz", host="docs"), Route("b", host="B"), DOCS, Route("a")], [DOCS],
        [("a", "no expose.host"), ("b", "expose.host 'B' is not a DNS label"),
         ("zzz", "host docs.mywebsite.com already routed to unit 'docs'")],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_choose_routes_table(name: str) -> None:
    proxy, routes, kept, dropped = CASES[name]
    choice = choose_routes(proxy, routes)
    assert list(choice.kept) == kept
    assert [(d.route.unit, d.reason) for d in choice.dropped] == dropped
    assert choice.skipped_endpoints == ()
    # a dropped route is reported as it was given
    assert all(d.route in routes for d in choice.dropped)
    # the choice does not depend on the order of the routes, unless two have the same unit,
    # host and port (the sort key): then the first given is kept
    if "first given" not in name:
        assert choose_routes(proxy, list(reversed(routes))).kept == choice.kept


def test_bad_endpoints_skipped_with_reasons_the_rest_sorted_and_deduplicated() -> None:
    bad_ip, port_0, port_high = Endpoint("not-an-ip", 80), Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 65536)
    route = Route("web", (ep(3), bad_ip, ep(1), port_0, ep(3), port_high, Endpoint("::1", 9000),
                          Endpoint("0:0::1", 9000)))
    choice = choose_routes(LB, [route])
    assert choice == RouteChoice(
        kept=(Route("web", (ep(1), ep(3), Endpoint("::1", 9000))),),
        dropped=(),
        skipped_endpoints=(
            SkippedEndpoint(route, bad_ip, "address 'not-an-ip' is not an IP address"),
            SkippedEndpoint(route, port_0, "port 0 out of range 1-65535"),
            SkippedEndpoint(route, port_high, "port 65536 out of range 1-65535"),
        ),
    )


def test_dropped_routes_keep_their_endpoints_unchecked() -> None:
    bad = Route("api", (Endpoint("nope", 1),))
    choice = choose_routes(LB, [bad])
    assert choice.dropped == (DroppedRoute(bad, "not the target unit 'web' of this loadbalancer"),)
    assert choice.skipped_endpoints == ()
    assert choice.kept == (Route("web"),)
