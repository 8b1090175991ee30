"""Opt-in: the same ECS/S3 flow against a real AWS account. Off unless KATKIT_AWS_E2E=1.

Needs boto3's standard credentials and, in the environment: KATKIT_E2E_CLUSTER (an ECS cluster),
KATKIT_E2E_SUBNETS and KATKIT_E2E_SECURITY_GROUPS (comma separated, for awsvpc), a registered builder task
definition ``katkit-builder`` (see deploy/aws/README.md) whose image is reachable from the subnets, and
KATKIT_E2E_BUCKET for the S3 log store. It runs a one-phase pipeline whose ci.sh prints and exits 0,
then checks the log arrived in S3. Nothing here runs in CI, which has no AWS account.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from katkit.config import parse_config
from katkit.logstore import S3LogStore
from katkit.sample import commit_files
from starter.api import Katkit
from tests.conftest import in_process_worker

pytestmark = pytest.mark.skipif(os.environ.get("KATKIT_AWS_E2E") != "1",
                                reason="opt-in: set KATKIT_AWS_E2E=1 with real AWS credentials")


async def test_a_phase_runs_on_ecs_and_its_log_lands_in_s3(client, settings, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = commit_files(repo, {"ci.sh": "echo hello from ECS\n"})
    url = os.environ["KATKIT_E2E_REPO_URL"] if "KATKIT_E2E_REPO_URL" in os.environ else str(repo)
    cfg = parse_config(f"""
tenants:
  - name: e2e
    env: DEV
    builder: ecs
    ecs: {{cluster: {os.environ['KATKIT_E2E_CLUSTER']}, builders_cluster: {os.environ['KATKIT_E2E_CLUSTER']},
           subnets: [{os.environ['KATKIT_E2E_SUBNETS']}], security_groups: [{os.environ['KATKIT_E2E_SECURITY_GROUPS']}]}}
links:
  - {{repo: e2e, url: {url}, tenants: [e2e]}}
""")
    store = f"s3://{os.environ['KATKIT_E2E_BUCKET']}/katkit-e2e-{uuid.uuid4().hex[:8]}"
    s3_settings = settings.model_copy(update={"log_store": store})
    async with in_process_worker(client, s3_settings, threads=4):
        kk = Katkit(client, s3_settings, cfg)
        st = await kk.wait((await kk.start_run("e2e", "e2e", sha=sha, by="e2e")).run_id)
    assert st.status == "succeeded"
    assert b"hello from ECS" in S3LogStore(store).read(st.phases[0].shards[0].log_key)
