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

KATKITCONFIG = "katkitconfig.js"
SERVICEDESCRIPTION = "servicedescription/servicedescription.js"
CI_SH = "ci.sh"

PHASE_TYPES = {4: PhaseType.EXECUTION, 1: PhaseType.DEPLOYMENT}
MAX_PARALLELISM = 256
"""Shards of one phase: each is a builder and an activity at once; more would swamp a host and a workflow's history."""
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _load_json(text: str, file: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RepoFileError(
            file, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", "fix the syntax (it must be plain JSON)"
        ) from None


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
            raise RepoFileError(file, f"{field} item {item!r} has no '='", f"write it as {item}=VALUE (or {item}= for empty)")
        if not _ENV_KEY.match(key):
            raise RepoFileError(file, f"{field} key {key!r} is not a valid variable name", "use letters, digits and _")
        params[key] = val.strip()
    return params


def _as_int(value: Any, file: str, field: str) -> int:
    if isinstance(value, bool):
        raise RepoFileError(file, f"{field} is a boolean", "write a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise RepoFileError(file, f"{field} is {value!r}, not a whole number", "write a whole number")


def _as_bool(value: Any, file: str, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None:
        return False
    raise RepoFileError(file, f"{field} is {value!r}", 'write "true" or "false"')


def _parse_phase(raw: Any, file: str, position: int) -> Phase:
    if not isinstance(raw, dict):
        raise RepoFileError(file, f"WorkFlow item {position} is not an object", 'write {"Name": ..., "PhaseType": 4, ...}')
    name = raw.get("Name")
    if not is_safe_name(name):
        raise RepoFileError(file, f"WorkFlow item {position} has Name {name!r}", f"give every phase a Name of {NAME_RULE}")
    ptype = raw.get("PhaseType")
    if isinstance(ptype, bool) or ptype not in PHASE_TYPES:
        raise RepoFileError(
            file, f"phase {name!r} has PhaseType {ptype!r}", "use 4 for an execution phase or 1 for the deployment phase"
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
        raise RepoFileError(file, f"phase {name!r} has ContinerImage {image!r}", "give an image name or null")
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
        raise RepoFileError(
            file, f"no entry for EnvName {env!r} and no 'default' entry", f'add {{"EnvName": "{env}", ...}} or a "default" entry'
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
        raise RepoFileError(
            file, f"DockerImage {image!r} has no <hubtag>", f"write the tag as <hubtag>, e.g. \"{image.split(':')[0]}:<hubtag>\""
        )
    return ServiceDescription(name=name, docker_image=image, fields=data)
