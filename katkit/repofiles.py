"""The DuploCloud Katkit files in the user's repository: ``katkitconfig.js`` and ``servicedescription.js``.

Both are JSON despite the ``.js`` name. Every problem raises :class:`RepoFileError` naming the file, the
field and the fix.
"""

from __future__ import annotations

import json
import re
from typing import Any

from katkit.errors import RepoFileError
from katkit.models import Phase, PhaseType, ServiceDescription
from katkit.names import NAME_RULE, is_safe_name
from katkit.payload import show, unfit

KATKITCONFIG = "katkitconfig.js"
SERVICEDESCRIPTION = "servicedescription/servicedescription.js"
CI_SH = "ci.sh"

PHASE_TYPES: dict[float, PhaseType] = {4: PhaseType.EXECUTION, 1: PhaseType.DEPLOYMENT}  # a PhaseType of 4.0 finds 4
MAX_PARALLELISM = 256
"""Shards of one phase: each is a builder and an activity at once; more would swamp a host and a workflow's history."""
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


MAX_JSON_DEPTH = 64
"""Arrays/objects in arrays/objects; deeper data would not survive the trip through Temporal's JSON payloads."""


def _load_json(text: str, file: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RepoFileError(
            file, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", "fix the syntax (it must be plain JSON)"
        ) from None
    except RecursionError:  # nested beyond Python's recursion limit
        raise _too_deep(file) from None
    except ValueError:  # a number beyond Python's int digits limit (sys.get_int_max_str_digits)
        raise RepoFileError(file, "a number has too many digits", "write numbers of at most a few digits") from None
    problem = unfit(data, MAX_JSON_DEPTH)
    if problem is not None:
        raise RepoFileError(file, *problem)
    return data


def _too_deep(file: str) -> RepoFileError:
    return RepoFileError(file, f"nested too deeply (more than {MAX_JSON_DEPTH} levels)", "flatten the arrays and objects")


def parse_build_params(value: Any, file: str, phase: str) -> dict[str, str]:
    """``"K=V, K=V"`` -> ``{"K": "V", ...}``; spaces around items are ignored and ``K=`` gives an empty value."""
    field = f"phase {phase!r} BuildParams"
    if value is None:
        return {}
    if not isinstance(value, str):
        raise RepoFileError(file, f"{field} is {type(value).__name__}, not a string", 'write it as "K=V, K=V"')
    params: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq:
            key = key if _ENV_KEY.fullmatch(key) else "KEY"  # the item itself may hold line breaks or quotes
            raise RepoFileError(file, f"{field} item {item!r} has no '='", f"write it as {key}=VALUE (or {key}= for empty)")
        if not _ENV_KEY.fullmatch(key):
            raise RepoFileError(file, f"{field} key {key!r} is not a valid variable name", "use letters, digits and _")
        if "\0" in val:  # no process environment can hold it: the builder would fail at every retry
            raise RepoFileError(file, f"{field} value of {key} holds a NUL character", "remove it")
        params[key] = val.strip()
    return params


def _as_int(value: Any, file: str, field: str) -> int:
    if isinstance(value, bool):
        raise RepoFileError(file, f"{field} is a boolean", "write a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        try:
            return int(value)
        except ValueError:  # more digits than Python's int digits limit
            pass
    raise RepoFileError(file, f"{field} is {show(value)}, not a whole number", "write a whole number")


def _as_bool(value: Any, file: str, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None:
        return False
    raise RepoFileError(file, f"{field} is {show(value)}", 'write "true" or "false"')


def _parse_phase(raw: Any, file: str, position: int) -> Phase:
    if not isinstance(raw, dict):
        raise RepoFileError(file, f"WorkFlow item {position} is not an object", 'write {"Name": ..., "PhaseType": 4, ...}')
    name = raw.get("Name")
    if not isinstance(name, str) or not is_safe_name(name):
        raise RepoFileError(file, f"WorkFlow item {position} has Name {name!r}", f"give every phase a Name of {NAME_RULE}")
    ptype = raw.get("PhaseType")
    if isinstance(ptype, bool) or not isinstance(ptype, (int, float)) or ptype not in PHASE_TYPES:  # lists: unhashable
        raise RepoFileError(
            file, f"phase {name!r} has PhaseType {show(ptype)}", "use 4 for an execution phase or 1 for the deployment phase"
        )
    parallelism = _as_int(raw.get("Parallelism", 1), file, f"phase {name!r} Parallelism")
    if parallelism < 1:
        raise RepoFileError(file, f"phase {name!r} has Parallelism {parallelism}", "use 1 or more")
    if parallelism > MAX_PARALLELISM:
        raise RepoFileError(file, f"phase {name!r} has Parallelism {parallelism}", f"use at most {MAX_PARALLELISM}")
    image = raw.get("ContinerImage") or raw.get("ContainerImage")
    if isinstance(image, str) and not image.strip():
        image = None
    if image is not None and not isinstance(image, str):
        raise RepoFileError(file, f"phase {name!r} has ContinerImage {show(image)}", "give an image name or null")
    return Phase(
        name=name,
        type=PHASE_TYPES[ptype],
        order=_as_int(raw.get("Order", 0), file, f"phase {name!r} Order"),
        parallelism=parallelism,
        build_params=parse_build_params(raw.get("BuildParams"), file, name),
        image=image,
    )


def parse_katkitconfig(text: str, env: str, file: str = KATKITCONFIG) -> tuple[str, bool, list[Phase]]:
    """Pick the entry for ``env`` (else ``default``) and return (EnvName chosen, LocalFleet, phases by Order)."""
    data = _load_json(text, file)
    if not isinstance(data, list):
        raise RepoFileError(file, "the top level is not a JSON array", 'write [{"EnvName": "default", "WorkFlow": [...]}]')
    by_env: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("EnvName"), str):
            raise RepoFileError(file, f"entry {i} has no EnvName", 'give every entry "EnvName": "default" or an ENV name')
        if entry["EnvName"] in by_env:
            raise RepoFileError(file, f"EnvName {entry['EnvName']!r} appears twice", "keep one entry per EnvName")
        by_env[entry["EnvName"]] = entry
    chosen = env if env in by_env else "default"
    if chosen not in by_env:
        raise RepoFileError(  # json.dumps: the hint stays one line whatever env holds
            file, f"no entry for EnvName {env!r} and no 'default' entry", f'add {{"EnvName": {json.dumps(env)}, ...}} or a "default" entry'
        )
    entry = by_env[chosen]
    workflow = entry.get("WorkFlow")
    if not isinstance(workflow, list) or not workflow:
        raise RepoFileError(file, f"entry {chosen!r} has no WorkFlow list", "list its phases under WorkFlow")
    phases = [_parse_phase(raw, file, i) for i, raw in enumerate(workflow)]
    names = [p.name for p in phases]
    for n in names:
        if names.count(n) > 1:
            raise RepoFileError(file, f"phase name {n!r} appears twice in entry {chosen!r}", "give each phase a unique Name")
    deploys = [p.name for p in phases if p.type == PhaseType.DEPLOYMENT]
    if len(deploys) > 1:
        raise RepoFileError(
            file, f"entry {chosen!r} has {len(deploys)} deployment phases ({', '.join(deploys)})", "keep one phase with PhaseType 1"
        )
    local_fleet = _as_bool(entry.get("LocalFleet", False), file, f"entry {chosen!r} LocalFleet")
    return chosen, local_fleet, sorted(phases, key=lambda p: p.order)


def parse_servicedescription(text: str, file: str = SERVICEDESCRIPTION) -> ServiceDescription:
    data = _load_json(text, file)
    if not isinstance(data, dict):
        raise RepoFileError(file, "the top level is not a JSON object", 'write {"Name": ..., "DockerImage": "app:<hubtag>"}')
    name = data.get("Name")
    if not isinstance(name, str) or not name.strip():
        raise RepoFileError(file, "Name is missing or empty", "set Name to the service's name")
    if not is_safe_name(name):
        raise RepoFileError(file, f"Name {name!r} is not a valid service name", f"use {NAME_RULE}")
    image = data.get("DockerImage")
    if not isinstance(image, str) or not image.strip():
        raise RepoFileError(file, "DockerImage is missing or empty", 'set DockerImage, e.g. "myapp:<hubtag>"')
    if "<hubtag>" not in image:
        repo = image.split("@")[0]  # without a tag or digest; a registry's :port stays
        repo = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
        raise RepoFileError(  # json.dumps: the hint stays one line whatever the image holds
            file, f"DockerImage {image!r} has no <hubtag>", f"write the tag as <hubtag>, e.g. {json.dumps(repo + ':<hubtag>')}"
        )
    return ServiceDescription(name=name, docker_image=image, fields=data)
