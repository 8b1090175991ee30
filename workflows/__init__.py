"""Workflows: orchestration only, deterministic, no I/O."""

from workflows.commit_run import CommitRun

__all__ = ["CommitRun"]
