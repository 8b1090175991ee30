"""Payloads recorded by older katkit versions (in histories, or in flight across an upgrade) still load, and the
states are the strings users and scripts see."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from katkit.config import parse_config
from katkit.models import DeployInput, RunStatus, ShardState
from katkit.platforms import RunningService
from katkit.platforms.local import LocalPlatform
from katkit.sample import SAMPLE_CONFIG_YAML
from katkit.states import DeployKind, State
from activities.deploy import DeployActivities

SHA = "a" * 40


def _old_deploy(image: str | None) -> dict[str, object]:
    """A DeployInput as katkit wrote it before ``kind``: the whole service description, an image only to roll back."""
    tenant = parse_config(SAMPLE_CONFIG_YAML.format(url="/tmp/x")).tenant("d-taskrunner")
    return {"run_id": "run-1", "execution": "e1", "tenant": tenant.model_dump(mode="json"), "sha": SHA,
            "repo": "taskrunner", "started_by": "bob", "approved_by": [], "image": image,
            "service": {"name": "taskrunner", "docker_image": "taskrunner:<hubtag>",
                        "fields": {"Name": "taskrunner", "DockerImage": "taskrunner:<hubtag>", "Replicas": 2}}}


def test_a_deploy_input_recorded_before_kind_deploys_the_shas_image() -> None:
    inp = DeployInput.model_validate_json(json.dumps(_old_deploy(None)))
    assert (inp.kind, inp.service, inp.image) == (DeployKind.DEPLOY, "taskrunner", f"taskrunner:{SHA}")
    assert inp.description is not None and inp.description.fields["Replicas"] == 2


def test_a_rollback_input_recorded_before_kind_is_a_rollback_without_a_description() -> None:
    inp = DeployInput.model_validate(_old_deploy("taskrunner:old"))
    assert (inp.kind, inp.service, inp.image, inp.description) == (DeployKind.ROLLBACK, "taskrunner", "taskrunner:old", None)


def test_the_deploy_activity_takes_an_old_input_and_records_its_kind(tmp_path: Path) -> None:
    """The deploy itself, on the local platform, from inputs of both shapes: a deploy keeps the running replicas and
    env vars; the first deploy of a service takes the file's Replicas."""
    activities = DeployActivities(tmp_path, None)
    old = DeployInput.model_validate(_old_deploy(None))
    result, record = activities._deploy_sync(old, None, 0.0)
    assert (result.image, result.replicas, record.kind) == (f"taskrunner:{SHA}", 2, DeployKind.DEPLOY)
    platform = LocalPlatform(tmp_path / "services")
    platform.put("d-taskrunner", RunningService(name="taskrunner", image=result.image, extra_config="A=1", replicas=5))
    back = DeployInput.model_validate(_old_deploy("taskrunner:old"))
    result, record = activities._deploy_sync(back, record, 0.0)
    assert (result.image, result.previous_image, result.replicas, result.env_names) == \
        ("taskrunner:old", f"taskrunner:{SHA}", 5, ["A"])
    assert record is not None and record.kind == DeployKind.ROLLBACK


def test_a_shard_state_with_its_reason_in_it_loads_as_state_and_message() -> None:
    shard = ShardState.model_validate({"index": 1, "state": "cancelled (another shard failed)"})
    assert (shard.state, shard.message) == (State.CANCELLED, "another shard failed")


def test_states_are_plain_strings_on_the_wire() -> None:
    st = RunStatus(run_id="r", tenant="t", env="DEV", repo="x", sha=SHA, started_by="bob", status=State.AWAITING_APPROVAL,
                   started_at=datetime.now(timezone.utc), phases=[])
    data = json.loads(st.model_dump_json())
    assert data["status"] == "awaiting_approval" and f"{st.status}" == "awaiting_approval"
    assert RunStatus.model_validate(data).status is State.AWAITING_APPROVAL
