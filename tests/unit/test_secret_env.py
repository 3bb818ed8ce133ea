"""The agent's side of Secrets and container defaults: env from secretEnv, the config-error status and
its backoff, the scrubbing of values from logs and statuses, and Docker's create body."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest

from agent.executor import CONFIG_ERROR, Executor
from agent.reconcile import DesiredInstance
from agent.runtime.base import ContainerSpec, RuntimeFailure
from agent.runtime.docker import create_config
from agent.runtime.fake import FakeRuntime
from agent.secretenv import Scrubber, ScrubFilter, SecretConfigError, pick
from controlplane.model import DEFAULT_PIDS_LIMIT, SECRET_REDACTED
from controlplane.secretref import SecretRef

IMG = "local/web:latest"
VALUE = "s3cr3t-Value-93f1"


class FakeSecrets:
    """A SecretSource over a dict of Secrets; counts its reads."""

    def __init__(self, secrets: Mapping[str, Mapping[str, str]], scrubber: Scrubber) -> None:
        self.secrets = dict(secrets)
        self.scrubber = scrubber
        self.reads = 0

    async def environment(self, refs: Sequence[SecretRef]) -> dict[str, str]:
        self.reads += 1
        for ref in refs:
            if ref.secret not in self.secrets:
                raise SecretConfigError(f'secret "{ref.secret}" not found (wanted by {ref.var})')
            self.scrubber.add(self.secrets[ref.secret].values())
        return pick(refs, self.secrets)


def want(**kw: object) -> DesiredInstance:
    options: dict[str, object] = {"unit": "app", "index": 0, "machine": "m1", "image": IMG, "generation": 1,
                                  "epoch": 1, "secret_env": (SecretRef("DB_PASSWORD", "db", "password"),)}
    options.update(kw)
    return DesiredInstance(name="app-0", **options)  # type: ignore[arg-type]


def setup(secrets: Mapping[str, Mapping[str, str]]) -> tuple[FakeRuntime, Executor, FakeSecrets, list[float]]:
    now = [1000.0]
    scrubber = Scrubber()
    source = FakeSecrets(secrets, scrubber)
    rt = FakeRuntime(images=[IMG], clock=lambda: now[0])
    ex = Executor(rt, cluster="c1", machine="m1", address="127.0.1.1", clock=lambda: now[0],
                  secret_source=source, scrubber=scrubber)
    return rt, ex, source, now


async def test_secret_values_go_into_the_containers_env_only() -> None:
    rt, ex, _, _ = setup({"db": {"password": VALUE}})
    result = await ex.sync([want(env={"MODE": "prod"})])
    assert result.statuses["app-0"]["phase"] == "Running"
    [spec] = rt.specs.values()
    assert spec.env["DB_PASSWORD"] == VALUE and spec.env["MODE"] == "prod" and spec.env["CP_INSTANCE"] == "app-0"
    assert VALUE not in repr(spec)  # a logged ContainerSpec shows no value


async def test_missing_secret_or_key_is_a_config_error_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    rt, ex, source, now = setup({})
    caplog.set_level(logging.WARNING, logger="agent.executor")
    first = await ex.sync([want()])
    status = first.statuses["app-0"]
    assert (status["phase"], status["reason"]) == ("Failed", CONFIG_ERROR)
    assert status["message"] == 'secret "db" not found (wanted by DB_PASSWORD)'
    assert first.requeue_after == pytest.approx(1.0) and not rt.specs
    for _ in range(5):  # wake-ups inside the back-off window neither re-read nor log
        again = await ex.sync([want()])
        assert again.statuses["app-0"] == status
    assert source.reads == 1
    now[0] += 1.0
    await ex.sync([want()])
    assert source.reads == 2 and ex.config_waits["app-0"].delay == 2.0  # doubled
    assert len([r for r in caplog.records if "cannot start" in r.getMessage()]) == 1  # same message: said once
    source.secrets["db"] = {"user": "app"}  # the Secret appears, without the key
    now[0] += 2.0
    keyless = (await ex.sync([want()])).statuses["app-0"]
    assert keyless["message"] == 'secret "db" has no key "password" (wanted by DB_PASSWORD)'
    source.secrets["db"] = {"password": VALUE}
    now[0] += 4.0
    fixed = await ex.sync([want()])
    assert fixed.statuses["app-0"]["phase"] == "Running" and "app-0" not in ex.config_waits
    assert [s.env["DB_PASSWORD"] for s in rt.specs.values()] == [VALUE]


async def test_an_engine_error_echoing_a_value_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    rt, ex, _, _ = setup({"db": {"password": VALUE}})

    async def failing(spec: ContainerSpec) -> None:
        raise RuntimeFailure(f'Docker said 400: invalid env "DB_PASSWORD={spec.env["DB_PASSWORD"]}"')

    rt.create_and_start = failing  # type: ignore[assignment,method-assign]
    caplog.set_level(logging.INFO)
    result = await ex.sync([want()])
    status = result.statuses["app-0"]
    assert status["reason"] == "CreateFailed" and SECRET_REDACTED in status["message"]
    assert VALUE not in status["message"] and VALUE not in " ".join(result.errors)
    assert all(VALUE not in r.getMessage() for r in caplog.records)


def test_scrub_filter_covers_messages_arguments_and_tracebacks() -> None:
    scrubber = Scrubber()
    scrubber.add([VALUE, "abc", 'quote"d-value'])
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "got %s and %r", (VALUE, {"k": VALUE}), None)
    try:
        raise ValueError(f"boom {VALUE}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert ScrubFilter(scrubber).filter(record)
    text = logging.Formatter().format(record)
    assert VALUE not in text and text.count(SECRET_REDACTED) == 3
    assert scrubber.scrub("abc is short") == "abc is short"  # too short to scrub
    assert scrubber.scrub('body {"v":"quote\\"d-value"}') == f'body {{"v":"{SECRET_REDACTED}"}}'  # JSON form


def test_desired_instance_reads_the_security_fields() -> None:
    inst = {"metadata": {"name": "app-0"}, "spec": {"unit": "app", "machine": "m1", "template": {
        "image": IMG, "secretEnv": {"B": "db/user", "A": "db/password"}, "user": "65534", "pidsLimit": 64,
        "allowPrivilegeEscalation": True, "capAdd": ["CAP_NET_ADMIN"]}}}
    d = DesiredInstance.from_instance(inst, {"spec": inst["spec"]["template"]})
    assert d.secret_env == (SecretRef("A", "db", "password"), SecretRef("B", "db", "user"))
    assert (d.user, d.pids_limit, d.allow_privilege_escalation, d.cap_add) == ("65534", 64, True, ("NET_ADMIN",))
    old = DesiredInstance.from_instance({"metadata": {"name": "x-0"}, "spec": {"unit": "x"}}, {"spec": {"image": IMG}})
    assert (old.user, old.pids_limit, old.secret_env) == ("", DEFAULT_PIDS_LIMIT, ())  # objects from before


def test_create_body_is_hardened_by_default() -> None:
    body = create_config(ContainerSpec(name="c", image=IMG))
    host = body["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["NET_RAW"]
    assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT and "User" not in body and "CapAdd" not in host
    relaxed = create_config(ContainerSpec(name="c", image=IMG, user="65534:65534", pids_limit=64,
                                          no_new_privileges=False, cap_add=("NET_RAW", "NET_ADMIN")))
    host = relaxed["HostConfig"]
    assert relaxed["User"] == "65534:65534" and host["PidsLimit"] == 64
    assert "SecurityOpt" not in host and "CapDrop" not in host and host["CapAdd"] == ["NET_RAW", "NET_ADMIN"]


def test_executor_maps_the_unit_fields_to_the_container() -> None:
    ex = Executor(FakeRuntime(images=[IMG]), cluster="c1", machine="m1", address="127.0.1.1")
    spec = ex.container_spec(want(secret_env=(), user="1000", pids_limit=99, allow_privilege_escalation=True,
                                  cap_add=("NET_ADMIN",)))
    assert (spec.user, spec.pids_limit, spec.no_new_privileges, spec.cap_add) == ("1000", 99, False, ("NET_ADMIN",))
    assert ex.container_spec(want(secret_env=())).no_new_privileges
