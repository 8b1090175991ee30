"""Workflows: orchestration only, deterministic, no I/O."""

from workflows.commit_run import CommitRun
from workflows.deploy_lock import DeployLock
from workflows.freezes import TenantFreezes
from workflows.promotion import Promotion

__all__ = ["CommitRun", "DeployLock", "Promotion", "TenantFreezes"]
