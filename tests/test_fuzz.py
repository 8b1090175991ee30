"""Property-based fuzzing of the parsers of user input: katkitconfig.js, servicedescription.js, BuildParams and
katkit.yaml.

The property, for ANY input: the parser returns a valid result, or raises katkit's BadInput (RepoFileError /
ConfigError) with a message of exactly one non-empty line that names the file. Never anything else: no
TypeError, KeyError, RecursionError, OverflowError, pydantic ValidationError, yaml error, ...

The inputs reach deep: random text, JSON values built recursively, the valid samples of katkit.sample with
fields replaced, removed or retyped (and their text cut and spliced), YAML dumped from random mappings with
the real keys, raw YAML-ish text (syntax errors, tabs, anchors/aliases, python tags) and deep nesting.

Deterministic in CI (derandomize, no example database). For a longer local run:
``KATKIT_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from katkit import repofiles
from katkit.config import KatkitConfig, parse_config
from katkit.errors import BadInput, ConfigError, RepoFileError
from katkit.models import Phase, PhaseType, ServiceDescription
from katkit.repofiles import (
    KATKITCONFIG,
    SERVICEDESCRIPTION,
    parse_build_params,
    parse_katkitconfig,
    parse_servicedescription,
)
from katkit.sample import SAMPLE_CONFIG_YAML, SAMPLE_KATKITCONFIG, SAMPLE_SERVICEDESCRIPTION

settings.register_profile(
    "katkit-fuzz",
    max_examples=int(os.environ.get("KATKIT_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)
FUZZ = settings.get_profile("katkit-fuzz")
"""Applied per test (not loaded globally), so other test modules keep hypothesis' defaults."""

pytestmark = pytest.mark.timeout(600)


# --- the property ---------------------------------------------------------------------------------------------

def assert_one_line(exc: BaseException, prefix: str) -> None:
    assert isinstance(exc, BadInput), f"{type(exc).__name__} is not a BadInput: {exc!r}"
    msg = str(exc)
    assert msg.strip(), "empty message"
    assert "\n" not in msg and len(msg.splitlines()) == 1, f"message is not one line: {msg!r}"
    assert msg.startswith(prefix), f"message does not name the file {prefix!r}: {msg!r}"


def call(parser: Any, *args: Any, prefix: str) -> Any:
    """Run ``parser``: its result, or None for a BadInput with a one-line message starting with ``prefix``.

    Any other exception propagates and fails the test with its own traceback.
    """
    try:
        result = parser(*args)
    except BadInput as exc:
        assert_one_line(exc, prefix)
        # the kinds of rejection, for --hypothesis-show-statistics
        event("rejected: " + re.sub(r"'.*?'|\d+", "_", str(exc).removeprefix(prefix))[:40])
        return None
    event("accepted")
    return result


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_phases(result: tuple[str, bool, list[Phase]], env: str) -> None:
    chosen, local_fleet, phases = result
    assert chosen in (env, "default")
    assert isinstance(local_fleet, bool)
    assert phases, "an entry without phases was accepted"
    assert [p.order for p in phases] == sorted(p.order for p in phases), "phases are not sorted by Order"
    names = [p.name for p in phases]
    assert len(set(names)) == len(names)
    assert sum(p.type == PhaseType.DEPLOYMENT for p in phases) <= 1
    for p in phases:
        assert isinstance(p.parallelism, int) and not isinstance(p.parallelism, bool) and p.parallelism >= 1
        assert p.parallelism <= getattr(repofiles, "MAX_PARALLELISM", p.parallelism)
        assert isinstance(p.order, int) and not isinstance(p.order, bool)
        assert _SAFE_NAME.fullmatch(p.name), p.name
        assert p.image is None or (isinstance(p.image, str) and p.image.strip())
        check_build_params(p.build_params)
        Phase.model_validate_json(p.model_dump_json())  # it crosses the workflow boundary as JSON


def check_build_params(params: dict[str, str]) -> None:
    assert isinstance(params, dict)
    for k, v in params.items():
        assert _ENV_KEY.fullmatch(k), k
        assert isinstance(v, str) and v == v.strip()
        assert "\0" not in v  # it goes into a process environment, which cannot hold one


def check_service(desc: ServiceDescription) -> None:
    assert isinstance(desc.name, str) and desc.name.strip()
    assert "<hubtag>" in desc.docker_image
    assert desc.image_for("0" * 40).count("<hubtag>") == 0
    ServiceDescription.model_validate_json(desc.model_dump_json())  # it crosses the workflow boundary as JSON


def check_config(cfg: KatkitConfig) -> None:
    assert isinstance(cfg, KatkitConfig)
    names = [t.name for t in cfg.tenants]
    assert len(set(names)) == len(names)
    for link in cfg.links:
        assert set(link.tenants) <= set(names)
    KatkitConfig.model_validate_json(cfg.model_dump_json())


# --- building blocks -------------------------------------------------------------------------------------------

NASTY_STRINGS = [
    "", " ", "\t", "\x00", "..", "/", "../x", "a/b", "/etc/passwd", "~", "<hubtag>", "app:<hubtag>", "<HUBTAG>",
    "a\nb", "a\r\nb", "\u2028", "\u0085", "\ufeff", "\ud800", "é", "ß", "٣", "１２", "🙂", "null", "true", "FALSE",
    " true ", "yes", "0", "-1", " 3 ", "1.5", "1e400", "NaN", "-", "=", "K=V", "K=", "=V", "A=1, B=", "A=1,,B=2",
    "A==b", "OOPS", "1A=2", "A\nB=1", "A=1\nB", "default", "DEV", "PROD", "x" * 64, "x" * 300, "1" * 5000,
    "a..b", ".x", "-x", "BUILD\n", "$(rm -rf /)", "'", '"', "\\", "%s", "{}", "[]",
]
NASTY_INTS = [0, 1, -1, 2, 3, 4, 255, 256, 257, 2**31, 2**63, -(2**63) - 1, 10**30, 10**4000]

json_keys = st.one_of(st.sampled_from(["Name", "EnvName", "WorkFlow", "PhaseType", "DockerImage", "", "\x00"]),
                      st.text(max_size=6))
json_strings = st.one_of(st.text(max_size=12), st.sampled_from(NASTY_STRINGS))
json_ints = st.one_of(st.integers(-300, 300), st.integers(), st.sampled_from(NASTY_INTS))
json_scalars = st.one_of(st.none(), st.booleans(), json_ints, st.floats(allow_nan=True, allow_infinity=True),
                         json_strings)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(json_keys, inner, max_size=4))


json_values = st.recursive(json_scalars, json_containers, max_leaves=16)

DEPTHS = st.one_of(st.sampled_from([2, 32, 33, 64, 65, 100, 200, 254, 255, 256, 300, 500, 900, 950, 980, 990,
                                    995, 1000, 1500, 3000, 100_000]), st.integers(1, 2000))


def retyped(value: Any) -> st.SearchStrategy[Any]:
    """The same value with another JSON type."""
    options: list[Any] = [None, [value], {"value": value}, json.dumps(value, default=str)]
    if isinstance(value, bool):
        options += [int(value), str(value).lower()]
    elif isinstance(value, int):
        options += [str(value), float(value) if abs(value) < 2**53 else value, value > 0]
    elif isinstance(value, float):
        options += [str(value)] + ([int(value)] if value == value and abs(value) != float("inf") else [])
    elif isinstance(value, str):
        options += [value.strip(), value + "\n", value * 2, value.upper(), value.lower(), 4, True]
    return st.sampled_from(options)


def containers(doc: Any) -> list[Any]:
    """Every dict and list in ``doc`` (iteratively, in a stable order)."""
    found, todo = [], [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, (dict, list)):
            found.append(node)
            todo.extend(reversed(list(node.values() if isinstance(node, dict) else node)))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: Any, field_values: dict[str, st.SearchStrategy[Any]],
            values: st.SearchStrategy[Any]) -> Any:
    """``base`` with 0 to 4 fields replaced, removed, retyped or items duplicated, dropped, appended."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 4))):
        nodes = containers(doc)
        if not nodes:
            break
        node = draw(st.sampled_from(nodes))
        op = draw(st.sampled_from(["replace", "replace", "remove", "retype", "add", "duplicate"]))
        if isinstance(node, dict):
            pick = draw(st.integers(0, 3))  # mostly a key the mapping has, else a known or an arbitrary one
            key = draw(st.sampled_from(sorted(node, key=str) or [""]) if pick < 2 else
                       st.sampled_from(sorted(field_values)) if pick == 2 else json_keys)
            if op == "remove":
                node.pop(key, None)
            elif op == "retype" and key in node:
                node[key] = copy.deepcopy(draw(retyped(node[key])))
            elif op == "duplicate" and key in node:  # the value under another key, e.g. ContainerImage
                node[draw(st.sampled_from(sorted(field_values)))] = copy.deepcopy(node[key])
            elif key in field_values and draw(st.integers(0, 3)):  # mostly a value meant for this field
                node[key] = copy.deepcopy(draw(field_values[key]))
            else:
                node[key] = copy.deepcopy(draw(values))
        else:
            i = draw(st.integers(0, max(len(node) - 1, 0)))
            if op == "remove" and node:
                del node[i]
            elif op == "retype" and node:
                node[i] = copy.deepcopy(draw(retyped(node[i])))
            elif op == "duplicate" and node:
                node.insert(i, copy.deepcopy(node[i]))
            elif op == "replace" and node:
                node[i] = copy.deepcopy(draw(values))
            else:
                node.insert(i, copy.deepcopy(draw(values)))
    if draw(st.integers(0, 19)) == 0:  # the top level replaced or retyped
        doc = copy.deepcopy(draw(st.one_of(values, retyped(doc))))
    return doc


@st.composite
def one_field(draw: st.DrawFn, base: Any, field_values: dict[str, st.SearchStrategy[Any]]) -> Any:
    """``base`` with exactly one of its known fields given a value meant for that field: every field gets its turn."""
    doc = copy.deepcopy(base)
    slots = [(node, key) for node in containers(doc) if isinstance(node, dict) for key in node if key in field_values]
    node, key = draw(st.sampled_from(slots))
    node[key] = copy.deepcopy(draw(field_values[key]))
    return doc


_DEEP = "__katkit_fuzz_deep__"


@st.composite
def deep_in(draw: st.DrawFn, base: Any, keys: list[str]) -> str:
    """JSON text of ``base`` with one field (or the whole document) nested ``depth`` arrays/objects deep."""
    depth = draw(DEPTHS)
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"Name":', "}]")]))
    deep = opener * depth + draw(st.sampled_from(["0", '"x"', "[]", "null"])) + closer * depth
    doc = copy.deepcopy(base)
    dicts = [n for n in containers(doc) if isinstance(n, dict)]
    if not dicts or draw(st.booleans()):
        return deep
    draw(st.sampled_from(dicts))[draw(st.sampled_from(keys))] = _DEEP
    return json.dumps(doc).replace(json.dumps(_DEEP), deep, 1)


@st.composite
def spliced(draw: st.DrawFn, text: str, tokens: list[str]) -> str:
    """``text`` cut, with characters deleted or with tokens inserted: near-valid syntax errors."""
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["cut", "delete", "insert", "insert"]))
        if op == "cut":
            text = text[:i]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        else:
            text = text[:i] + draw(st.one_of(st.sampled_from(tokens), st.text(max_size=4))) + text[i:]
    return text


def token_text(tokens: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(tokens), st.text(max_size=3)), max_size=40).map("".join)


# --- katkitconfig.js -------------------------------------------------------------------------------------------

PHASE_KEYS = ["Name", "PhaseType", "BuildParams", "Order", "Parallelism", "ContinerImage", "ContainerImage"]
PHASE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "EnvName": st.sampled_from(["default", "PROD", "DEV", "", " default", "Default", None, 1, "\x00"]),
    "LocalFleet": st.sampled_from([True, False, "true", "false", "FALSE", " true ", "yes", 1, 0, None, [], ""]),
    "WorkFlow": st.sampled_from([[], {}, "BUILD", None, [None], [[]], [{}], 0]),
    "Name": st.sampled_from(["BUILD", "DEPLOY", "UNIT_TEST", "../x", "a/b", "", " ", "x" * 63, "x" * 64, "a..b",
                             ".x", "-x", "BUILD\n", "<hubtag>", "é", "a b", None, 3, True, [], {}]),
    "PhaseType": st.sampled_from([1, 4, 2, 0, -4, "4", "1", 4.0, 1.0, 4.5, True, False, [], {}, [4], None,
                                  float("nan"), float("inf"), 10**30]),
    "BuildParams": st.one_of(st.sampled_from(["", "A=1", "A=1, B=", "OOPS", "=x", "1A=2", "A=1,,B=2", "A==b",
                                              " A = b ", "A\nB=1", "A=1\nB", "A=1,\u2028B", "K\x00=v", None, 1,
                                              [], {}, ["A=1"], True]), json_strings),
    "Order": st.one_of(st.sampled_from([0, -1, 1, 2, 10**30, -(10**30), "2", " 3 ", "-4", "+4", "1.5", 1.5, 2.0,
                                        "٣", "１２", "1" * 5000, "", True, None, float("nan"), float("inf"), [],
                                        {}]), json_ints),
    "Parallelism": st.one_of(st.sampled_from([0, 1, 2, -1, 255, 256, 257, 10**30, "2", " 3 ", "0", "1" * 5000,
                                              "٣", 2.0, 1.5, True, None, float("inf"), float("nan"), [], {}]),
                             json_ints),
    "ContinerImage": st.sampled_from([None, "", " ", "img:1", "\n", 5, 0, [], ["img"], {}, False, True,
                                      "a\nb"]),
    "ContainerImage": st.sampled_from([None, "", " ", "img:2", 5, [], {"x": 1}, False]),
}

ENVS = st.one_of(st.sampled_from(["DEV", "PROD", "default", "", "dev", "a\nb", "\u2028", "\x00", "X" * 100]),
                 st.text(max_size=8))
JSON_TOKENS = ["[", "]", "{", "}", ",", ":", '"', " ", "\n", "\t", "\\", "\\u", "\\ud800", '"EnvName"',
               '"default"', '"WorkFlow"', '"Name"', '"PhaseType"', '"Order"', '"Parallelism"', '"BuildParams"',
               '"LocalFleet"', '"DockerImage"', '"<hubtag>"', "4", "1", "-", ".5", "1e999", "-1e999", "NaN",
               "Infinity", "-Infinity", "true", "false", "null", "1" * 5000, "\x00", "\ufeff", "//", "/*", "'"]

katkitconfig_texts = st.one_of(
    st.text(max_size=40),
    token_text(JSON_TOKENS),
    json_values.map(json.dumps),
    st.lists(st.dictionaries(st.sampled_from(["EnvName", "LocalFleet", "WorkFlow"]), json_values, max_size=3),
             max_size=3).map(json.dumps),
    mutated(SAMPLE_KATKITCONFIG, PHASE_FIELDS, json_values).map(json.dumps),
    one_field(SAMPLE_KATKITCONFIG, PHASE_FIELDS).map(json.dumps),
    mutated(SAMPLE_KATKITCONFIG, PHASE_FIELDS, json_values).map(json.dumps),
    spliced(json.dumps(SAMPLE_KATKITCONFIG, indent=2), JSON_TOKENS),
    deep_in(SAMPLE_KATKITCONFIG, ["WorkFlow", "LocalFleet", *PHASE_KEYS]),
)

# Each bug the fuzzing found, as a plain example (see the regression tests at the end, too).
_PHASE = {"Name": "B", "PhaseType": 4}


def _cfg(**phase: Any) -> str:
    return json.dumps([{"EnvName": "default", "WorkFlow": [{**_PHASE, **phase}]}])


@FUZZ
@given(text=katkitconfig_texts, env=ENVS, file=st.sampled_from([None, "svc/katkitconfig.js"]))
@example(text="[" * 100_000, env="DEV", file=None)  # RecursionError
@example(text="1" * 5000, env="DEV", file=None)  # ValueError: int digits limit
@example(text=_cfg(PhaseType=[]), env="DEV", file=None)  # TypeError: unhashable
@example(text=_cfg(Parallelism="1" * 5000), env="DEV", file=None)  # ValueError: int digits limit
@example(text=_cfg(Order="1" * 5000), env="DEV", file=None)  # ValueError: int digits limit
@example(text=json.dumps([{"EnvName": "x", "WorkFlow": [_PHASE]}]), env="A\nB", file=None)  # two lines
@example(text=_cfg(BuildParams="A\nB"), env="DEV", file=None)  # two lines
def test_katkitconfig(text: str, env: str, file: str | None) -> None:
    args = (text, env) if file is None else (text, env, file)
    result = call(parse_katkitconfig, *args, prefix=f"{file or KATKITCONFIG}: ")
    if result is not None:
        check_phases(result, env)


# --- servicedescription.js -------------------------------------------------------------------------------------

SERVICE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "Name": st.sampled_from(["taskrunner", "api", "", " ", "../x", "a/b", "x" * 63, "x" * 64, "a..b", ".x",
                             "<hubtag>", "é", "a\nb", None, 1, [], {}]),
    "DockerImage": st.one_of(st.sampled_from(["app:<hubtag>", "registry:5000/app:<hubtag>", "<hubtag>", "app:latest",
                                              "registry:5000/app:v1", "app", "", " ", "a\nb:1", "a\u2028b:1",
                                              "app:<HUBTAG>", "app@sha256:abc", ":", None, 1, [], {"x": 1}]),
                             json_strings),
    "ExtraConfig": json_values,
    "Replicas": st.sampled_from([1, 0, -1, "2", None, 10**30, float("nan")]),
    "HPASpecs": json_values,
}
servicedescription_texts = st.one_of(
    st.text(max_size=40),
    token_text(JSON_TOKENS),
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(sorted(SERVICE_FIELDS)), json_values, max_size=4).map(json.dumps),
    mutated(SAMPLE_SERVICEDESCRIPTION, SERVICE_FIELDS, json_values).map(json.dumps),
    one_field(SAMPLE_SERVICEDESCRIPTION, SERVICE_FIELDS).map(json.dumps),
    mutated(SAMPLE_SERVICEDESCRIPTION, SERVICE_FIELDS, json_values).map(json.dumps),
    spliced(json.dumps(SAMPLE_SERVICEDESCRIPTION, indent=2), JSON_TOKENS),
    deep_in(SAMPLE_SERVICEDESCRIPTION, ["HPASpecs", "ExtraConfig", "Name", "DockerImage"]),
)


@FUZZ
@given(text=servicedescription_texts, file=st.sampled_from([None, "svc/servicedescription/servicedescription.js"]))
@example(text=json.dumps({"Name": "a", "DockerImage": "a\nb:1"}), file=None)  # two lines
@example(text='{"Name": "a", "DockerImage": "a:<hubtag>", "HPASpecs": ' + "[" * 300 + "]" * 300 + "}",
         file=None)  # accepted, but fails later: Maximum serialization depth exceeded
@example(text='{"Name": "a", "DockerImage": "a:<hubtag>", "AllocationTags": [["\\ud800"]]}',
         file=None)  # accepted, but fails later: UnicodeEncodeError, surrogates not allowed
def test_servicedescription(text: str, file: str | None) -> None:
    args = (text,) if file is None else (text, file)
    result = call(parse_servicedescription, *args, prefix=f"{file or SERVICEDESCRIPTION}: ")
    if result is not None:
        check_service(result)


# --- BuildParams -----------------------------------------------------------------------------------------------

_param_keys = st.one_of(st.sampled_from(["A", "TEST_SUITE", "_", "1A", "", " ", "A B", "é", "A-B", "A\nB",
                                         "A\x00", "$A"]), st.text(max_size=4))
_param_values = st.one_of(st.sampled_from(["", "1", " x ", "a=b", "a\nb", "\x00", "é", ","]), st.text(max_size=4))
_param_items = st.one_of(
    st.tuples(_param_keys, st.sampled_from(["=", "", "==", " = "]), _param_values).map("".join),
    st.text(max_size=6),
)
build_params_values = st.one_of(
    st.lists(_param_items, max_size=6).flatmap(
        lambda items: st.sampled_from([",", ", ", " ,", ",,", "\n,", ";"]).map(lambda sep: sep.join(items))),
    json_values,
    st.sampled_from([None, 10**5000, -(10**5000), float("nan"), b"A=1", ("A=1",), {"A": "1"}, object()]),
    st.text(max_size=30),
)


@FUZZ
@given(value=build_params_values,
       file=st.sampled_from([KATKITCONFIG, "sub/katkitconfig.js"]),
       phase=st.one_of(st.sampled_from(["BUILD", "UNIT_TEST", "", "a\nb"]), st.text(max_size=8)))
@example(value="A\nB", file=KATKITCONFIG, phase="BUILD")  # the fix hint spanned two lines
@example(value="A=1, \u2028OOPS", file=KATKITCONFIG, phase="BUILD")  # the fix hint spanned two lines
@example(value="A=x\x00y", file=KATKITCONFIG, phase="BUILD")  # accepted: the builder then failed at every retry
def test_build_params(value: Any, file: str, phase: str) -> None:
    result = call(parse_build_params, value, file, phase, prefix=f"{file}: ")
    if result is not None:
        check_build_params(result)


# --- katkit.yaml -----------------------------------------------------------------------------------------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-300, 300), st.integers(), st.sampled_from(NASTY_INTS[:-1]),
    st.floats(allow_nan=True),
    st.text(max_size=10), st.sampled_from(NASTY_STRINGS),
    st.sampled_from([dt.date(2001, 2, 3), dt.datetime(2001, 2, 3, 4, 5, 6), b"\x00\xff", b"A=1"]),
)


def yaml_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3))


yaml_values = st.recursive(yaml_scalars, yaml_containers, max_leaves=12)
DURATIONS = st.sampled_from(["90s", "15m", "24h", "1h30m", "2d", "", "0", 0, 90, -5, 1.5, "1x", "P1D", "P",
                             "PT-1S", "P99999999999D", "99999999999d", "1" * 5000 + "s", 10**30, -(10**30),
                             float("inf"), float("-inf"), float("nan"), "h", " 1h ", True, [], {}, "1d1d"])
NAMES = st.sampled_from(["d-taskrunner", "p-taskrunner", "a", "", "../x", "a/b", "x" * 63, "x" * 64, "a..b",
                         ".x", "-x", "é", "a\nb", 1, None, [], "taskrunner"])


@st.composite
def fields(draw: st.DrawFn, spec: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A mapping with some of the real keys (each with a field-aware or arbitrary value), sometimes a stray key."""
    keys = draw(st.lists(st.sampled_from(sorted(spec)), unique=True, max_size=len(spec)))
    doc = {k: copy.deepcopy(draw(st.one_of(spec[k], yaml_values))) for k in keys}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=5))] = draw(yaml_values)
    return doc


APPROVAL = {
    "required": st.sampled_from([True, False, "yes", "true", 1, None]),
    "approvers": st.sampled_from([[], ["alice"], ["alice", "bob"], "alice", [1], [None], [[]]]),
    "min_approvals": st.sampled_from([1, 2, 3, 0, -1, 10**30, "2", 1.5, None]),
    "allow_self_approval": st.booleans(),
    "timeout": DURATIONS,
    "on_timeout": st.sampled_from(["reject", "cancel", "approve", "", None, 1]),
    "wait_timer": DURATIONS,
}
DOCKER = {
    "image": st.sampled_from(["katkit-builder:latest", "", None, 1]),
    "cpus": st.sampled_from([1, 0.5, 0, -1, float("inf"), float("nan"), "1", None, 10**30]),
    "memory": st.sampled_from(["512m", "1g", "512", "512x", "", None, 512, "512m\n"]),
    "builder_network": st.sampled_from(["katkit-builders", "", None]),
    "tenant_network": st.sampled_from(["net", "", None, 1]),
    "docker_socket": st.sampled_from([True, False, "no", None]),
    "mount_mirror": st.sampled_from([True, False, "off", None]),
    "shared_engine": st.sampled_from([True, False, "yes", None]),
    "settle": DURATIONS,
    "health_timeout": DURATIONS,
}
ECS = {
    "region": st.sampled_from(["us-east-1", "", None, 1]),
    "cluster": st.sampled_from(["default", "", None]),
    "builders_cluster": st.sampled_from(["katkit-builders", "", None]),
    "launch_type": st.sampled_from(["FARGATE", "EC2", "fargate", None]),
    "subnets": st.sampled_from([[], ["subnet-1"], "subnet-1", [1], None]),
    "security_groups": st.sampled_from([[], ["sg-1"], [None]]),
    "assign_public_ip": st.booleans(),
    "task_definition": st.sampled_from(["katkit-builder", "arn:aws:ecs:x", ""]),
    "container": st.sampled_from(["agent", ""]),
    "cpu": st.sampled_from(["1024", 1024, None]),
    "memory": st.sampled_from(["2048", 2048, None]),
    "log_group": st.sampled_from(["/katkit/builders"]),
    "log_stream_prefix": st.sampled_from(["katkit"]),
    "poll": DURATIONS,
    "deploy_timeout": DURATIONS,
}
TENANT_GITHUB = {
    "auto_trigger": st.booleans(), "pull_requests": st.booleans(),
    "environment": st.sampled_from(["production", "", None, 1]), "token_to_builder": st.booleans(),
}
TENANT = {
    "name": NAMES,
    "env": st.sampled_from(["DEV", "PROD", "", "a b", "a\n", "é", None, 1, "X" * 100]),
    "platform": st.sampled_from(["local", "docker", "ecs", "k8s", "", None]),
    "builder": st.sampled_from(["local", "docker", "ecs", "LOCAL", None]),
    "approval": fields(APPROVAL),
    "phase_timeout": DURATIONS,
    "host_wait": DURATIONS,
    "docker": fields(DOCKER),
    "ecs": fields(ECS),
    "deploy_lock": st.sampled_from(["queue", "supersede", "drop", None]),
    "webhooks": st.sampled_from([[], ["https://example.invalid/hook"], "https://x", [1], None]),
    "github": fields(TENANT_GITHUB),
}
LINK = {
    "repo": NAMES,
    "url": st.sampled_from(["https://github.com/acme/taskrunner.git", "git@github.com:acme/x.git", "/tmp/x",
                            "file:///tmp/x", "ssh://git@github.com/a/b", "https://ghe.example/a/b", "", None, 1,
                            "https://github.com/" + "a/" * 50 + "!"]),
    "branch": st.sampled_from(["main", "", "a\nb", None, 1]),
    "folder": st.sampled_from(["", "services/api", "/abs", "..", "a/../b", "a//b", "./a", "~/x", "a\\b", "\x00",
                               "a/", "/", None, 1, []]),
    "tenants": st.sampled_from([[], ["d-taskrunner"], ["p-taskrunner", "d-taskrunner"], ["nobody"], "d-taskrunner",
                                [1], [None], None]),
    "github": st.sampled_from(["acme/taskrunner", "acme", "a/b/c", "", None, 1]),
    "github_api_url": st.sampled_from(["https://api.github.com", "", None]),
}
GITHUB = {
    "api_url": st.sampled_from(["https://api.github.com", "https://ghe.example/api/v3", "", None]),
    "hosts": st.sampled_from([["github.com"], [], ["ghe.example"], "github.com", [None], None]),
}
config_dicts = fields({
    "tenants": st.lists(fields(TENANT), max_size=3),
    "links": st.lists(fields(LINK), max_size=2),
    "github": fields(GITHUB),
})

SAMPLE_CONFIG = yaml.safe_load(SAMPLE_CONFIG_YAML.format(url="https://github.com/acme/taskrunner.git"))
FULL_CONFIG = copy.deepcopy(SAMPLE_CONFIG)
"""The sample with every field set to a valid value, so that replacing any one of them stays near-valid."""
FULL_CONFIG["tenants"][1].update(
    phase_timeout="1h", deploy_lock="supersede", webhooks=["https://example.invalid/hook"],
    approval={"required": True, "approvers": ["alice", "bob"], "min_approvals": 2, "allow_self_approval": False,
              "timeout": "24h", "on_timeout": "cancel", "wait_timer": "15m"},
    docker={"image": "katkit-builder:latest", "cpus": 1.5, "memory": "512m", "builder_network": "katkit-builders",
            "tenant_network": "p-net", "docker_socket": True, "mount_mirror": True, "settle": "3s",
            "health_timeout": "5m"},
    ecs={"region": "us-east-1", "cluster": "prod", "builders_cluster": "katkit-builders", "launch_type": "EC2",
         "subnets": ["subnet-1"], "security_groups": ["sg-1"], "assign_public_ip": True,
         "task_definition": "katkit-builder:3", "container": "agent", "cpu": "1024", "memory": "2048",
         "log_group": "/katkit/builders", "log_stream_prefix": "katkit", "poll": 2, "deploy_timeout": "15m"},
    github={"auto_trigger": True, "pull_requests": True, "environment": "production", "token_to_builder": False},
)
FULL_CONFIG["links"].append({"repo": "api", "url": "https://ghe.example/acme/api.git", "branch": "release",
                             "folder": "services/api", "tenants": ["p-taskrunner"], "github": "acme/api",
                             "github_api_url": "https://ghe.example/api/v3"})
FULL_CONFIG["github"] = {"api_url": "https://api.github.com", "hosts": ["github.com", "ghe.example"]}
CONFIG_FIELDS: dict[str, st.SearchStrategy[Any]] = {}
for _spec in (APPROVAL, DOCKER, ECS, TENANT_GITHUB, TENANT, LINK, GITHUB):
    for _key, _values in _spec.items():  # a key of several mappings (memory, github) gets the values of each
        CONFIG_FIELDS[_key] = st.one_of(CONFIG_FIELDS[_key], _values) if _key in CONFIG_FIELDS else _values
CONFIG_FIELDS.update(tenants=st.one_of(TENANT["name"].map(lambda n: [n]), LINK["tenants"], st.lists(fields(TENANT))),
                     links=st.lists(fields(LINK), max_size=2))
YAML_TOKENS = [":", ": ", "-", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "*b", "&b ", "!!python/object:os.system ",
               "!!python/object/apply:os.system [ls]", "!!python/name:os.system", "!!binary ", "!!binary ===",
               "!!timestamp ", "!!bool ", "!!null ", "!!set ", "!!omap ", "!!int ", "!!float ", "!!str ", "!!map ",
               "!!seq ", "!foo ",
               "<<: ", "<<: *a", "? ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "\t", "\n", "  ",
               "#", "|", ">", "'", '"', "\\", "tenants", "links", "github", "name", "env", "repo", "url", "folder",
               "approval", "phase_timeout", "2001-02-30", "2001-02-03 04:05:06", "1:30:00", "0x1F", "0o17",
               "1_000", '"\\ud800"', '"\\U0001F642"', ".inf", ".nan", "~", "null", "yes", "1" * 5000, "\x00", "\ufeff",
               "\x85", "\u2028", "@", "`", "%"]


def nested_yaml(depth: int, style: str) -> str:
    if style == "flow-seq":
        return "a: " + "[" * depth + "]" * depth
    if style == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    if style == "block-seq":
        return "- " * depth + "x"
    if style == "block-map":  # its text grows with depth squared: PyYAML fails at a few hundred levels anyway
        return "\n".join(" " * i + f"k{i}:" for i in range(min(depth, 600))) + " 1"
    return "tenants: [{name: a, env: A, approval: {approvers: " + "[" * depth + "]" * depth + "}}]"


def dumped(doc: Any, flow: bool | None, unicode: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)


yaml_texts = st.one_of(
    st.builds(dumped, config_dicts, st.sampled_from([None, True, False]), st.booleans()),
    st.builds(dumped, config_dicts, st.sampled_from([None, True, False]), st.booleans()),
    st.builds(dumped, mutated(SAMPLE_CONFIG, CONFIG_FIELDS, yaml_values), st.sampled_from([None, False]),
              st.booleans()),
    st.builds(dumped, mutated(FULL_CONFIG, CONFIG_FIELDS, yaml_values), st.sampled_from([None, False]),
              st.booleans()),
    st.builds(dumped, one_field(FULL_CONFIG, CONFIG_FIELDS), st.sampled_from([None, False]), st.booleans()),
    st.builds(dumped, one_field(FULL_CONFIG, CONFIG_FIELDS), st.sampled_from([None, False]), st.booleans()),
    st.builds(dumped, yaml_values, st.sampled_from([None, True]), st.booleans()),
    spliced(SAMPLE_CONFIG_YAML.format(url="/tmp/x"), YAML_TOKENS),
    spliced(SAMPLE_CONFIG_YAML.format(url="/tmp/x"), YAML_TOKENS),
    token_text(YAML_TOKENS),
    st.text(max_size=40),
    # PyYAML (recursion limit 1000) gives up at about 490 levels, and slowly: past that, deeper only costs time
    st.builds(nested_yaml, st.one_of(st.sampled_from([2, 64, 480, 490, 500, 520]), st.integers(1, 520)),
              st.sampled_from(["flow-seq", "flow-map", "block-seq", "block-map", "field"])),
)


@FUZZ
@given(text=yaml_texts, source=st.sampled_from([None, "/etc/katkit/katkit.yaml"]))
@example(text="[" * 2000, source=None)  # RecursionError
@example(text="a: 2001-02-30", source=None)  # ValueError: day is out of range for month
@example(text="a: " + "1" * 5000, source=None)  # ValueError: int digits limit
@example(text="!!int", source=None)  # IndexError (in PyYAML)
@example(text="a: !!float", source=None)  # IndexError (in PyYAML)
@example(text="a: !!bool x", source=None)  # KeyError (in PyYAML)
@example(text="a: !!timestamp x", source=None)  # AttributeError (in PyYAML)
@example(text='links: [{repo: a, url: "x\\ud800"}]', source=None)  # accepted, but fails later: UnicodeEncodeError
@example(text="tenants: [{name: a, env: A, phase_timeout: -5}]", source=None)  # accepted, but "-PT5S" does not parse back
@example(text="tenants: [{name: a, env: A, phase_timeout: 1000000000000000}]", source=None)  # OverflowError
@example(text="tenants: [{name: a, env: A, phase_timeout: .inf}]", source=None)  # OverflowError
@example(text="tenants: [{name: a, env: A, phase_timeout: 99999999999d}]", source=None)  # OverflowError
def test_katkit_yaml(text: str, source: str | None) -> None:
    args = (text,) if source is None else (text, source)
    result = call(parse_config, *args, prefix=f"{source or 'katkit.yaml'}: ")
    if result is not None:
        check_config(result)


# --- plain regressions for the bugs the fuzzing found ----------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("[" * 100_000, "nested too deeply"),
    ('{"Name": "a", "DockerImage": "a:<hubtag>", "HPASpecs": ' + "[" * 300 + "]" * 300 + "}", "nested too deeply"),
    ("1" * 5000, "too many digits"),
    (_cfg(PhaseType=[]), "PhaseType"),
    (_cfg(PhaseType={"a": 1}), "PhaseType"),
    (_cfg(Parallelism="1" * 5000), "Parallelism"),
    (_cfg(Order="1" * 5000), "Order"),
    (_cfg(BuildParams="A=\ud800"), "unpaired surrogate"),
    ('{"Name": "a", "DockerImage": "a:<hubtag>", "AllocationTags": [["\\ud800"]]}', "unpaired surrogate"),
])
def test_repo_file_regressions(text: str, expected: str) -> None:
    with pytest.raises(RepoFileError, match=expected) as info:
        if '"DockerImage"' in text:
            parse_servicedescription(text)
        else:
            parse_katkitconfig(text, "DEV")
    assert_one_line(info.value, info.value.file + ": ")


def test_repo_file_messages_stay_one_line() -> None:
    with pytest.raises(RepoFileError) as info:
        parse_build_params("A\nB", KATKITCONFIG, "BUILD")
    assert_one_line(info.value, f"{KATKITCONFIG}: ")
    with pytest.raises(RepoFileError) as info:
        parse_katkitconfig(json.dumps([{"EnvName": "x", "WorkFlow": [_PHASE]}]), "A\nB")
    assert_one_line(info.value, f"{KATKITCONFIG}: ")
    with pytest.raises(RepoFileError) as info:
        parse_servicedescription(json.dumps({"Name": "a", "DockerImage": "a\nb:1"}))
    assert_one_line(info.value, f"{SERVICEDESCRIPTION}: ")


@pytest.mark.parametrize("text, expected", [
    ("[" * 2000, "nested too deeply"),
    ("a: 2001-02-30", "day is out of range"),
    ("a: " + "1" * 5000, "digits"),
    ("!!int", "a value cannot be read"),
    ("a: !!float", "a value cannot be read"),
    ("a: !!bool x", "a value cannot be read"),
    ("a: !!timestamp x", "a value cannot be read"),
    ('links: [{repo: a, url: "x\\ud800"}]', "unpaired surrogate"),
    ("tenants: [{name: a, env: A, phase_timeout: -5}]", "may not be negative"),
    ("tenants: [{name: a, env: A, approval: {timeout: -1.5}}]", "may not be negative"),
    ("tenants: [{name: a, env: A, phase_timeout: 1000000000000000}]", "phase_timeout"),
    ("tenants: [{name: a, env: A, phase_timeout: .inf}]", "phase_timeout"),
    ("tenants: [{name: a, env: A, phase_timeout: .nan}]", "phase_timeout"),
    ("tenants: [{name: a, env: A, phase_timeout: 99999999999d}]", "phase_timeout"),
])
def test_katkit_yaml_regressions(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config(text)
    assert_one_line(info.value, "katkit.yaml: ")
