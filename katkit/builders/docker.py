"""The ``docker`` builder: one container per phase shard on a Docker engine, running the agent.

The container's name derives from run, execution, phase and shard, so a retried activity finds the
container it started and re-attaches instead of starting a second one. Containers are never started
with auto-remove: the log is read to its end first, then the container is removed. The log is followed
by a thread per builder into a bounded queue, so the worker's memory stays flat however long the log is.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import secrets
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from katkit.agent import DONE, GO_LINE, NOT_STARTED, READY_LINE, SCRIPT_EXITED
from katkit.builders import PREPARED_LABEL, BuilderSpec, BuilderState, cache_volume
from katkit.config import DockerConfig, TenantConfig
from katkit.errors import BadInput, InfraError, KatkitError

MIRROR_IN_BUILDER = "/katkit/mirror"
WORKSPACE_IN_BUILDER = "/workspace/src"
BUILDER_LABEL = "katkit.builder"
CACHE_IN_BUILDER = "/katkit/cache"
CACHE_LABEL = "katkit.cache"
QUEUE_CHUNKS = 64
AGENT_WAITS_LABEL = "katkit.agent-waits"
AGENT_HOSTS_LABEL = "katkit.agent-hosts"  # its agent names localhost in /etc/hosts when asked ("hosts")
ENDING = f"[katkit-agent] {SCRIPT_EXITED}".encode()  # the agent's line after ci.sh ("ci.sh exited 0 in 1.2 s")
ENDING_POLL_S = 0.005
REREAD_LIMIT = 4 << 20
KEEP = 1 << 16  # bytes a log follower keeps of what it handed out (``_LogFollower.rewind``)
NEW_READER_WAIT_S = 0.2  # an exited builder's log up to this long is read to its end at once (``_read_to_the_end``)
_SPECIAL_NETWORKS = ("none", "host", "bridge")
NO_IPV6 = {f"net.ipv6.conf.{nic}.disable_ipv6": "1" for nic in ("all", "default", "lo")}
_RUNNING = ("created", "running", "restarting", "paused")

E = TypeVar("E", bound="EngineUser")
P = ParamSpec("P")
R = TypeVar("R")


def engine_errors(fn: Callable[Concatenate[E, P], R]) -> Callable[Concatenate[E, P], R]:
    """docker-py / requests errors -> InfraError (retried); a missing image stays BadInput."""

    @functools.wraps(fn)
    def wrapper(self: E, /, *args: P.args, **kwargs: P.kwargs) -> R:
        import docker.errors
        import requests.exceptions

        try:
            return fn(self, *args, **kwargs)
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            if isinstance(exc, docker.errors.ImageNotFound):
                raise
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise InfraError(f"Docker engine at {self._base_url()} failed: {first} (is dockerd running?)") from exc

    return wrapper


class _LogFollower:
    """Follows one container's log in a thread; hands out bytes in order, at most QUEUE_CHUNKS ahead."""

    def __init__(self, api: Any, container: str, position: int, follow: bool = True, seal: str | None = None) -> None:
        self.position = position
        self.follows = follow
        self.ending = 0  # >0: the agent's line after ci.sh has come (the container exits soon); exit polls since
        self.kept = b""  # the last bytes handed out: a reader that held some back reads them again (``rewind``)
        # the agent's last line, "[katkit-agent] done SEAL CODE", when this worker told it to start with SEAL: the
        # shard's end, its exit code, read without waiting for the container to stop; never handed out
        self._seal = f"[katkit-agent] {DONE} {seal} ".encode() if seal else None
        self.sealed: int | None = None
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._leftover = b""
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: Exception | None = None
        self._stream = api.logs(container, stream=True, follow=follow, stdout=True, stderr=True)
        raw = getattr(getattr(self._stream, "_response", None), "raw", None)
        if raw is not None:  # its connection never goes back to the pool: this stream may be hung up on at any time
            raw._pool = None  # (``hang_up``), even as it ends
        self._thread = threading.Thread(target=self._run, args=(position,), daemon=True, name=f"logs-{container}")
        self._thread.start()

    def _run(self, skip: int) -> None:
        held = b""  # the end of the last chunk that may begin the agent's sealed last line
        try:
            for chunk in self._stream:
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                if self._seal is not None:
                    chunk, held, last = self._unseal(held + chunk)
                    if last:
                        self._hand(chunk)
                        break
                self._hand(chunk)
            else:
                self._hand(held)  # it was no sealed line after all
        except Exception as exc:  # noqa: BLE001 - reported by read(); a closed stream ends here too
            self.error = exc
        finally:
            self.close()  # its own connection, closed now (it never goes back to the pool)
            self.done.set()
            self.ready.set()

    def _hand(self, chunk: bytes) -> None:
        if not chunk:
            return
        if ENDING in chunk:
            self.ending = max(self.ending, 1)
        self._queue.put(chunk)
        self.ready.set()

    def _unseal(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """(what to hand out, what to hold back, whether the sealed last line has come: ``sealed`` is its code)."""
        assert self._seal is not None
        at = data.find(self._seal)
        if at >= 0:
            end = data.find(b"\n", at)
            if end < 0:
                return data[:at], data[at:], False
            try:
                self.sealed = int(data[at + len(self._seal):end])
            except ValueError:  # not the agent's (it writes a number): handed out as it is
                rest, held, last = self._unseal(data[end + 1:])
                return data[:end + 1] + rest, held, last
            return data[:at], b"", True
        for k in range(min(len(self._seal) - 1, len(data)), 0, -1):
            if data.endswith(self._seal[:k]):
                return data[:-k], data[-k:], False
        return data, b"", False

    def read(self, limit: int) -> bytes:
        parts, size = [self._leftover], len(self._leftover)
        while size < limit:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                break
            parts.append(chunk)
            size += len(chunk)
        data = b"".join(parts)
        data, self._leftover = data[:limit], data[limit:]
        self.position += len(data)
        if data:
            self.kept = (self.kept + data)[-KEEP:]
        return data

    def rewind(self, offset: int) -> bool:
        """Hand out again from ``offset``, at most ``KEEP`` bytes back (a reader holds back the end of each read that
        could begin a secret, and asks for it again); False when that is not at hand."""
        back = self.position - offset
        if back < 0 or back > len(self.kept):
            return False
        if back:
            self._leftover = self.kept[len(self.kept) - back:] + self._leftover
            self.kept = self.kept[:len(self.kept) - back]
            self.position = offset
        return True

    @property
    def drained(self) -> bool:
        return self.done.is_set() and self._queue.empty() and not self._leftover

    @property
    def caught_up(self) -> bool:
        """All it has received is handed out (it waits on the engine for more)."""
        return self._queue.empty() and not self._leftover

    def close(self) -> None:
        hang_up(getattr(self._stream, "_response", None))


def hang_up(response: Any) -> None:
    """End a streamed (or hijacked) response of the engine for good: its socket shut, so a thread blocked reading it
    wakes, and its connection closed. Not docker-py's own ``close``: it closes the socket but leaves it on the
    connection, which urllib3 puts back in the pool when the woken reader sees the end; the next request taking it
    fails with 'file descriptor cannot be a negative integer'. A response whose connection went back to the pool
    (read to its end) is left alone: that connection may serve another request now."""
    import socket

    conn = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(conn, "sock", None)
    if conn is None or sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()  # its socket closed and dropped: put back in the pool, it connects anew
    except Exception:  # noqa: BLE001 - closing what the engine closed already
        pass


class _ExitWatch:
    """Waits on the engine for one container to stop (``docker wait``) in a thread, so a running builder's state needs
    no polling. ``exited`` is set once it stopped, was removed, or the wait failed: then its state is inspected."""

    def __init__(self, api: Any, container: str, wake: Callable[[], None]) -> None:
        self.exited = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api, container, wake), daemon=True,
                                        name=f"exit-{container}")
        self._thread.start()

    def _run(self, api: Any, container: str, wake: Callable[[], None]) -> None:
        try:
            api.wait(container, timeout=None)  # no read timeout: as long as the builder runs
        except Exception:  # noqa: BLE001 - removed, the engine gone: the state is inspected, as always
            pass
        finally:
            self.exited.set()
            wake()


class EngineUser:
    """Something that talks to the Docker engine: its API (one shared client per process), and where it is."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def api(self) -> Any:
        if self._client is None:
            self._client = shared_client()
        return self._client.api

    def _base_url(self) -> str:
        return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


class DockerBuilder(EngineUser):
    def __init__(self, config: DockerConfig, tenant: str, client: Any = None) -> None:
        super().__init__(client)
        self.config = config
        self.tenant = tenant
        self._followers: dict[str, _LogFollower] = {}
        self._watches: dict[str, _ExitWatch] = {}
        self._seals: dict[str, str] = {}  # builder -> the seal this worker told it to start with (its last line's)
        self._lock = threading.Lock()

    @classmethod
    def for_tenant(cls, tenant: TenantConfig | None, home: object) -> DockerBuilder:
        return cls(tenant.docker if tenant else DockerConfig(), tenant.name if tenant else "")

    @classmethod
    def on_this_host(cls, home: object) -> list[DockerBuilder]:
        """The engine's builders, when an engine answers here."""
        try:
            builder = cls(DockerConfig(), "")
            builder.list()
        except (ImportError, KatkitError):
            return []
        return [builder]

    # -- the engine ------------------------------------------------------------------------------------

    @engine_errors
    def check_image(self, image: str | None) -> None:
        import docker.errors

        name = image or self.config.image
        try:
            self.api.inspect_image(name)
        except docker.errors.ImageNotFound:
            hint = "run deploy/builder/build.sh" if image is None else "build or load it on the engine, or fix the phase's ContinerImage"
            raise BadInput(f"builder image {name!r} is not on the Docker engine at {self._base_url()}; {hint}") from None

    def _cache_volume(self, scope: str) -> str:
        """The cache's named volume (created, labelled, when first needed; ``v=True`` on remove keeps named volumes)."""
        name = cache_volume(scope)
        tenant, repo, branch = scope.split("/", 2)
        self.api.create_volume(name, labels={CACHE_LABEL: "1", "katkit.tenant": tenant, "katkit.repo": repo,
                                             "katkit.branch": branch})
        return name

    def _network(self, local_fleet: bool) -> str:
        name = self.config.network_of(self.tenant) if local_fleet else self.config.builder_network
        if name not in _SPECIAL_NETWORKS and not self.api.networks(names=[name]):
            self.api.create_network(name, driver="bridge", labels={"katkit.network": "1"}, check_duplicate=True)
        return name

    # -- the protocol ------------------------------------------------------------------------------------
    @engine_errors
    def prepare(self, spec: BuilderSpec) -> None:
        """The container created (labelled ``katkit.prepared``) and started: its agent checks out the sha, then waits
        on its stdin to be told to start. Its env holds no secret: ``start`` sends ci.sh's environment on stdin."""
        import docker.errors

        try:
            self.api.inspect_container(spec.name)
            return
        except docker.errors.NotFound:
            pass
        image = self.api.inspect_image(spec.image or self.config.image).get("Config") or {}
        # does the image's agent wait to be told to start? (an image built before it, or another image, is prepared
        # the old way: created, started with its secrets when its phase starts)
        waits = (image.get("Labels") or {}).get(AGENT_WAITS_LABEL) == "1"
        created = self._create(spec, prepared=True, waits=waits, image=image)
        if created is not None and waits:
            self.api.start(created)

    @staticmethod
    def _network_disabled(network: str, image: dict[str, Any]) -> bool:
        """Whether a builder on Docker's network ``none`` also has the engine's networking disabled: the same
        isolation (a network namespace of its own with only loopback, IPv6 off), made by runc alone, without the
        engine's network sandbox and the processes it starts for it (``libnetwork-setkey``, ``set-ipv6``), which cost
        half of a no-op container's start and removal. Its /etc/hosts is then empty, so its agent names localhost
        there as ``none`` would: only for an image whose agent does (label ``katkit.agent-hosts``) and runs as root.
        ``image``: the image's config."""
        user = str(image.get("User") or "").partition(":")[0]
        return (network == "none" and (image.get("Labels") or {}).get(AGENT_HOSTS_LABEL) == "1"
                and user in ("", "root", "0"))

    @engine_errors
    def start(self, spec: BuilderSpec) -> bool:
        import docker.errors

        for _ in range(3):  # a prepare that came late may create it between our looks: then look again
            try:
                info = self.api.inspect_container(spec.name)
                prepared = (info["Config"].get("Labels") or {}).get(PREPARED_LABEL) == "1"
                if prepared and info["Config"].get("OpenStdin"):  # its agent waits to be told on stdin
                    told = self._tell_to_start(info, spec)
                    if told is not None:
                        return told
                    self.api.remove_container(info["Id"], force=True, v=True)  # ci.sh never ran there: made anew
                elif info["State"]["Status"] != "created":
                    return False
                elif not prepared:
                    self.api.start(info["Id"])  # created, then the worker died before starting it
                    return False
                else:  # prepared, not started: its image's agent cannot wait (or a worker from before they could)
                    have = set(info["Config"].get("Env") or [])
                    if all(f"{k}={v}" in have for k, v in spec.env.items()):
                        self.api.start(info["Id"])
                        return True
                    self.api.remove_container(info["Id"], force=True, v=True)  # Docker cannot add env to a container
            except docker.errors.NotFound:
                pass
            created = self._create(spec, prepared=False)
            if created is not None:
                self.api.start(created)
                return True
        return False  # another attempt made it each time: it owns the start

    def _tell_to_start(self, info: dict[str, Any], spec: BuilderSpec) -> bool | None:
        """Start ci.sh in a prepared container: ci.sh's environment, one line on its stdin. True when this call told
        it; False when it was told already (re-attach); None when it never will be (not started, or it ended
        without being told: timed out, killed, the engine restarted): then it is made anew."""
        status = info["State"]["Status"]
        if status == "created":
            return None  # a prepare that ended between create and start
        if status not in _RUNNING:  # ended: told (re-attach), or not, and ci.sh never ran there (made anew)
            told = self._was_told(info["Id"])
            if told is None:  # the log cannot say: only the agent's own exit code for "never told" makes it anew
                told = int(info["State"].get("ExitCode", -1)) != NOT_STARTED
            return False if told else None
        if not spec.first_try and self._was_told(info["Id"]) is not False:
            return False  # told by an earlier attempt (or the log cannot say: never risk a second ci.sh)
        seal = secrets.token_hex(8)  # the agent ends its log with it; ci.sh never sees it (``_LogFollower``)
        with self._lock:
            self._seals[spec.name] = seal
            unsealed = self._followers.pop(spec.name, None)  # a reader from before: the next one looks for the seal
        if unsealed is not None:
            unsealed.close()
        sock = self.api.attach_socket(info["Id"], params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        try:
            raw.sendall(json.dumps({"env": spec.env, "seal": seal}).encode() + b"\n")
        except OSError as exc:
            raise InfraError(f"could not tell builder {spec.name} to start: {exc}") from exc
        finally:
            hang_up(getattr(sock, "_response", None))  # the hijacked connection: closed now, never pooled
            raw.close()
            sock.close()
        return True

    def _was_told(self, container: str) -> bool | None:
        """Whether the agent said it was told to start: the line after its 'ready' line, read from the log's start.
        None when the log does not show the 'ready' line (rotated away, or not served): it cannot tell."""
        seen = b""
        ready_line = f"[katkit-agent] {READY_LINE}\n".encode()
        stream = self.api.logs(container, stream=True, follow=False, stdout=True, stderr=True)
        try:
            for chunk in stream:
                seen += chunk
                ready = seen.find(ready_line)
                if ready >= 0 and b"\n" in seen[ready + len(ready_line):]:
                    break
                if len(seen) > 1 << 20:
                    break
        finally:
            hang_up(getattr(stream, "_response", None))
        ready = seen.find(ready_line)
        if ready < 0:
            return None
        return seen[ready + len(ready_line):].startswith(f"[katkit-agent] {GO_LINE}\n".encode())

    def _create(self, spec: BuilderSpec, prepared: bool, waits: bool = False,
                image: dict[str, Any] | None = None) -> str | None:
        """Create the builder's container (``image``: its image's config, if at hand); its id, or None when another
        attempt created it a moment ago."""
        import docker.errors

        self._forget(spec.name)  # a follower of a container of that name before this one reads another log
        image_name = spec.image or self.config.image  # checked by the run's checkout; create says so if it vanished
        binds: dict[str, dict[str, str]] = {}
        repo_url = spec.repo_url
        if self.config.mount_mirror and spec.mirror_path:
            binds[spec.mirror_path] = {"bind": MIRROR_IN_BUILDER, "mode": "ro"}
            repo_url = MIRROR_IN_BUILDER
        if self.config.docker_socket and spec.trusted:  # the engine sees every builder's env: never to a fork's code
            sock = self._base_url().removeprefix("unix://")
            binds[sock] = {"bind": "/var/run/docker.sock", "mode": "rw"}
        agent_spec: dict[str, Any] = {"repo_url": repo_url, "sha": spec.sha, "folder": spec.folder,
                                      "workspace": WORKSPACE_IN_BUILDER}
        if spec.cache_scope and spec.cache_paths:  # a named volume per tenant/repo/branch, kept when the builder goes
            binds[self._cache_volume(spec.cache_scope)] = {"bind": CACHE_IN_BUILDER, "mode": "rw"}
            agent_spec["cache"] = {"dir": CACHE_IN_BUILDER, "paths": spec.cache_paths, "save": spec.cache_save}
        network = self._network(spec.local_fleet)
        try:
            if image is None and network == "none":
                image = self.api.inspect_image(image_name).get("Config") or {}
            disabled = self._network_disabled(network, image or {})
            if disabled:
                agent_spec["hosts"] = True
            host_config = self.api.create_host_config(
                binds=binds, network_mode=network,  # 'none' kept: an engine that ignores NetworkDisabled isolates too
                mem_limit=self.config.memory, nano_cpus=int(self.config.cpus * 1e9) if self.config.cpus else None,
                sysctls=NO_IPV6 if disabled else None,  # as the engine's set-up for 'none' leaves it
            )
            labels = {**spec.labels, BUILDER_LABEL: "1", **({PREPARED_LABEL: "1"} if prepared else {})}
            if waits:  # the agent waits for one line on its stdin: ci.sh's environment (``_tell_to_start``)
                agent_spec["go"] = {"from": "stdin", "timeout": spec.ready_for_s}
            created = self.api.create_container(
                image_name, command=["--spec-json", json.dumps(agent_spec)], name=spec.name, stdin_open=waits,
                detach=True,  # stdin stays open after an attach leaves (docker-py sets StdinOnce otherwise)
                labels=labels, environment=spec.env, host_config=host_config, network_disabled=disabled,
            )
        except docker.errors.ImageNotFound:
            self.check_image(spec.image)  # raises the one-line BadInput
            raise
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another attempt created it a moment ago: re-attach
                return None
            raise
        return str(created["Id"])

    def _forget(self, name: str) -> None:
        """Drop what this worker keeps of builder ``name`` (its log follower, closed; its exit watch; its seal)."""
        with self._lock:
            follower = self._followers.pop(name, None)
            self._watches.pop(name, None)
            self._seals.pop(name, None)
        if follower is not None:
            follower.close()

    def _watch(self, name: str) -> _ExitWatch:
        with self._lock:
            watch = self._watches.get(name)
            if watch is None:
                watch = self._watches[name] = _ExitWatch(self.api, name, lambda: self._wake(name))
        return watch

    def _wake(self, name: str) -> None:
        follower = self._followers.get(name)
        if follower is not None:
            follower.ready.set()

    @engine_errors
    def state(self, name: str) -> BuilderState:
        import docker.errors

        follower = self._followers.get(name)
        if follower is not None and follower.sealed is not None and follower.sealed not in (137, 143):
            if follower.drained:  # its agent's sealed last line, all before it read: the container stops now
                st: dict[str, Any] = {}
                if follower.sealed:  # a failure: was a process of ci.sh's killed for memory? (the engine knows now)
                    try:
                        st = self.api.inspect_container(name)["State"]
                    except docker.errors.NotFound:
                        pass
                return self._ended(name, follower.sealed, st)
            return BuilderState(running=True)  # what came before that line is read first
        if not self._watch(name).exited.is_set():
            return BuilderState(running=True)  # the engine has not said it stopped: no need to ask
        try:
            st = self.api.inspect_container(name)["State"]
        except docker.errors.NotFound:
            return BuilderState(running=False, reason=f"the builder container {name} disappeared (removed from outside katkit?)")
        follower = self._followers.get(name)
        if st["Status"] in _RUNNING or follower is None or not follower.drained:
            if st["Status"] not in _RUNNING and follower is not None:
                self._read_to_the_end(name, follower)
            return BuilderState(running=True)  # an exited builder is done once its log has been read to the end
        return self._ended(name, int(st.get("ExitCode", -1)), st)

    def _ended(self, name: str, code: int, st: dict[str, Any]) -> BuilderState:
        """A builder that ended with ``code`` (``st``: its container's state, if it stopped; a SIGKILL or SIGTERM
        is always told from that: an out-of-memory kill, or a stop from outside katkit)."""
        if st.get("OOMKilled"):
            return BuilderState(running=False, exit_code=code if code else 137,
                                reason=f"the builder was killed for running out of memory (limit {self.config.memory or 'none'})")
        if code in (137, 143):
            sig = "SIGKILL" if code == 137 else "SIGTERM"
            return BuilderState(running=False, exit_code=code,
                                reason=f"the builder was stopped with {sig} from outside katkit (exit {code})")
        if code == 255:
            return BuilderState(running=False, exit_code=code, reason="the agent could not run ci.sh (see the log)")
        if code == NOT_STARTED and self._was_told(name) is False:
            return BuilderState(running=False, exit_code=code, reason="prepared in advance, never told to start")
        return BuilderState(running=False, exit_code=code, reason=f"ci.sh exited {code}")

    def _read_to_the_end(self, name: str, follower: _LogFollower) -> None:
        """The container has exited, so its log is whole: a follower that has handed out all it got reads the rest
        without following (the engine ends a follow tens of ms after the exit). Not for a long log: the engine
        serves another offset by reading the log again from its start."""
        failed = follower.done.is_set() and follower.error is not None  # e.g. the engine restarted mid-follow
        if failed or (follower.follows and not follower.done.is_set() and follower.caught_up
                      and follower.position < REREAD_LIMIT):
            with self._lock:
                if self._followers.get(name) is follower:
                    again = _LogFollower(self.api, name, follower.position, follow=False, seal=self._seals.get(name))
                    again.kept = follower.kept
                    self._followers[name] = again
                    follower.close()

    def _follower(self, name: str, offset: int) -> _LogFollower:
        with self._lock:
            follower = self._followers.get(name)
            if follower is not None and follower.rewind(offset):
                return follower
            if follower is not None:
                follower.close()
            follower = self._followers[name] = _LogFollower(self.api, name, offset, follow=follower is None or follower.follows,
                                                            seal=self._seals.get(name))
        follower.ready.wait(NEW_READER_WAIT_S)  # what the engine has already: a reader at the end reads all of it
        return follower

    @engine_errors
    def read_log(self, name: str, offset: int, limit: int) -> bytes:
        import docker.errors

        try:
            return self._follower(name, offset).read(limit)
        except docker.errors.NotFound:
            return b""

    def wait(self, name: str, timeout: float) -> None:
        follower = self._followers.get(name)
        watch = self._watches.get(name)
        watching = watch is not None and not watch.exited.is_set()  # it wakes the follower's waiters at the exit
        if follower is None:
            (watch.exited if watch is not None and watching else threading.Event()).wait(timeout)
            return
        # after ci.sh's end the exit is looked for every few ms, then less often (the agent may be saving a cache):
        # the engine ends a follow only tens of ms after the exit
        if follower.ending and not watching:
            timeout = min(timeout, ENDING_POLL_S * (1 << min(follower.ending - 1, 10)))
            follower.ending += 1
        follower.ready.wait(timeout)
        follower.ready.clear()
        if not follower.drained and not follower._queue.empty():
            follower.ready.set()

    @engine_errors
    def remove(self, name: str, progress: Callable[[], None] = lambda: None) -> None:
        import docker.errors

        self._forget(name)  # its exit watch ends with the container
        try:
            self.api.remove_container(name, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or "already in progress" not in str(exc):
                raise

    @engine_errors
    def list(self) -> dict[str, dict[str, str]]:
        found = {}
        for c in self.api.containers(all=True, filters={"label": BUILDER_LABEL}):
            found[c["Names"][0].lstrip("/")] = c.get("Labels") or {}
        return found


_client_lock = threading.Lock()
_client: Any = None


def shared_client() -> Any:
    """One docker-py client per process (its connection pool is thread-safe), from DOCKER_HOST and friends."""
    global _client
    with _client_lock:
        if _client is None:
            import docker

            try:
                _client = docker.from_env(version="auto", max_pool_size=64)
            except docker.errors.DockerException as exc:
                host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
                raise InfraError(f"Docker engine at {host} is not reachable ({str(exc)[:160]}); is dockerd running?") from exc
        return _client
