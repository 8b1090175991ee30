"""katkitconfig.js and servicedescription.js in the DuploCloud formats: what is accepted and every error."""

from __future__ import annotations

import json

import pytest

from katkit.errors import RepoFileError
from katkit.models import PhaseType
from katkit.repofiles import parse_build_params, parse_katkitconfig, parse_servicedescription
from katkit.sample import SAMPLE_KATKITCONFIG


def config(*entries: dict) -> str:
    return json.dumps(list(entries))


def phase(name: str = "BUILD", **kw) -> dict:
    return {"Name": name, "PhaseType": 4, "BuildParams": "", "Order": 1, "Parallelism": 1, "ContinerImage": None, **kw}


def test_env_entry_wins_over_default() -> None:
    text = json.dumps(SAMPLE_KATKITCONFIG)
    entry, local_fleet, phases = parse_katkitconfig(text, "PROD")
    assert (entry, local_fleet, [p.name for p in phases]) == ("PROD", False, ["BUILD", "DEPLOY"])
    entry, local_fleet, phases = parse_katkitconfig(text, "DEV")
    assert (entry, local_fleet, [p.name for p in phases]) == ("default", True, ["BUILD", "UNIT_TEST", "DEPLOY"])
    assert phases[1].parallelism == 2 and phases[2].type == PhaseType.DEPLOYMENT


def test_phases_run_by_order_not_file_position() -> None:
    text = config({"EnvName": "default", "WorkFlow": [phase("C", Order=3), phase("A", Order=1), phase("B", Order=2)]})
    assert [p.name for p in parse_katkitconfig(text, "DEV")[2]] == ["A", "B", "C"]


def test_build_params_with_spaces_and_empty_values() -> None:
    assert parse_build_params(" A=1,B= , C = x y ,D=,E=a=b, ", "f", "P") == {"A": "1", "B": "", "C": "x y", "D": "", "E": "a=b"}
    assert parse_build_params("", "f", "P") == {} and parse_build_params(None, "f", "P") == {}


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), (True, True), (False, False), ("TRUE", True)])
def test_local_fleet_string_or_bool(value, expected) -> None:
    assert parse_katkitconfig(config({"EnvName": "default", "LocalFleet": value, "WorkFlow": [phase()]}), "X")[1] is expected


def test_container_image_both_spellings() -> None:
    a = parse_katkitconfig(config({"EnvName": "default", "WorkFlow": [phase(ContinerImage="img:1")]}), "X")[2][0]
    b = parse_katkitconfig(config({"EnvName": "default", "WorkFlow": [{**phase(), "ContainerImage": "img:2"}]}), "X")[2][0]
    del_key = {k: v for k, v in phase().items() if k != "ContinerImage"}
    c = parse_katkitconfig(config({"EnvName": "default", "WorkFlow": [{**del_key, "ContainerImage": "img:3"}]}), "X")[2][0]
    assert (a.image, b.image, c.image) == ("img:1", "img:2", "img:3")


@pytest.mark.parametrize("text,needle", [
    ("[{", "invalid JSON at line 1"),
    ('{"EnvName": "default"}', "top level is not a JSON array"),
    (config({"EnvName": "default", "WorkFlow": [phase(PhaseType=2)]}), "PhaseType 2"),
    (config({"EnvName": "default", "WorkFlow": [phase("D1", PhaseType=1), phase("D2", PhaseType=1)]}), "2 deployment phases"),
    (config({"EnvName": "default", "WorkFlow": [phase(Parallelism=0)]}), "Parallelism 0"),
    (config({"EnvName": "default", "WorkFlow": [phase(BuildParams="A=1, OOPS")]}), "'OOPS' has no '='"),
    (config({"EnvName": "PROD", "WorkFlow": [phase()]}), "no entry for EnvName 'DEV' and no 'default'"),
    (config({"EnvName": "default", "WorkFlow": [phase(), phase()]}), "'BUILD' appears twice"),
    (config({"EnvName": "default", "WorkFlow": []}), "no WorkFlow list"),
    (config({"EnvName": "default", "WorkFlow": [phase(Order="soon")]}), "Order is 'soon'"),
    (config({"EnvName": "default", "WorkFlow": [phase(Name="bad name")]}), "has Name 'bad name'"),
])
def test_katkitconfig_errors_name_file_field_and_fix(text: str, needle: str) -> None:
    with pytest.raises(RepoFileError) as info:
        parse_katkitconfig(text, "DEV")
    msg = str(info.value)
    assert msg.startswith("katkitconfig.js: ") and needle in msg and " — " in msg and "\n" not in msg


def test_servicedescription_passes_fields_through() -> None:
    desc = parse_servicedescription(json.dumps({"Name": "api", "DockerImage": "acme/api:<hubtag>", "HPASpecs": {"Max": 3}}))
    assert desc.image_for("abc") == "acme/api:abc" and desc.fields["HPASpecs"] == {"Max": 3}


@pytest.mark.parametrize("data,needle", [
    ({"Name": "api", "DockerImage": "acme/api:latest"}, "has no <hubtag>"),
    ({"DockerImage": "api:<hubtag>"}, "Name is missing"),
    ({"Name": "api"}, "DockerImage is missing"),
    ([1], "not a JSON object"),
])
def test_servicedescription_errors(data, needle: str) -> None:
    with pytest.raises(RepoFileError) as info:
        parse_servicedescription(json.dumps(data))
    assert needle in str(info.value) and str(info.value).startswith("servicedescription/servicedescription.js: ")
