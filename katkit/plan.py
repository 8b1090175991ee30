"""Read and validate everything a run needs from the repository at one sha, before any builder starts.

``check_run`` is the one validation of a run. The checkout activity calls it (authoritative: it runs where the
builders are) and so does the starter before it starts a run, so that a bad file is one line and exit code 2
with nothing started (a run started first and failed by its checkout would leave a failed run behind).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from typing import TYPE_CHECKING

from katkit.config import LinkConfig, TenantConfig
from katkit.errors import ConfigError, InfraError, RepoFileError
from katkit.gitrepo import RepoMirror
from katkit.models import Phase, PhaseType, RunPlan
from katkit.repofiles import CI_SH, KATKITCONFIG, SERVICEDESCRIPTION, parse_katkitconfig, parse_servicedescription

if TYPE_CHECKING:
    from katkit.builders import Builder

DEFAULT_PHASE = Phase(name="ci", type=PhaseType.EXECUTION, order=1)
"""The one phase of a repository without katkitconfig.js: run ci.sh once."""


def read_plan(mirror: RepoMirror, link: LinkConfig, env: str, sha: str, token: str | None = None) -> RunPlan:
    full = mirror.resolve(link.url, sha=sha, token=token)
    link_in_folder = mirror.symlink_in(link.url, full, link.folder)
    if link_in_folder is not None:
        raise ConfigError(f"{link.folder_key}: {link_in_folder!r} is a symlink at {full[:12]} (it may lead out of the "
                          "repository); point folder at a real directory of the repository")

    def path(name: str) -> str:
        return posixpath.join(link.folder, name) if link.folder else name

    def read(name: str) -> str | None:
        return mirror.read(link.url, full, path(name), token)

    config_text = read(KATKITCONFIG)
    if config_text is None:
        entry, local_fleet, phases = "(no katkitconfig.js)", False, [DEFAULT_PHASE]
    else:
        entry, local_fleet, phases = parse_katkitconfig(config_text, env, path(KATKITCONFIG))
    if any(p.type == PhaseType.EXECUTION for p in phases) and read(CI_SH) is None:
        raise RepoFileError(path(CI_SH), f"missing at {full[:12]}", "add ci.sh to the repository (it is what every execution phase runs)")
    service = None
    if any(p.type == PhaseType.DEPLOYMENT for p in phases):
        text = read(SERVICEDESCRIPTION)
        if text is None:
            raise RepoFileError(
                path(SERVICEDESCRIPTION), f"missing at {full[:12]} but entry {entry!r} has a deployment phase",
                "add the service description or remove the PhaseType 1 phase",
            )
        service = parse_servicedescription(text, path(SERVICEDESCRIPTION))
    return RunPlan(sha=full, env_entry=entry, local_fleet=local_fleet, phases=phases, service=service)


def check_run(mirror: RepoMirror, link: LinkConfig, tenant: TenantConfig, sha: str, token: str | None,
              builder: Callable[[], Builder], *, engine_may_be_away: bool = False) -> RunPlan:
    """The run's plan once everything it needs is known good: the repository's files at ``sha`` for the tenant's
    ENV, and every execution phase's builder image (a missing one fails here, before any builder starts).

    ``engine_may_be_away``: the starter's machine may not reach the tenant's engine (an ECS cluster, a remote
    Docker); then the images are left to the checkout activity, which checks them where the builders run."""
    plan = read_plan(mirror, link, tenant.env, sha, token)
    images = sorted({p.image or "" for p in plan.phases if p.type == PhaseType.EXECUTION})
    if not images:  # a deploy-only repository needs no builder
        return plan
    checker = builder()
    try:
        for image in images:
            checker.check_image(image or None)
    except InfraError:
        if not engine_may_be_away:
            raise
    return plan
