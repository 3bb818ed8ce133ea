"""exec's pure parts: the request's checks, the frames, the exec ticket's bindings, and cpctl's relay."""

from __future__ import annotations

import base64
import io
import json

import pytest

from controlplane.cli.common import CLIError
from controlplane.cli.exec import _Output, relay
from controlplane.errors import BadRequest
from controlplane.execstream import (
    EXIT,
    STDERR,
    STDOUT,
    FrameReader,
    command_digest,
    error_frame,
    exit_frame,
    exit_result,
    frame,
    parse_exec_request,
)
from controlplane.logticket import (
    LogParams,
    TicketRefused,
    TicketVerifier,
    b64url,
    issue,
    issue_exec,
    new_signing_key,
    public_keys_from_wire,
    public_raw,
    unb64url,
    verify,
    verify_exec,
)

KEY = new_signing_key()
WIRE = [base64.b64encode(public_raw(KEY)).decode()]
KEYS = public_keys_from_wire(WIRE)
NOW = 1_000_000.0
LS = command_digest(["ls", "-l"])


def test_exec_requests() -> None:
    assert parse_exec_request({"command": ["ls", "-l"]}).body() == {"command": ["ls", "-l"]}
    assert parse_exec_request({"command": ["id"], "container": "web"}).container == "web"
    for body in (None, [], {"command": "ls"}, {"command": []}, {"command": [1]}, {"command": [""]},
                 {"command": ["ls"], "stdin": True}, {"command": ["a" * 20000]}, {"command": ["x"] * 300},
                 {"command": ["ls"], "container": 5}):
        with pytest.raises(BadRequest):
            parse_exec_request(body)


def test_frames_in_any_chunking() -> None:
    wire = frame(STDOUT, b"out") + frame(STDERR, b"") + frame(STDERR, b"err") + exit_frame(3)
    for size in (1, 2, 7, len(wire)):
        reader = FrameReader()
        got = [f for start in range(0, len(wire), size) for f in reader.feed(wire[start:start + size])]
        assert got == [(STDOUT, b"out"), (STDERR, b""), (STDERR, b"err"), (EXIT, b'{"exitCode": 3}')]
        assert not reader.pending
    reader = FrameReader()
    good = list(reader.feed(frame(STDOUT, b"x")))
    assert good == [(STDOUT, b"x")]
    with pytest.raises(ValueError, match="not an exec frame"):
        list(reader.feed(b"\x09\x00\x00\x00\x01z"))
    with pytest.raises(ValueError, match="not an exec frame"):
        list(FrameReader().feed(b"\x01\xff\xff\xff\xff"))
    assert exit_result(b'{"exitCode": 0}') == (0, "")
    assert exit_result(json.dumps({"error": "no container"}).encode()) == (None, "no container")
    assert exit_result(b'{"exitCode": true}')[0] is None and exit_result(b"zzz")[0] is None


def test_exec_tickets_bind_action_machine_instance_and_command() -> None:
    ticket = issue_exec(KEY, machine="m1", instance="web-0", command_digest=LS, now=NOW)
    assert verify_exec(ticket, KEYS, machine="m1", instance="web-0", command_digest=LS, now=NOW)["act"] == "exec"
    cases = [({"machine": "m2"}, "wrong machine"), ({"instance": "web-1"}, "wrong instance"),
             ({"command_digest": command_digest(["ls", "-l", "/"])}, "altered command"),
             ({"now": NOW + 31}, "expired")]
    for change, why in cases:
        options = {"machine": "m1", "instance": "web-0", "command_digest": LS, "now": NOW, **change}
        with pytest.raises(TicketRefused, match=f"exec ticket refused: {why}"):
            verify_exec(ticket, KEYS, **options)  # type: ignore[arg-type]
    with pytest.raises(TicketRefused, match="log ticket refused: wrong action"):
        verify(ticket, KEYS, machine="m1", instance="web-0", params=LogParams(), now=NOW)
    log_ticket = issue(KEY, machine="m1", instance="web-0", params=LogParams(), now=NOW)
    with pytest.raises(TicketRefused, match="exec ticket refused: wrong action"):
        verify_exec(log_ticket, KEYS, machine="m1", instance="web-0", command_digest=LS, now=NOW)


def test_a_ticket_without_an_action_is_a_log_ticket_and_cannot_exec() -> None:
    """What an API server of before signed: no ``act``. Good for logs, never for exec."""
    claims = {"kid": json.loads(unb64url(issue(KEY, machine="m1", instance="w-0", params=LogParams(),
                                                now=NOW).split(".")[0]))["kid"],
              "aud": "m1", "instance": "w-0", "follow": False, "tail": None, "exp": NOW + 30, "nonce": "n1",
              "cmd": LS}
    body = b64url(json.dumps(claims).encode())
    old = f"{body}.{b64url(KEY.sign(body.encode()))}"
    assert verify(old, KEYS, machine="m1", instance="w-0", params=LogParams(), now=NOW)["nonce"] == "n1"
    with pytest.raises(TicketRefused, match="wrong action"):
        verify_exec(old, KEYS, machine="m1", instance="w-0", command_digest=LS, now=NOW)


def test_verifier_spends_exec_tickets_once() -> None:
    verifier = TicketVerifier("m1")
    ticket = issue_exec(KEY, machine="m1", instance="web-0", command_digest=LS, now=NOW)
    verifier.check_exec(ticket, WIRE, instance="web-0", command_digest=LS, now=NOW)
    with pytest.raises(TicketRefused, match="exec ticket refused: replayed"):
        verifier.check_exec(ticket, WIRE, instance="web-0", command_digest=LS, now=NOW + 1)


def test_cpctl_relay() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    wire = frame(STDOUT, b"o1\n") + frame(STDERR, b"e1\n") + frame(STDOUT, b"o2\n") + exit_frame(5)
    assert relay([wire[:3], wire[3:]], _Output(out, tty=False), _Output(err, tty=False)) == 5
    assert (out.getvalue(), err.getvalue()) == (b"o1\no2\n", b"e1\n")
    screen = io.BytesIO()
    assert relay([frame(STDOUT, b"\x1b[2Jhi\n") + exit_frame(0)], _Output(screen, tty=True),
                 _Output(io.BytesIO(), tty=True)) == 0
    assert screen.getvalue() == b"hi\n"  # a terminal gets no escape sequences
    for wire, why in ((error_frame("no container"), "exec failed: no container"),
                      (frame(STDOUT, b"x"), "ended before the command's exit code"),
                      (b"garbage!", "the exec stream is garbled")):
        with pytest.raises(CLIError, match=why):
            relay([wire], _Output(io.BytesIO(), tty=False), _Output(io.BytesIO(), tty=False))


def test_only_admins_may_exec() -> None:
    from controlplane.api.auth import User, authorize
    from controlplane.errors import Forbidden

    authorize(User("root", "admin"), "create", "instances", name="web-0", subresource="exec")
    for user in (User("v", "viewer"), User("node-m1", "node", machine="m1")):
        with pytest.raises(Forbidden, match="cannot create instances/web-0/exec"):
            authorize(user, "create", "instances", name="web-0", subresource="exec",
                      obj={"spec": {"machine": "m1"}})
