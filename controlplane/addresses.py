"""Node-reported addresses: IP literals only, and the one way the API server builds a URL from them.

A machine's ``status.address`` (and its instances') is written by the node itself, so it is
untrusted input that the API server later connects to (the log proxy) and that proxies route
to (Endpoints). It must be a bare IP literal: no host name (no DNS games), no port, path,
userinfo or brackets, no IPv6 zone id (``fe80::1%eth0``), and not an address that cannot name
one machine (unspecified, multicast, broadcast) or that names the cloud's metadata service
(link-local, 169.254.0.0/16 and fe80::/10). Pure: ``ipaddress`` and ``urllib.parse`` only.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote

MAX_ADDRESS_CHARS = 45  # the longest IPv6 text form (IPv4-mapped, fully written out)


def address_problem(value: str) -> str | None:
    """None when ``value`` is an IP literal a node may report; else why it is not."""
    if len(value) > MAX_ADDRESS_CHARS:
        return f"must be an IP address literal (at most {MAX_ADDRESS_CHARS} characters)"
    if "%" in value:
        return "must be an IP address literal without a zone id ('%')"
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address literal (no host name, port, path, userinfo or brackets)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254 on the wire
    if ip.is_unspecified:
        return "must not be the unspecified address"
    if ip.is_multicast:
        return "must not be a multicast address"
    if ip.is_link_local:
        return "must not be a link-local address"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "must not be the broadcast address"
    return None


def same_address(a: str, b: str) -> bool:
    """Whether two valid literals name the same address (``::1`` and ``0:0::1`` do)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def agent_url(address: str, port: int, path: str) -> str:
    """``http://ADDRESS:PORT/PATH`` for a validated address (IPv6 in brackets) and a port 1..65535;
    ValueError for anything else. ``path`` segments are percent-quoted."""
    problem = address_problem(address)
    if problem:
        raise ValueError(f"address {address[:MAX_ADDRESS_CHARS]!r} {problem}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r} is not in 1..65535")
    ip = ipaddress.ip_address(address)
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"http://{host}:{port}/{quote(path.lstrip('/'), safe='/')}"
