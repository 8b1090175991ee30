"""Builders and shards: the checkout that plans a run, a shard's builder from start to removal, its log.

Sync activities (git, docker-py and boto3 are sync SDKs) on the worker's thread pool. ``run_shard`` and
``remove_builder`` are served by the host's own task queue too: a shard's retries come back to the host that
owns its builder and re-attach to it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.errors import translate_errors
from activities.hosts import installation_queue
from katkit.builders import Builder, BuilderSpec, builder_for, builder_name, cache_scope
from katkit.config import LinkConfig, TenantConfig
from katkit.gitrepo import RepoMirror, is_remote, normalize_url
from katkit.logstore import LogStore, tail
from katkit.models import (CheckoutInput, PrepareAhead, PrepareResult, RemoveBuilderInput, RunPlan, ShardInput,
                           ShardResult)
from katkit.names import log_key
from katkit.plan import check_run, read_plan
from katkit.preparer import Preparer
from katkit.secrets import Masker, resolve

LOG_CHUNK = 1 << 20
POLL_S = 0.5  # how often the log is copied to the store while ci.sh runs; exits are seen at once
TIMED_OUT_EXIT = 124
READY_GRACE_S = 900.0  # how much longer than its phase's timeout a prepared builder waits to be told to start

log = structlog.get_logger("katkit.activities")


class _Writers:
    """Log key -> the newest attempt that has claimed it in this process. A timed-out attempt may still run when
    the server hands its retry to this worker; it stops writing (and leaves the builder alone) once a newer attempt
    has claimed the log. The newest claims are kept (bounded), never dropped when an attempt ends."""

    KEEP = 20_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: OrderedDict[str, int] = OrderedDict()

    def claim(self, key: str, attempt: int) -> None:
        with self._lock:
            self._newest[key] = max(attempt, self._newest.get(key, 0))
            self._newest.move_to_end(key)
            while len(self._newest) > self.KEEP:
                self._newest.popitem(last=False)

    def superseded(self, key: str, attempt: int) -> bool:
        return self._newest.get(key, attempt) > attempt


_log_writers = _Writers()


def _resume_position(details: object, fresh: bool, base: int) -> tuple[int, int]:
    """Where a shard's log continues: (bytes of the builder's log taken, bytes of the store written), as the last
    attempt heartbeated them; a fresh builder starts after its note (``base``). Older attempts heartbeated one
    offset: the store then held ``base`` + that many bytes."""
    if fresh or not isinstance(details, (list, tuple)) or not details:
        return 0, base
    if len(details) >= 2:
        return int(details[0]), int(details[1])
    return int(details[0]), int(details[0]) + base


def _cancel_reason(details: activity.ActivityCancellationDetails | None) -> str:
    if details is None:
        return "unknown"
    return ", ".join(k for k in ("timed_out", "not_found", "worker_shutdown", "paused", "reset", "cancel_requested")
                     if getattr(details, k)) or "unknown"


def trusted(inp: ShardInput) -> bool:
    """Whether the shard may have secrets and the GitHub token: not for a fork's pull request, unless the tenant
    says so (``secrets_for_fork_prs``)."""
    return not inp.untrusted or inp.tenant.secrets_for_fork_prs


def builder_token(inp: ShardInput, github_token: str | None) -> str | None:
    """The worker's GitHub token for ci.sh: when the tenant asks for it (``github.token_to_builder``), the link is on
    GitHub (a builder that clones another host never has it) and the code is trusted."""
    if not inp.tenant.github.token_to_builder or not trusted(inp):
        return None
    return inp.link.github_token(github_token)


def resolve_secrets(inp: ShardInput) -> dict[str, str]:
    """The tenant's secrets for this phase, resolved on this worker (``katkit.secrets``): a missing one is one line
    naming the tenant, the secret and its reference (the phase fails; not retried)."""
    tenant = inp.tenant
    if not tenant.secrets or not trusted(inp):
        return {}
    if tenant.phases_with_secrets is not None and inp.phase.name not in tenant.phases_with_secrets:
        return {}
    return {name: resolve(ref, what=f"secret {name} of tenant {tenant.name}", region=tenant.ecs.region)
            for name, ref in sorted(tenant.secrets.items())}


def contract_env(inp: ShardInput, github_token: str | None = None, secrets: dict[str, str] | None = None) -> dict[str, str]:
    """What ci.sh sees: the BuildParams, the tenant's secrets, then the contract's KATKIT_* variables (which win),
    and the GitHub token when the tenant gives it (``builder_token``)."""
    token = builder_token(inp, github_token)
    secret = {"GITHUB_TOKEN": token} if token else {}
    return {
        **inp.phase.build_params,
        **(secrets or {}),
        "KATKIT_SHA": inp.sha,
        "KATKIT_PHASE": inp.phase.name,
        "KATKIT_ENV": inp.tenant.env,
        "KATKIT_TENANT": inp.tenant.name,
        "KATKIT_REPO": inp.link.repo,
        "KATKIT_BRANCH": inp.link.branch,
        "KATKIT_RUN_ID": inp.run_id,
        "KATKIT_SHARD_INDEX": str(inp.shard_index),
        "KATKIT_SHARD_COUNT": str(inp.phase.parallelism),
        **secret,
    }


def cache_branch(inp: ShardInput) -> str:
    """The branch whose cache a shard uses: the one the run was started from ('branch B'), 'pr-N' for a pull
    request, else the link's home branch (a run of a sha)."""
    kind, _, value = inp.ref.partition(" ")
    if kind == "branch" and value:
        return value
    if kind == "pr" and value:
        return f"pr-{value}"
    return inp.link.branch


class ShardActivities:
    """``checkout``, ``run_shard`` and ``remove_builder``: what needs the repository mirror, the builders and the
    log store."""

    def __init__(self, home: Path, log_store: LogStore, *, mirror: RepoMirror | None = None,
                 builders: Callable[[TenantConfig], Builder] | None = None, github_token: str | None = None,
                 host_queue: str | None = None) -> None:
        self.log_store = log_store
        self.mirror = mirror or RepoMirror(home / "git")
        self._builders = builders or (lambda t: builder_for(t, home))
        self._github_token = github_token
        self.host_queue = host_queue
        self._shas: OrderedDict[str, None] = OrderedDict()  # url@sha this host's mirror holds (``_have_sha``)
        self._shas_lock = threading.Lock()
        self.preparer = Preparer()  # the builders of the phases ahead, made ready in the background (pipelining)

    def _token(self, link: LinkConfig) -> str | None:
        return link.github_token(self._github_token)

    @activity.defn(name="checkout")
    @translate_errors
    def checkout(self, inp: CheckoutInput) -> RunPlan:
        """Resolve the sha and read + validate the repository's files at it and the tenant's builder images."""
        token = self._token(inp.link)
        if inp.tenant is None:  # an input recorded before checkouts named their tenant: files only
            plan = read_plan(self.mirror, inp.link, inp.env, inp.sha, token)
        else:
            tenant = inp.tenant
            plan = check_run(self.mirror, inp.link, tenant, inp.sha, token, lambda: self._builders(tenant))
            first = plan.first_prepared(inp.prepare_ahead)
            info, now = activity.info(), datetime.now(timezone.utc)
            if first and info.workflow_id and info.workflow_run_id:  # the run's first phases: their builders get
                # ready while the workflow reads the plan
                self._prepare_ahead(
                    [PrepareAhead(phase=p, deadline=now + tenant.phase_timeout * (k + 1)) for k, p in enumerate(first)],
                    ShardInput(run_id=info.workflow_id, attempt_key=info.workflow_run_id, tenant=tenant, link=inp.link,
                               sha=plan.sha, phase=first[0], shard_index=0, local_fleet=plan.local_fleet, deadline=now,
                               untrusted=inp.untrusted, ref=inp.ref), watch=True)
        plan.host_queue = self.host_queue  # the run's shards go to this host, which has just fetched the sha
        return plan

    @activity.defn(name="run_shard")
    @translate_errors
    def run_shard(self, inp: ShardInput) -> ShardResult:
        """Start (or re-attach to) the shard's builder, stream its log into the store, wait, remove it."""
        with structlog.contextvars.bound_contextvars(
            run_id=inp.run_id, tenant=inp.tenant.name, phase=inp.phase.name, shard=inp.shard_index
        ):
            return self._run_shard(inp)

    def _run_shard(self, inp: ShardInput) -> ShardResult:
        result = self._run_shard_to_end(inp)
        took = (result.ended_at - result.started_at).total_seconds() if result.started_at and result.ended_at else None
        ending = result.message if " in " in result.message or took is None else f"{result.message} in {took:.1f} s"
        result.summary = f"{inp.phase.name} shard {inp.shard_index + 1}/{inp.phase.parallelism}: {ending}"
        return result

    @staticmethod
    def _where() -> tuple[str, str]:
        """The namespace and the installation's task queue of the calling activity (a builder's labels: the reaper
        asks that namespace about the builder's run). Taken in the activity's thread, for the preparer's too."""
        info = activity.info()
        return info.workflow_namespace or "", installation_queue(info.task_queue)

    def _spec(self, inp: ShardInput, name: str, env: dict[str, str], where: tuple[str, str] | None = None) -> BuilderSpec:
        namespace, queue = where or self._where()
        return BuilderSpec(
            name=name,
            labels={"katkit.run": inp.run_id, "katkit.tenant": inp.tenant.name, "katkit.repo": inp.link.repo,
                    "katkit.sha": inp.sha, "katkit.phase": inp.phase.name, "katkit.shard": str(inp.shard_index),
                    "katkit.execution": inp.attempt_key, "katkit.namespace": namespace, "katkit.task_queue": queue,
                    "katkit.generation": str(inp.generation)},
            repo_url=normalize_url(inp.link.url), sha=inp.sha, folder=inp.link.folder,
            env=env, image=inp.phase.image, local_fleet=inp.local_fleet,
            mirror_path=str(self.mirror.mirror_path(inp.link.url)),
            cache_paths=list(inp.tenant.cache),
            cache_scope=cache_scope(inp.tenant.name, inp.link.repo, cache_branch(inp)) if inp.tenant.cache else "",
            cache_save=trusted(inp),  # a fork's code may restore the cache, never write what trusted runs restore
            trusted=trusted(inp),
        )

    @activity.defn(name="prepare_builder")
    @translate_errors
    def prepare_builder(self, inp: ShardInput) -> PrepareResult:
        """Make the shard's builder ready while the phases before run (pipelining): its agent started and checked
        out, waiting to be told to start. No secret and no GitHub token: they are resolved when ci.sh starts and
        travel with the word to start (``run_shard``). A builder that cannot be prepared is no failure: ``run_shard``
        then makes it as it always did."""
        name = builder_name(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        self._prepare(inp, self._where())
        return PrepareResult(builder=name)

    def _prepare(self, inp: ShardInput, where: tuple[str, str]) -> None:
        """Make one shard's builder ready (``prepare_builder``, or the preparer in the background)."""
        name = builder_name(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        key = log_key(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        if self.log_store.is_finished(key):
            return  # a prepare that came late: its shard has ended, its builder is gone
        spec = self._spec(inp, name, contract_env(inp), where)
        # it waits until its phase's shards would have timed out, and for outages of the worker or the server
        waits = (inp.deadline - datetime.now(timezone.utc)).total_seconds() + READY_GRACE_S
        spec.ready_for_s = max(waits, READY_GRACE_S)
        self._have_sha(inp)
        builder = self._builders(inp.tenant)
        builder.prepare(spec)
        if self.log_store.is_finished(key):  # it ended meanwhile (a shard records its end before it removes its
            builder.remove(name)             # builder): this builder was made after that removal

    def _prepare_ahead(self, ahead: list[PrepareAhead], like: ShardInput, watch: bool = False) -> None:
        """Hand the builders of ``ahead`` (phases after ``like``'s, of the same run) to the preparer; ``watch``: the
        checkout's, which its run cannot know of should it end before the checkout does (``Preparer.watch``; the
        run discards those a shard handed over)."""
        where, builder = self._where(), self._builders(like.tenant)
        for item in ahead:
            for i in range(item.phase.parallelism):
                inp = like.model_copy(update={"phase": item.phase, "shard_index": i, "deadline": item.deadline,
                                              "generation": 0, "log_note": "", "prepare": []})
                name = builder_name(inp.run_id, inp.attempt_key, item.phase.name, i)
                self.preparer.submit(name, functools.partial(self._prepare, inp, where),
                                     remove=functools.partial(builder.remove, name),
                                     run=(inp.run_id, inp.attempt_key) if watch else None)

    def _run_shard_to_end(self, inp: ShardInput) -> ShardResult:
        name = builder_name(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        key = log_key(inp.run_id, inp.attempt_key, inp.phase.name, inp.shard_index, inp.generation)
        builder = self._builders(inp.tenant)
        secrets = resolve_secrets(inp)  # at the edge: values live in this activity and the builder's env, nowhere else
        token = builder_token(inp, self._github_token)
        masker = Masker([*secrets.values(), *([token] if token else [])])
        spec = self._spec(inp, name, contract_env(inp, self._github_token, secrets))
        attempt = activity.info().attempt
        _log_writers.claim(key, attempt)  # this attempt writes the log now; an older one still running stops writing
        recorded = self.log_store.outcome(key)
        self.preparer.settle(name, progress=activity.heartbeat)  # handed to this host's preparer: dropped or done
        if recorded:  # an earlier attempt saw the shard end; only its completion was lost (a server outage)
            log.info("shard already finished", builder=name)
            builder.remove(name, progress=activity.heartbeat)
            return ShardResult.model_validate_json(recorded)
        started_at = datetime.now(timezone.utc)
        remove = True
        spec.first_try = attempt == 1
        try:
            self._have_sha(inp)
            fresh = builder.start(spec)
            log.info("builder started" if fresh else "builder re-attached", builder=name)
            if inp.prepare:  # ci.sh runs: the phases ahead get their builders ready meanwhile
                self._prepare_ahead(inp.prepare, inp)
            # the log continues from what this builder produced, as the last attempt reported it, never from the
            # store's size (which may hold what another builder or a note wrote)
            note = f"[katkit] {inp.log_note}\n".encode() if inp.log_note else b""
            pos = _resume_position(activity.info().heartbeat_details, fresh, len(note))
            if fresh and note:  # why this builder is a new one (its host did not come back), then its own log
                self.log_store.write_at(key, 0, note)
            deadline = inp.deadline.timestamp()
            waited = False
            while True:
                state = builder.state(name)
                pos = self._pump(builder, name, key, pos, attempt, masker, final=not state.running)
                if not state.running:
                    break
                if time.time() >= deadline:
                    pos = self._pump(builder, name, key, pos, attempt, masker, final=True)  # all it wrote, masked
                    timeout_s = inp.tenant.phase_timeout.total_seconds()
                    self._note(key, f"phase timed out: ci.sh is killed after the phase timeout ({timeout_s:.0f} s)")
                    result = self._finished(key, ShardResult(  # recorded first: a retry finds it, never a half-killed builder
                        builder=name, exit_code=TIMED_OUT_EXIT, log_key=key, started_at=started_at,
                        ended_at=datetime.now(timezone.utc), reattached=not fresh,
                        message=f"timed out after the phase timeout of {timeout_s:.0f} s"))
                    builder.remove(name, progress=lambda: activity.heartbeat(*pos))
                    return result
                if waited:  # most no-op phases end within the first wait: no heartbeat RPC for them
                    activity.heartbeat(*pos)
                builder.wait(name, POLL_S)
                waited = True
            code = state.exit_code if state.exit_code is not None else -1
            message = state.reason or f"exited {code}"
            if state.exit_code is None:
                self._note(key, message)
            log.info("shard finished", exit_code=code)
            return self._finished(key, ShardResult(builder=name, exit_code=code, log_key=key, started_at=started_at,
                                                   ended_at=datetime.now(timezone.utc), reattached=not fresh,
                                                   message=message))
        except CancelledError:
            why = activity.cancellation_details()
            if why is not None and why.cancel_requested and not activity.is_worker_shutdown():
                with activity.shield_thread_cancel_exception():  # the workflow asked: the builder goes
                    self._note(key, "cancelled: the builder was stopped")
                    self.log_store.finish(key)
            else:  # a heartbeat timeout, a lost server, a worker shutting down: the next attempt re-attaches
                remove = False
                log.info("shard attempt ended without a cancel request; builder left for the next attempt",
                         builder=name, why=_cancel_reason(why))
            raise
        except ApplicationError:
            raise
        except BaseException:
            remove = False  # a retry re-attaches; the workflow removes the builder if retries run out
            raise
        finally:
            if _log_writers.superseded(key, attempt):
                remove = False  # a newer attempt has the builder now
            if remove:
                with activity.shield_thread_cancel_exception():
                    builder.remove(name, progress=activity.heartbeat)

    def _have_sha(self, inp: ShardInput) -> None:
        """A builder that clones this host's mirror needs the sha there (the checkout may have run on another host);
        once seen, a sha stays in the mirror (remembered here: no git process on each phase's way)."""
        url = normalize_url(inp.link.url)
        if not (is_remote(url) or (inp.tenant.builder == "docker" and inp.tenant.docker.mount_mirror)):
            return
        key = f"{url}@{inp.sha}"
        with self._shas_lock:
            if key in self._shas:
                return
        self.mirror.resolve(inp.link.url, sha=inp.sha, token=self._token(inp.link))
        with self._shas_lock:
            self._shas[key] = None
            while len(self._shas) > 1000:
                self._shas.popitem(last=False)

    def _finished(self, key: str, result: ShardResult) -> ShardResult:
        """Record the shard's result with its complete log before the builder goes: an attempt whose completion
        never reached the server is followed by one that finds it here instead of running ci.sh again. A failed
        shard's result carries its last log lines (its run's page and the CLI show them)."""
        if result.exit_code != 0:
            result.log_tail = tail(self.log_store, key)  # masked already, as all the store holds
        self.log_store.finish(key, result.model_dump_json())
        return result

    def _pump(self, builder: Builder, name: str, key: str, pos: tuple[int, int], attempt: int, masker: Masker,
              final: bool) -> tuple[int, int]:
        """Copy the builder's log into the store, every secret masked; ``pos`` is (bytes of the builder's log taken,
        bytes of the store written). Bytes that may begin a secret still being written are held back (read again
        next time) until more follows or the builder has ended (``final``): a value split across reads is masked."""
        read, written = pos
        while True:
            if _log_writers.superseded(key, attempt):
                raise CancelledError("a newer attempt of this shard writes its log now")
            chunk = builder.read_log(name, read, LOG_CHUNK)
            if not chunk:
                return read, written
            last = len(chunk) < LOG_CHUNK  # all the builder has written so far
            cut = masker.safe_prefix(chunk, final and last)
            out = masker.mask_bytes(chunk[:cut])
            if out:
                self.log_store.write_at(key, written, out)
            read, written = read + cut, written + len(out)
            if last or cut == 0:  # all there is (final: all of it, masked; else the held-back tail waits for more)
                return read, written
            # a full chunk: more follows, read on (a held-back tail is read again with what follows it)

    def _note(self, key: str, text: str) -> None:
        line = f"[katkit] {text}\n".encode()
        self.log_store.write_at(key, self.log_store.size(key), line)

    @activity.defn(name="remove_builder")
    @translate_errors
    def remove_builder(self, inp: RemoveBuilderInput) -> None:
        self.preparer.settle(inp.builder, timeout=60.0, discard=True)  # one still being prepared: removed by it too
        self._builders(inp.tenant).remove(inp.builder)
