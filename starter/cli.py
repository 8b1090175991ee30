"""``katkit``: the command line, a thin layer over :class:`starter.api.Katkit`. The commands on runs and promotions
are in ``starter.cli_runs``, those on tenant services and repositories in ``starter.cli_services``, what they share in
``starter.cli_common``, shell completion in ``starter.complete``.

Exit codes: 0 success, 1 the run failed or was rejected, 2 bad input. Errors are one line
(``--debug`` for the traceback).
"""

from __future__ import annotations

import asyncio
import sys

import click

from katkit.config import load_settings
from katkit.errors import KatkitError
from katkit.log import configure_logging
from starter import cli_audit, cli_freezes, cli_retry, cli_runs, cli_services
from starter.cli_common import CliState, connect as _katkit, err, out, run_async as _async


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="KATKIT_CONFIG", type=click.Path(dir_okay=False),
              help="katkit.yaml to use (default: ./katkit.yaml, then ~/.katkit/katkit.yaml).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """katkit: build, test and deploy a chosen commit into tenants, as durable Temporal workflows."""
    state = ctx.ensure_object(CliState)
    state.config_path, state.debug = config_path, debug
    configure_logging("DEBUG" if debug else "WARNING")


for _command in (*cli_runs.COMMANDS, *cli_services.COMMANDS, *cli_audit.COMMANDS, *cli_freezes.COMMANDS,
                 *cli_retry.COMMANDS):  # runs and promotions; tenant services and repos
    cli.add_command(_command)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8090, show_default=True, type=int)
@_async
async def webhook(host: str, port: int) -> None:
    """Serve GitHub webhooks: signed pushes and PRs start runs in the tenants that opted in."""
    from katkit.errors import ConfigError
    from starter.webhook import run_webhook

    secret = load_settings().github_webhook_secret
    if not secret:
        raise ConfigError("KATKIT_GITHUB_WEBHOOK_SECRET is not set; set it to the secret of the repository's webhook")
    kk = await _katkit()
    configure_logging("INFO")
    await run_webhook(kk, secret, host, port, ready=lambda addr: out.print(
        f"katkit webhook listening on http://{addr[0]}:{addr[1]}/ (GitHub: content type application/json, "
        "events: push and pull_request)"))


@cli.command()
def worker() -> None:
    """Run a worker on the katkit task queue (any number may run)."""
    from worker import run_worker

    configure_logging("INFO")
    asyncio.run(run_worker(load_settings()))


@cli.command()
@click.option("--stop", is_flag=True, help="Stop the dev server and the worker this katkit home left running.")
@click.option("--join", is_flag=True, help="Add a worker to a Temporal server another katkit home started.")
def dev(stop: bool, join: bool) -> None:
    """Run the Temporal dev server (web UI on :8233, state on disk) and a worker, until Ctrl-C."""
    from starter.dev import run_dev, stop_dev

    if stop:
        out.print(stop_dev())
        return
    run_dev(out, join=join)


@cli.command()
def demo() -> None:
    """The main job end to end: a sample repo through DEV and PROD (approved as user 'demo'), on the embedded default."""
    from starter.demo import run_demo

    asyncio.run(run_demo(out))


def main(argv: list[str] | None = None) -> None:
    """``katkit``. Given ``argv`` (in-process callers, tests) it ends in SystemExit; as the process's entry point
    (no ``argv``) it ends the process itself, with the exit code its command decided."""
    if argv is not None:
        _main(argv)
        return
    import logging
    import os
    import traceback

    try:
        _main(None)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - only --debug lets one through: its traceback, as Python prints it
        traceback.print_exc()
        code = 1
    # Temporal's Rust core runs a Tokio runtime the SDK never shuts down (sdk-python#300): a thread of it delivering an
    # RPC result re-enters Python while the interpreter finalizes and aborts the process after the command is done.
    # So the process leaves here, output flushed, and is never finalized: its exit code is the one decided above.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python would exit 120
            code = code or 120
    os._exit(code)


def _main(argv: list[str] | None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        cli.main(args=argv, prog_name="katkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("katkit: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        err.print(f"katkit: error: {exc.format_message()}", markup=False)
        sys.exit(2)
    except KatkitError as exc:
        if debug:
            raise
        err.print(f"katkit: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback with --debug
        if debug:
            raise
        err.print(f"katkit: unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(run with --debug for the traceback)", markup=False)
        sys.exit(1)

