"""Shell completion of ``katkit`` (click's own; ``eval "$(_KATKIT_COMPLETE=bash_source katkit)"``, README): tenants
and repos from katkit.yaml, run and promotion ids from Temporal, run states. A completion never says anything: a
katkit.yaml that does not load, or a Temporal that does not answer within ``LOOKUP_S``, completes nothing."""

from __future__ import annotations

import asyncio

import click
from click.shell_completion import CompletionItem

from katkit.config import KatkitConfig, load_config, load_settings
from katkit.names import COMMIT_RUN, PROMOTION
from katkit.states import RUN_STATES
from katkit.temporal import connect

LOOKUP_S = 1.0
"""How long completing a run id may wait for Temporal."""
RECENT_RUNS = 50


def _config(ctx: click.Context) -> KatkitConfig | None:
    try:
        return load_config(ctx.find_root().params.get("config_path"))
    except Exception:  # noqa: BLE001 - completion stays quiet: no katkit.yaml, or a broken one, completes nothing
        return None


def _items(values: list[str], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(v) for v in dict.fromkeys(values) if v.startswith(incomplete)]


def tenants(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    config = _config(ctx)
    return _items([t.name for t in config.tenants] if config else [], incomplete)


def tenant_list(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--through d-app,b-app,p-`` completes the last tenant of the list."""
    config = _config(ctx)
    *done, last = incomplete.split(",")
    names = [t.name for t in config.tenants if t.name not in done] if config else []
    return [CompletionItem(",".join([*done, name])) for name in names if name.startswith(last)]


def repos(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Linked repositories; given ``--tenant``, those linked to it."""
    config = _config(ctx)
    tenant = ctx.params.get("tenant")
    links = [lk for lk in config.links if not tenant or tenant in lk.tenants] if config else []
    return _items([lk.repo for lk in links], incomplete)


def run_states(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(list(RUN_STATES), incomplete)


def runs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The ids of the newest runs and promotions."""
    try:
        return _items(asyncio.run(asyncio.wait_for(_recent_runs(), LOOKUP_S)), incomplete)
    except Exception:  # noqa: BLE001 - Temporal away, slow or refusing: complete nothing, say nothing
        return []


async def _recent_runs() -> list[str]:
    settings = load_settings()
    client = await connect(settings)
    query = f'WorkflowType IN ("{COMMIT_RUN}", "{PROMOTION}") AND TaskQueue = "{settings.task_queue}"'
    return [wf.id async for wf in client.list_workflows(query, limit=RECENT_RUNS)]
