"""The defaults the docs and the deploy files state are the ones Settings applies.

Read from the repository, nothing run:

- the README's configuration table: one row per setting, and its default column;
- every statement of a default in prose: README.md, docs/*.md, deploy/README.md and the
  comments of compose.yaml and deploy/alerts.yml, in the forms they use: "`NAME`
  (default V)", "NAME, default V", "`NAME` defaults to V", "`NAME` (V by default)",
  "`NAME` is V by default", "`A + B`, V by default" (a sum of defaults), "`NAME` is `x`,
  `V` (default)", "`A:B` (default `a:b`)", and in deploy/alerts.yml's comments "NAME=V"
  (its thresholds are written "for the defaults (NAME=V, ...)");
- "`NAME` (V)" and "(`NAME`, V)": in docs/operations.md and docs/design.md the default;
  in deploy/README.md and the manifests' comments (with "`A` x `B` = a x b") what the
  workload runs with, its env where it sets the name, else the default;
- the alert thresholds derived from a default: the stalled poll loop is
  LIVENESS_TIMEOUT_S, the lag threshold is above two batches, the outbox age above the
  relay's takeover time;
- the environment compose.yaml and deploy/kubernetes/ give the members: names Settings
  reads (Settings.from_env ignores any other name: a typo'd setting would silently stay
  at its default) and values it accepts.

A mismatch fails naming the file and line, the setting, the documented value and the one
Settings applies. Fix the document; if a default changed on purpose, every statement of it.
A value other than the default is written so that none of these forms reads it: "(e.g.
30)", "(45 s here)", "NAME=V" in prose.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
COMPOSE = ROOT / "compose.yaml"
ALERTS = ROOT / "deploy" / "alerts.yml"
DEPLOY_README = ROOT / "deploy" / "README.md"
MANIFESTS = ROOT / "deploy" / "kubernetes"

DEFAULTS = Settings()
FIELDS = {env_name(f.name): f.name for f in dataclasses.fields(Settings)}

# Names (or their beginnings) that are not settings but have a default of their own.
NOT_SETTINGS = (
    "INBOUND_PARTITIONS",  # compose.yaml: `topics create --partitions`, from the host
    "TEST_",  # README, "Services for tests": the tests' own addresses and versions
)

# --- values ----------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "s": 1,
    "second": 1,
    "seconds": 1,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "day": 86400,
    "days": 86400,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_UNIT = r"(?: ?(?:s|seconds?|min|minutes?|days?|KiB|MiB|GiB)\b)?"
# A documented value: `code`, the word "empty", or a number with an optional unit.
_VALUE = rf"(?:`[^`\n]*`|empty\b|{_NUMBER}{_UNIT})"
_NAME = r"[A-Z][A-Z0-9_]{2,}"
# A name in prose: bare or in backticks, also as `NAME=value`.
_PROSE_NAME = rf"`?\b(?P<name>{_NAME})(?:=[^`\s]*)?`?"


def _number(text: str) -> float | None:
    match = re.fullmatch(rf"({_NUMBER})\s*([A-Za-z]*)", text)
    if match is None or match.group(2) not in _UNITS:
        return None
    return float(match.group(1).replace(",", "")) * _UNITS[match.group(2)]


def documented(raw: str, like: object) -> object:
    """The documented text as a value of the type of `like`; None if it is none."""
    text = raw.strip()
    if text == "empty":
        return ""
    code = text.startswith("`")
    text = text.strip("`")
    if isinstance(like, bool):
        return {"on": True, "true": True, "off": False, "false": False}.get(text.lower())
    if isinstance(like, int | float):
        return _number(text)
    return text if code else None


def _same(doc: object, real: object) -> bool:
    if isinstance(doc, float) and isinstance(real, int | float) and not isinstance(real, bool):
        return math.isclose(doc, real)
    return doc == real


@dataclasses.dataclass(frozen=True)
class Claim:
    """`raw` is documented as the value of a setting (or of `op` over several) in
    `settings`: Settings' defaults, or what a workload runs with (`whose`)."""

    path: Path
    line: int
    names: tuple[str, ...]
    raw: str
    op: str = "+"
    settings: Settings = DEFAULTS
    whose: str = "Settings' default"

    def real(self) -> object:
        values = [getattr(self.settings, FIELDS[n]) for n in self.names]
        if len(values) == 1:
            return values[0]
        return math.prod(values) if self.op == "x" else sum(values)

    def problem(self) -> str | None:
        real = self.real()
        doc = documented(self.raw, real)
        if doc is not None and _same(doc, real):
            return None
        return (
            f"{self.path.relative_to(ROOT)}:{self.line}: {f' {self.op} '.join(self.names)} "
            f"documented as {self.raw!r}, but {self.whose} is {real!r}"
        )


def problems(claims: list[Claim]) -> list[str]:
    return [p for p in (c.problem() for c in claims) if p is not None]


# --- text ------------------------------------------------------------------------------


@dataclasses.dataclass
class Prose:
    """A file's text as one string, lines joined by a space so that a sentence wrapped
    over lines reads whole, and the line each offset comes from."""

    path: Path
    text: str
    starts: list[int]
    numbers: list[int]

    @classmethod
    def of(cls, path: Path, lines: list[tuple[int, str]]) -> Prose:
        starts, numbers, offset = [], [], 0
        for number, line in lines:
            starts.append(offset)
            numbers.append(number)
            offset += len(line) + 1
        return cls(path, " ".join(line for _, line in lines), starts, numbers)

    def line(self, offset: int) -> int:
        return self.numbers[bisect.bisect_right(self.starts, offset) - 1]


def markdown(path: Path) -> Prose:
    lines = path.read_text(encoding="utf-8").splitlines()
    return Prose.of(path, list(enumerate(lines, start=1)))


def yaml_comments(path: Path) -> Prose:
    """The whole-line comments of a YAML file (their text after the '#')."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return Prose.of(
        path,
        [
            (n, m.group(1))
            for n, line in enumerate(lines, 1)
            if (m := re.match(r"\s*#\s?(.*)", line))
        ],
    )


# --- statements of defaults --------------------------------------------------------------

_SINGLE = [
    re.compile(_PROSE_NAME + rf"\*{{0,2}},? \((?:the )?default:? (?P<value>{_VALUE})"),
    re.compile(_PROSE_NAME + rf"\*{{0,2}}, default (?P<value>{_VALUE})"),
    re.compile(_PROSE_NAME + rf"\*{{0,2}} defaults to (?P<value>{_VALUE})"),
    re.compile(_PROSE_NAME + rf"\*{{0,2}}(?:, | \(| is | )(?P<value>{_VALUE}) by default"),
]
# "`LOG_LEVEL` is `DEBUG`, `INFO` (default)": the value marked as the default among the
# name's choices, close by in the same sentence, no other setting (or code block) between.
_CHOICE = re.compile(
    _PROSE_NAME + r"(?P<between>[^.;]{0,100}?)(?P<value>`[^`\n]+`) \((?:the )?default\b"
)
_SUM = re.compile(
    rf"`?\b(?P<a>{_NAME}) \+ (?P<b>{_NAME})`?(?:, | \(| is | )(?P<value>{_VALUE}) by default"
)
_PAIR = re.compile(
    rf"`(?P<a>{_NAME}):(?P<b>{_NAME})` \((?:the )?default `(?P<va>[^`:]+):(?P<vb>[^`]+)`"
)
_ASSIGNED = re.compile(rf"\b(?P<name>{_NAME})=(?P<value>{_NUMBER})\b")


def _operand(prose: Prose, start: int) -> bool:
    """The name at `start` is a term ('A + B', '2 x A', 'A:B'), not stated alone."""
    before = prose.text[:start].rstrip(" `")
    return before.endswith(("+", " x", ":"))


def default_claims(prose: Prose, *, assigned: bool = False) -> tuple[list[Claim], list[str]]:
    """The defaults `prose` states, and the names it gives a default that are not
    settings (as 'path:line: NAME'). With `assigned`, 'NAME=V' states a default too."""
    claims: list[Claim] = []
    unknown: list[str] = []
    singles = [*_SINGLE, _ASSIGNED] if assigned else _SINGLE
    for pattern in singles:
        for m in pattern.finditer(prose.text):
            if _operand(prose, m.start("name")):
                continue
            line = prose.line(m.start("name"))
            if m["name"] in FIELDS:
                claims.append(Claim(prose.path, line, (m["name"],), m["value"]))
            elif "_" in m["name"] and not m["name"].startswith(NOT_SETTINGS):
                unknown.append(f"{prose.path.relative_to(ROOT)}:{line}: {m['name']}")
    claims += _choice_claims(prose)
    for m in _SUM.finditer(prose.text):
        if m["a"] in FIELDS and m["b"] in FIELDS:
            names = (m["a"], m["b"])
            claims.append(Claim(prose.path, prose.line(m.start()), names, m["value"]))
    for m in _PAIR.finditer(prose.text):
        line = prose.line(m.start())
        for name, value in ((m["a"], m["va"]), (m["b"], m["vb"])):
            claims.append(Claim(prose.path, line, (name,), f"`{value}`"))
    return claims, unknown


def _choice_claims(prose: Prose) -> Iterator[Claim]:
    for name in re.finditer(_PROSE_NAME, prose.text):
        m = _CHOICE.match(prose.text, name.start())
        if m is None or m["name"] not in FIELDS or m["value"].strip("`") in FIELDS:
            continue
        if "```" in m["between"] or any(n in FIELDS for n in re.findall(_NAME, m["between"])):
            continue
        yield Claim(prose.path, prose.line(m.start()), (m["name"],), m["value"])


# "`NAME` (V)", "(`NAME`, V)": the value a name has, in files where that is a default
# (BARE_MEANS_DEFAULT) or where a workload's env may set it (deploy/README.md, manifests).
_BARE = re.compile(rf"`?\b(?P<name>{_NAME})`?(?: \(|, )(?P<value>{_NUMBER}{_UNIT})\)")
BARE_MEANS_DEFAULT = ("operations.md", "design.md")
_PRODUCTS = [
    # deploy/README.md: "`MAX_INFLIGHT_BATCHES` x `BATCH_MAX_RECORDS` = 4 x 1000 = 4,000"
    re.compile(
        rf"`(?P<a>{_NAME})` x `(?P<b>{_NAME})` = (?P<va>{_NUMBER}) x (?P<vb>{_NUMBER})"
        rf"(?: = (?P<vc>{_NUMBER}))?"
    ),
    # scaledobject.yaml: "MAX_INFLIGHT_BATCHES 4 x BATCH_MAX_RECORDS 1000 = 4,000"
    re.compile(
        rf"\b(?P<a>{_NAME}) (?P<va>{_NUMBER}) x (?P<b>{_NAME}) (?P<vb>{_NUMBER})"
        rf"(?: = (?P<vc>{_NUMBER}))?"
    ),
]


def running_claims(prose: Prose, settings: Settings, whose: str) -> list[Claim]:
    """'`NAME` (V)' and 'A x B = a x b' as values of `settings`."""
    out = [
        Claim(prose.path, prose.line(m.start()), (m["name"],), m["value"], "+", settings, whose)
        for m in _BARE.finditer(prose.text)
        if m["name"] in FIELDS
    ]
    for pattern in _PRODUCTS:
        for m in pattern.finditer(prose.text):
            line = prose.line(m.start())
            out.append(Claim(prose.path, line, (m["a"],), m["va"], "+", settings, whose))
            out.append(Claim(prose.path, line, (m["b"],), m["vb"], "+", settings, whose))
            if m["vc"]:
                names = (m["a"], m["b"])
                out.append(Claim(prose.path, line, names, m["vc"], "x", settings, whose))
    return out


# --- the deploy files ------------------------------------------------------------------


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


def _workload_env(doc: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for container in doc["spec"]["template"]["spec"]["containers"]:
        env += container.get("env", [])
    return env


def runs_with(doc: dict[str, Any]) -> Settings:
    """The settings a workload's members get: its inline env values over the defaults
    (values from Secrets or the downward API are left at the default)."""
    plain = {e["name"]: str(e["value"]) for e in _workload_env(doc) if "value" in e}
    return Settings.from_env(plain)


def _workloads() -> dict[Path, dict[str, Any]]:
    return {
        path: doc for path, doc in _manifests() if doc.get("kind") in ("Deployment", "StatefulSet")
    }


RUNS_WITH = "what deployment.yaml runs with (its env, else Settings' default)"


def _deployment() -> dict[str, Any]:
    (doc,) = [d for d in _workloads().values() if d["kind"] == "Deployment"]
    return doc


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_app_services() -> dict[str, dict[str, str]]:
    """compose.yaml's services built from this repository (the members and their
    one-shots), with their environment, ${VAR:-default} taken at its default."""
    config = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for name, service in config["services"].items():
        if "build" not in service:
            continue
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        out[name] = {
            k: _INTERPOLATION.sub(lambda m: m.group(2) or "", str(v)) for k, v in env.items()
        }
    return out


# --- the tests -------------------------------------------------------------------------


def readme_table() -> list[tuple[int, str, str]]:
    """The README's configuration table as (line, variable, default cell) rows; a row
    for two variables ('`A` / `B`', '`1` / `2`') is two rows."""
    lines = README.read_text(encoding="utf-8").splitlines()
    header = lines.index("| variable | default | meaning |")
    rows: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines[header + 2 :], start=header + 3):
        if not line.startswith("|"):
            break
        variables, default = (cell.strip() for cell in line.strip("|").split(" | ")[:2])
        names = re.findall(rf"`({_NAME})`", variables)
        values = default.split(" / ") if len(names) > 1 else [default]
        assert len(values) == len(names), f"README.md:{number}: {len(names)} names, {values}"
        rows += [(number, n, v) for n, v in zip(names, values, strict=True)]
    return rows


def _cell_value(cell: str) -> str:
    """A default cell's value: its first `code`, or 'empty'."""
    if cell.startswith("empty"):
        return "empty"
    match = re.search(r"`[^`]*`", cell)
    return match.group(0) if match else cell


def test_the_readme_table_has_every_setting_with_its_default() -> None:
    rows = readme_table()
    names = [name for _, name, _ in rows]
    assert not [n for n in names if n not in FIELDS], "README.md table: not settings"
    missing = sorted(set(FIELDS) - set(names))
    assert not missing, f"README.md's configuration table has no row for {missing}"
    claims = [Claim(README, line, (name,), _cell_value(cell)) for line, name, cell in rows]
    assert not problems(claims), "\n".join(problems(claims))


def _prose_files() -> list[Prose]:
    docs = [markdown(p) for p in [README, *sorted((ROOT / "docs").glob("*.md")), DEPLOY_README]]
    return [*docs, yaml_comments(COMPOSE)]


@pytest.mark.parametrize("prose", _prose_files(), ids=lambda p: str(p.path.relative_to(ROOT)))
def test_defaults_stated_in_prose_are_the_settings_defaults(prose: Prose) -> None:
    claims, unknown = default_claims(prose)
    if prose.path.name in BARE_MEANS_DEFAULT:
        claims += running_claims(prose, DEFAULTS, "Settings' default")
    assert not unknown, f"a default given to names that are not settings: {unknown}"
    assert not problems(claims), "\n".join(problems(claims))


def test_the_files_that_state_defaults_are_read() -> None:
    """The forms above still find what these files state (else the test checks nothing)."""
    found = {p.path.name: default_claims(p)[0] for p in _prose_files()}
    for name, least in {"operations.md": 15, "compose.yaml": 2, "design.md": 2}.items():
        assert len(found[name]) >= least, f"{name}: {len(found[name])} defaults found"
    stated = {c.names for c in found["operations.md"]}
    for setting in ("LOG_LEVEL", "LOG_FORMAT", "METRICS_HOST", "KAFKA_SESSION_TIMEOUT_S"):
        assert (setting,) in stated, f"docs/operations.md: {setting}'s default not found"
    assert ("LEASE_TTL_S", "KAFKA_REQUEST_TIMEOUT_S") in stated


def test_alert_comments_state_the_defaults() -> None:
    claims, unknown = default_claims(yaml_comments(ALERTS), assigned=True)
    assert not unknown, f"a default given to names that are not settings: {unknown}"
    stated = {c.names for c in claims}
    for names in [("BATCH_MAX_RECORDS",), ("LIVENESS_TIMEOUT_S",)]:
        assert names in stated, f"deploy/alerts.yml: no default of {names} found"
    assert ("LEASE_TTL_S", "KAFKA_REQUEST_TIMEOUT_S") in stated
    assert not problems(claims), "\n".join(problems(claims))


def _rules() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {r["alert"]: r for group in config["groups"] for r in group["rules"]}


def _threshold(rule: dict[str, Any], pattern: str) -> float:
    match = re.search(pattern, rule["expr"])
    assert match, f"deploy/alerts.yml: {rule['alert']}'s expr has no {pattern!r}"
    return float(match.group(1))


def test_alert_thresholds_follow_the_defaults() -> None:
    rules = _rules()
    stalled = rules["WamidGuardPollLoopStalled"]
    limit = _threshold(stalled, r"time\(\) - wamid_guard_last_poll_timestamp_seconds > (\d+)")
    # The same condition as /healthz failing: LIVENESS_TIMEOUT_S.
    assert limit == DEFAULTS.liveness_timeout_s, (
        f"deploy/alerts.yml: WamidGuardPollLoopStalled fires after {limit:g} s, "
        f"LIVENESS_TIMEOUT_S's default is {DEFAULTS.liveness_timeout_s:g}"
    )
    summary = stalled["annotations"]["summary"]
    assert f"over {limit:g} s" in summary, f"deploy/alerts.yml: {summary!r}"
    # "Healthy lag stays within a batch or two (BATCH_MAX_RECORDS)".
    lag = _threshold(rules["WamidGuardLagHigh"], r"wamid_guard_consumer_lag\) > (\d+)")
    assert lag > 2 * DEFAULTS.batch_max_records, (
        f"deploy/alerts.yml: WamidGuardLagHigh at {lag:g} is within two batches of "
        f"BATCH_MAX_RECORDS' default {DEFAULTS.batch_max_records}"
    )
    # A row left by a crash is relayed after LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S.
    age = _threshold(rules["WamidGuardOutboxStuck"], r"oldest_age_seconds\) > (\d+)")
    assert age > DEFAULTS.lease_ttl_s + DEFAULTS.kafka_request_timeout_s


def test_deploy_readme_states_the_lag_alert_and_what_the_deployment_runs_with() -> None:
    deployment = _deployment()
    claims = running_claims(markdown(DEPLOY_README), runs_with(deployment), RUNS_WITH)
    stated = {c.names for c in claims}
    assert ("BATCH_MAX_RECORDS",) in stated, "deploy/README.md: no batch size found"
    assert ("LIVENESS_TIMEOUT_S",) in stated, "deploy/README.md: no liveness timeout found"
    assert not problems(claims), "\n".join(problems(claims))
    text = DEPLOY_README.read_text(encoding="utf-8")
    match = re.search(rf"`WamidGuardLagHigh` alert \(({_NUMBER}) per partition", text)
    assert match, "deploy/README.md: the WamidGuardLagHigh threshold is not stated"
    lag = _threshold(_rules()["WamidGuardLagHigh"], r"wamid_guard_consumer_lag\) > (\d+)")
    assert _number(match.group(1)) == lag, (
        f"deploy/README.md: WamidGuardLagHigh documented at {match.group(1)}, "
        f"deploy/alerts.yml has {lag:g}"
    )


def test_manifest_comments_state_what_the_workloads_run_with() -> None:
    workloads = _workloads()
    deployment = runs_with(_deployment())
    claims: list[Claim] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        doc = workloads.get(path)
        settings = runs_with(doc) if doc else deployment
        whose = RUNS_WITH.replace("deployment.yaml", path.name if doc else "deployment.yaml")
        claims += running_claims(yaml_comments(path), settings, whose)
    assert len(claims) >= 3, f"the manifests' comments: {len(claims)} values found"
    assert not problems(claims), "\n".join(problems(claims))


def _env_names() -> Iterator[tuple[str, str, dict[str, str]]]:
    """(file, where, env) of every member environment in compose.yaml and the manifests."""
    for service, env in compose_app_services().items():
        yield "compose.yaml", f"service {service}", env
    for path, doc in _workloads().items():
        env = {e["name"]: str(e.get("value", "")) for e in _workload_env(doc)}
        yield f"deploy/kubernetes/{path.name}", doc["kind"], env


def test_member_environments_name_only_settings() -> None:
    where = list(_env_names())
    files = {file for file, _, _ in where}
    assert files == {"compose.yaml", *(f"deploy/kubernetes/{p.name}" for p in _workloads())}
    assert len([w for f, w, _ in where if f == "compose.yaml"]) >= 3, "compose: app services"
    for file, place, env in where:
        unknown = sorted(set(env) - set(FIELDS))
        assert not unknown, f"{file}, {place}: not settings (silently ignored): {unknown}"


def test_compose_values_are_accepted() -> None:
    for service, env in compose_app_services().items():
        settings = Settings.from_env(env)  # a bad value raises ConfigError naming it
        assert settings.consumer_group == env["CONSUMER_GROUP"], service


# --- the checks catch drift ------------------------------------------------------------


def _stated(text: str, *, assigned: bool = False) -> list[Claim]:
    path = ROOT / "docs" / "operations.md"
    prose = Prose.of(path, list(enumerate(text.splitlines(), start=1)))
    return default_claims(prose, assigned=assigned)[0]


D = DEFAULTS


@pytest.mark.parametrize(
    ("text", "setting", "value"),
    [
        (f"`LEASE_TTL_S` (default {D.lease_ttl_s:g} s)", "LEASE_TTL_S", f"{D.lease_ttl_s:g} s"),
        (
            f"(LIVENESS_TIMEOUT_S, default {D.liveness_timeout_s:g} s), which",
            "LIVENESS_TIMEOUT_S",
            f"{D.liveness_timeout_s:g} s",
        ),
        (
            f"**`BATCH_MAX_RECORDS` defaults to {D.batch_max_records}**",
            "BATCH_MAX_RECORDS",
            f"{D.batch_max_records}",
        ),
        (
            f"`DONE_TTL_S` ({D.done_ttl_s / 86400:g} days by default)",
            "DONE_TTL_S",
            f"{D.done_ttl_s / 86400:g} days",
        ),
        (
            f"its timeout\n`DB_TIMEOUT_S` is {D.db_timeout_s:g} s by default",
            "DB_TIMEOUT_S",
            f"{D.db_timeout_s:g} s",
        ),
        (
            "`KAFKA_GROUP_INSTANCE_ID` (default empty: dynamic)",
            "KAFKA_GROUP_INSTANCE_ID",
            "empty",
        ),
        (
            f"`METRICS_HOST=0.0.0.0` (the default `{D.metrics_host}` answers",
            "METRICS_HOST",
            f"`{D.metrics_host}`",
        ),
        (
            f"`LOG_LEVEL` is `NOISY`, `{D.log_level}` (default), `QUIET`",
            "LOG_LEVEL",
            f"`{D.log_level}`",
        ),
    ],
)
def test_each_form_is_read(text: str, setting: str, value: str) -> None:
    (claim,) = _stated(text)
    assert (claim.names, claim.raw) == ((setting,), value)
    assert claim.problem() is None


@pytest.mark.parametrize(
    ("text", "assigned", "expected"),
    [
        (
            f"`KAFKA_SESSION_TIMEOUT_S` (default {D.kafka_session_timeout_s + 1:g} s)",
            False,
            "KAFKA_SESSION_TIMEOUT_S",
        ),
        (
            f"`MAX_RECORD_BYTES` defaults to {D.max_record_bytes // 1024 + 1} KiB",
            False,
            "MAX_RECORD_BYTES",
        ),
        (
            f"`STATUS_EVENTS` (default `{'off' if D.status_events else 'on'}`)",
            False,
            "STATUS_EVENTS",
        ),
        (
            f"`REDIS_MODE` (default `{'standalone' if D.redis_mode == 'cluster' else 'cluster'}`)",
            False,
            "REDIS_MODE",
        ),
        (
            f"`LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S`, "
            f"{D.lease_ttl_s + D.kafka_request_timeout_s + 1:g} s by default",
            False,
            "LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S",
        ),
        (
            f"the defaults (BATCH_MAX_RECORDS={D.batch_max_records + 1}, "
            f"LIVENESS_TIMEOUT_S={D.liveness_timeout_s:g})",
            True,
            "BATCH_MAX_RECORDS",
        ),
        (
            f"`METRICS_HOST:METRICS_PORT` (default `{D.metrics_host}:{D.metrics_port + 1}`)",
            False,
            "METRICS_PORT",
        ),
    ],
)
def test_a_changed_default_fails_naming_file_setting_and_values(
    text: str, assigned: bool, expected: str
) -> None:
    found = problems(_stated(text, assigned=assigned))
    assert len(found) == 1, found
    assert found[0].startswith(f"docs/operations.md:1: {expected} documented as"), found[0]
    assert "but Settings' default is" in found[0]


def test_a_typo_in_a_documented_name_fails() -> None:
    prose = Prose.of(ROOT / "compose.yaml", [(7, "(LIVENES_TIMEOUT_S, default 120 s)")])
    assert default_claims(prose)[1] == ["compose.yaml:7: LIVENES_TIMEOUT_S"]


def test_a_term_of_a_sum_is_not_read_alone() -> None:
    (claim,) = _stated("`LEASE_TTL_S + KAFKA_REQUEST_TIMEOUT_S` (60 s by default)")
    assert claim.names == ("LEASE_TTL_S", "KAFKA_REQUEST_TIMEOUT_S")
