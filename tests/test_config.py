"""katkit.yaml: tenants, links, durations, and one clear line for every mistake."""

from __future__ import annotations

from datetime import timedelta

import pytest

from katkit.config import parse_config
from katkit.errors import ConfigError, UnknownName
from katkit.sample import SAMPLE_CONFIG_YAML


def test_sample_config_parses() -> None:
    cfg = parse_config(SAMPLE_CONFIG_YAML.format(url="/tmp/x"))
    prod = cfg.tenant("p-taskrunner")
    assert prod.approval.required and prod.approval.approvers == ["demo", "alice"]
    assert prod.approval.timeout == timedelta(hours=24) and not prod.approval.allow_self_approval
    assert cfg.link("taskrunner", "d-taskrunner").branch == "main"


@pytest.mark.parametrize("text,needle", [
    ("tenants: []\nlinks: []\nextra: 1\n", "unknown key 'extra'"),
    ("tenants:\n  - {name: a, env: DEV, colour: red}\n", "unknown key 'tenants.0.colour'"),
    ("tenants:\n  - {name: a, env: DEV, platform: k8s}\n", "tenants.0.platform"),
    ("tenants:\n  - {name: a, env: DEV, approval: {timeout: soon}}\n", "'soon' is not a duration"),
    ("tenants:\n  - {name: a, env: DEV}\n  - {name: a, env: PROD}\n", "tenant 'a' is defined twice"),
    ("tenants: []\nlinks:\n  - {repo: r, url: /x, tenants: [ghost]}\n", "names tenant 'ghost'"),
    ("tenants: [\n", "not valid YAML"),
])
def test_config_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_names() -> None:
    cfg = parse_config(SAMPLE_CONFIG_YAML.format(url="/tmp/x"))
    with pytest.raises(UnknownName, match="unknown tenant 'x'"):
        cfg.tenant("x")
    with pytest.raises(UnknownName, match="unknown repo 'y'"):
        cfg.link("y")


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("45", 45)])
def test_durations(text: str, seconds: int) -> None:
    cfg = parse_config(f"tenants:\n  - {{name: a, env: DEV, approval: {{timeout: {text}}}}}\n")
    assert cfg.tenants[0].approval.timeout == timedelta(seconds=seconds)
