"""Heavy SDKs (PyGithub, boto3, docker-py) imported once, on one thread, before activity threads run.

Backends import them lazily, so a process that never uses them does not pay for them. A worker, though,
runs activities on many threads at once, and two threads importing one package with circular imports
inside it can see it half-initialised (``partially initialized module 'github' has no attribute ...``).
The worker and the webhook server call :func:`import_sdks` before they take any work.
"""

from __future__ import annotations

import importlib

SDK_MODULES = (
    "github", "boto3", "botocore.exceptions", "docker",
    "katkit.gh", "katkit.aws", "katkit.builders.docker", "katkit.builders.ecs", "katkit.platforms.docker",
    "katkit.platforms.ecs",
)


def import_sdks() -> None:
    for name in SDK_MODULES:
        importlib.import_module(name)
