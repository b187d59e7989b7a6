"""The Kubernetes manifests of deploy/kubernetes/, validated offline.

Core objects (Deployment, StatefulSet, Service) go through `kubernetes-validate` in strict
mode against Kubernetes KUBERNETES_VERSION: the OpenAPI schemas it ships, with unknown
fields refused, so a typo'd field fails.

The KEDA ScaledObject has no such validator offline: KEDA's CRD (whose OpenAPI schema the
API server would apply) is not on PyPI as YAML or JSON; the one package that carries
KEDA's types, cloudcoil-models-keda, has pydantic models generated from it that ignore
unknown fields and take a trigger's metadata as any string map, so they would catch less
than the schema below. SCALED_OBJECT_SCHEMA is our own: it covers the fields
scaledobject.yaml uses, with the types KEDA's CRD gives them (trigger metadata values are
strings) and the kafka scaler's metadata names, and refuses any other field. It is not
KEDA's schema: a field KEDA accepts but we do not use fails here until it is added.

Both are checked against the settings too: every env name is one consumer.settings reads,
the ScaledObject's group, topic and offset policy are the members'.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumer.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"
# The inbound partitions the manifests are written for (`topics create --partitions 12`).
INBOUND_PARTITIONS = 12

_STR = {"type": "string"}
_INT = {"type": "integer"}

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": _STR,
                "namespace": _STR,
                "labels": {"type": "object", "additionalProperties": _STR},
                "annotations": {"type": "object", "additionalProperties": _STR},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _STR,
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "scaleUp": {"$ref": "#/$defs/scalingRules"},
                                        "scaleDown": {"$ref": "#/$defs/scalingRules"},
                                    },
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "kafka"},
                            "name": _STR,
                            "metadata": {"$ref": "#/$defs/kafkaMetadata"},
                        },
                    },
                },
            },
        },
    },
    "$defs": {
        "scalingRules": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "stabilizationWindowSeconds": {"type": "integer", "minimum": 0},
                "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
                "policies": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "value", "periodSeconds"],
                        "properties": {
                            "type": {"enum": ["Pods", "Percent"]},
                            "value": _INT,
                            "periodSeconds": _INT,
                        },
                    },
                },
            },
        },
        # The kafka scaler's metadata: every value a string (the CRD's map of strings).
        "kafkaMetadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
            "properties": {
                "bootstrapServers": _STR,
                "consumerGroup": _STR,
                "topic": _STR,
                "lagThreshold": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                "activationLagThreshold": {"type": "string", "pattern": "^[0-9]+$"},
                "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                "allowIdleConsumers": {"enum": ["true", "false"]},
                "excludePersistentLag": {"enum": ["true", "false"]},
                "scaleToZeroOnInvalidOffset": {"enum": ["true", "false"]},
                "limitToPartitionsWithLag": {"enum": ["true", "false"]},
            },
        },
    },
}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


def _core() -> list[tuple[str, dict[str, Any]]]:
    return [(n, d) for n, d in _documents() if d["apiVersion"] != "keda.sh/v1alpha1"]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _documents() if d["kind"] == kind]
    return doc


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(workload)["env"]}


def _workloads() -> list[dict[str, Any]]:
    return [d for _, d in _documents() if d["kind"] in ("Deployment", "StatefulSet")]


def test_the_manifests_are_there() -> None:
    kinds = sorted(d["kind"] for _, d in _documents())
    assert kinds == ["Deployment", "ScaledObject", "Service", "StatefulSet"]


@pytest.mark.parametrize(("name", "doc"), _core(), ids=lambda v: v if isinstance(v, str) else "")
def test_core_objects_are_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_typo_fails_kubernetes_validation() -> None:
    doc = copy.deepcopy(_one("Deployment"))
    _container(doc)["livenesProbe"] = _container(doc).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_scaled_object_fits_our_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCALED_OBJECT_SCHEMA)
    jsonschema.validate(_one("ScaledObject"), SCALED_OBJECT_SCHEMA)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda so: so["spec"].update(maxReplicas=3),  # not maxReplicaCount
        lambda so: so["spec"]["triggers"][0]["metadata"].update(lagTreshold="5000"),
        lambda so: so["spec"]["triggers"][0]["metadata"].update(allowIdleConsumers=False),
        lambda so: so["spec"]["triggers"][0].update(type="kafkaa"),
    ],
)
def test_a_spoilt_scaled_object_fails(spoil: Any) -> None:
    doc = copy.deepcopy(_one("ScaledObject"))
    spoil(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)


def test_env_names_are_settings() -> None:
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    for workload in _workloads():
        names = set(_env(workload))
        assert names <= known, f"{workload['kind']}: not settings: {names - known}"
        # Every value given inline is one the settings accept.
        plain = {n: e["value"] for n, e in _env(workload).items() if "value" in e}
        plain["DATABASE_URL"] = "postgresql+asyncpg://u@db/wamid"  # from the Secret
        if "KAFKA_GROUP_INSTANCE_ID" in names:
            plain["KAFKA_GROUP_INSTANCE_ID"] = "wamid-guard-0"  # the pod's name
        Settings.from_env(plain)


def test_probes_grace_and_port_follow_the_settings() -> None:
    for workload in _workloads():
        env = _env(workload)
        container = _container(workload)
        assert container["command"] == ["python", "-m", "consumer", "run"]
        assert env["METRICS_HOST"]["value"] == "0.0.0.0"  # noqa: S104 # the pod's address
        port = int(env["METRICS_PORT"]["value"])
        (declared,) = container["ports"]
        assert declared["containerPort"] == port
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in (port, declared["name"])
        grace = float(env["SHUTDOWN_GRACE_S"]["value"])
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 5
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]


def test_static_membership_takes_the_pod_name() -> None:
    env = _env(_one("StatefulSet"))
    ref = env["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert ref["fieldPath"] == "metadata.name"
    assert "KAFKA_GROUP_INSTANCE_ID" not in _env(_one("Deployment"))


def test_scaled_object_matches_the_members() -> None:
    so = _one("ScaledObject")
    deployment = _one("Deployment")
    env = {n: e["value"] for n, e in _env(deployment).items() if "value" in e}
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == env[env_name("consumer_group")]
    assert meta["topic"] == env[env_name("inbound_topic")]
    assert meta["bootstrapServers"] == env[env_name("kafka_bootstrap_servers")]
    # The members start a partition nobody committed at offset 0 (Source.start_at_committed).
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["allowIdleConsumers"] == "false"
    assert so["spec"]["maxReplicaCount"] == INBOUND_PARTITIONS
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    target = so["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # Above one member's working set at full speed (batches in flight x batch size).
    defaults = Settings()
    in_flight = defaults.max_inflight_batches * defaults.batch_max_records
    assert int(meta["lagThreshold"]) > in_flight
