"""deploy/k8s: validated offline against the Kubernetes schemas that kubernetes-validate ships, and
checked against the code (settings, commands, topics, consumer groups). Strimzi's, cert-manager's and
KEDA's custom resources have no schema there: Strimzi's and cert-manager's structure is checked by hand,
KEDA's ScaledObjects against a JSON schema of the fields used here (``SCALED_OBJECT_SCHEMA``, after
KEDA 2.x's CRD)."""

from __future__ import annotations

import importlib
import itertools
import os
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from shared.app import ALL_ROLES
from shared.kafka import all_topics
from shared.messaging import consumer_group
from shared.migrations import service_migrations
from shared.settings import KafkaSettings
from tests.unit.deploy import facts

pytestmark = pytest.mark.unit

KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships
STRIMZI = "kafka.strimzi.io/v1"
KEDA = "keda.sh/v1alpha1"

DOCS = facts.load_k8s()
KUSTOMIZATION = yaml.safe_load((facts.K8S_DIR / "kustomization.yaml").read_text())


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


DEPLOYMENTS = _of_kind("Deployment")
CONFIGMAPS = _of_kind("ConfigMap")
SECRETS = _of_kind("Secret")
K8S_SERVICES = _of_kind("Service")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _serves(deployment: dict[str, Any]) -> str:
    service = facts.served_service(_container(deployment)["args"])
    assert service is not None
    return service


def _roles(deployment: dict[str, Any]) -> set[str]:
    """The roles ``serve`` is given (``--role X`` or ``--role=X``; none: every role)."""
    args = _container(deployment)["args"]
    roles = {b for a, b in itertools.pairwise(args) if a == "--role"}
    roles |= {a.split("=", 1)[1] for a in args if a.startswith("--role=")}
    return set(ALL_ROLES) if not roles or "all" in roles else roles


@cache
def _consumed_topics(service: str) -> tuple[str, frozenset[str]] | None:
    """The consumer group and topics the service's consumer role reads, from its own bootstrap."""
    bootstrap = importlib.import_module(f"services.{service}.bootstrap")
    settings = bootstrap.load_settings()
    for loop in bootstrap.build(settings, frozenset({"consumer"})).loops:
        if loop.name == "consumer":
            consumer = loop.run.__self__
            return consumer_group(settings, service), frozenset(
                map(KafkaSettings().topic, consumer.handlers.topics)
            )
    return None


CONSUMING = [service for service in facts.SERVICES if _consumed_topics(service) is not None]
API = {_serves(d): d for d in DEPLOYMENTS.values() if "api" in _roles(d)}
"""The one Deployment per service that serves its API (and owns its Service)."""
CONSUMERS = {_serves(d): d for d in DEPLOYMENTS.values() if _roles(d) == {"consumer"}}
"""Consumer-only Deployments, scaled on lag."""


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds: its envFrom ConfigMaps and Secrets, then its env."""
    env: dict[str, str] = {}
    container = _container(deployment)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= CONFIGMAPS[source["configMapRef"]["name"]]["data"]
        else:
            env |= SECRETS[source["secretRef"]["name"]]["stringData"]
    env |= {e["name"]: e["value"] for e in container.get("env", [])}
    return env


SECRETS_DIR = "/etc/trialroute/secrets"


def _secret_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """The files of the pod's read-only ``secrets`` volume: path -> (Secret, key); key None for a
    Secret projected whole (each of its keys a file of that name)."""
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
    files: dict[str, tuple[str, str | None]] = {}
    for source in volume["projected"]["sources"]:
        secret = source["secret"]
        if "items" in secret:
            for item in secret["items"]:
                files[f"{SECRETS_DIR}/{item['path']}"] = (secret["name"], item["key"])
        else:
            files[f"{SECRETS_DIR}/*{secret['name']}"] = (secret["name"], None)
    return files


def _file_value(deployment: dict[str, Any], path: str) -> tuple[str, str]:
    """The Secret and key a ``<NAME>_FILE`` path of the pod reads."""
    files = _secret_files(deployment)
    if path in files:
        secret, key = files[path]
        assert key is not None
        return secret, key
    name = path.removeprefix(f"{SECRETS_DIR}/")
    whole = [s for s, k in files.values() if k is None and name in SECRETS.get(s, {}).get("stringData", {})]
    assert whole, f"{path}: no file of the secrets volume"
    return whole[0], name


def test_kustomization_lists_every_manifest() -> None:
    listed = set(facts.k8s_resource_files())
    on_disk = {p for p in facts.K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk
    assert KUSTOMIZATION["namespace"] == "trialroute"


@pytest.mark.parametrize(
    "doc",
    [
        d
        for d in DOCS
        if not d["apiVersion"].startswith(("kafka.strimzi.io/", "keda.sh/", "cert-manager.io/"))
    ],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_core_manifests_validate_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


def test_every_service_has_an_api_deployment_service_autoscaler_and_budget() -> None:
    assert sorted(API) == sorted(facts.SERVICES)
    assert len(API) + len(CONSUMERS) == len(DEPLOYMENTS), "each Deployment is an API or consumers"
    hpas, pdbs = _of_kind("HorizontalPodAutoscaler"), _of_kind("PodDisruptionBudget")
    for name, deployment in DEPLOYMENTS.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the replica count"
    for deployment in API.values():
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        port_names = {p["name"] for p in _container(deployment)["ports"]}
        service = K8S_SERVICES[name]
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
        # The Service must not also pick the consumer pods, which serve no API.
        for consumer in CONSUMERS.values():
            pod_labels = consumer["spec"]["template"]["metadata"]["labels"]
            assert not service["spec"]["selector"].items() <= pod_labels.items(), name
        hpa = hpas[name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}
        # Two replicas let a drain keep one.
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        pdb = pdbs[name]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    for deployment in CONSUMERS.values():
        name = deployment["metadata"]["name"]
        assert name not in hpa_targets, f"{name}: KEDA makes its HorizontalPodAutoscaler; two would fight"
        assert name not in K8S_SERVICES
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pdb = pdbs[name]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # KEDA's minimum is one consumer: minAvailable 1 would block every drain.
        assert pdb["spec"] == pdb["spec"] | {"maxUnavailable": 1} and "minAvailable" not in pdb["spec"]


def test_consumers_run_apart_from_the_api_and_relays_run_somewhere() -> None:
    assert sorted(CONSUMERS) == sorted(CONSUMING)
    for service in CONSUMING:
        assert "consumer" not in _roles(API[service]), f"{service}: consumers scale apart from the API"
        if _has_outbox(service):
            assert "relay" in _roles(API[service]), f"{service}: its outbox needs a relay"


def _has_outbox(service: str) -> bool:
    """Whether the service publishes (its store has an outbox; insights, a read model, has none)."""
    return any(table.name == "outbox" for table in service_migrations(service).tables)


@pytest.mark.parametrize("service", CONSUMING)
def test_consumer_pods_are_the_api_pods_with_another_role(service: str) -> None:
    """Same image, settings, init container, hardening, probes, resources and metrics port and
    annotations: only the name, the labels and ``--role`` differ, so an edit to one cannot miss the other."""
    api, consumer = API[service], CONSUMERS[service]
    api_name, consumer_name = api["metadata"]["name"], consumer["metadata"]["name"]
    assert consumer_name == f"{api_name}-consumer"

    def pod(deployment: dict[str, Any], name: str, component: str) -> dict[str, Any]:
        template = deployment["spec"]["template"]
        spec = template["spec"]
        (container,) = spec["containers"]
        (spread,) = spec["topologySpreadConstraints"]
        assert container["name"] == name
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == name
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == component
        assert spread["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        args = [a for a in container["args"] if a != "--role" and a not in ALL_ROLES]
        return {
            "annotations": template["metadata"]["annotations"],
            "spec": spec
            | {
                "containers": [container | {"name": None, "args": args}],
                "topologySpreadConstraints": [spread | {"labelSelector": None}],
            },
        }

    assert pod(consumer, consumer_name, "consumer") == pod(api, api_name, "api")
    assert consumer["spec"]["strategy"] == api["spec"]["strategy"]


# --- KEDA -------------------------------------------------------------------------------------------

_STRING = {"type": "string", "minLength": 1}
_INT_STRING = {"type": "string", "pattern": "^[1-9][0-9]*$"}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": KEDA},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": _STRING, "labels": {"type": "object"}, "annotations": {"type": "object"}},
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "name": _STRING,
                        "envSourceContainerName": _STRING,
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": _STRING, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "kafka"},
                            "name": _STRING,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object"},
                            # KEDA reads trigger metadata as strings: a YAML number here is refused.
                            "metadata": {
                                "type": "object",
                                "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
                                "additionalProperties": {"type": "string"},
                                "properties": {
                                    "lagThreshold": _INT_STRING,
                                    "activationLagThreshold": {"type": "string", "pattern": "^[0-9]+$"},
                                    "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                                    "allowIdleConsumers": {"enum": ["true", "false"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
SCALED_OBJECTS = _of_kind("ScaledObject")


@pytest.mark.parametrize("name", sorted(SCALED_OBJECTS))
def test_scaled_objects_match_the_schema(name: str) -> None:
    jsonschema.validate(SCALED_OBJECTS[name], SCALED_OBJECT_SCHEMA)


def test_the_schema_refuses_what_keda_would() -> None:
    (good, *_) = SCALED_OBJECTS.values()
    for bad in (
        good | {"apiVersion": "keda.sh/v1"},
        good | {"spec": good["spec"] | {"maxReplicas": 6}},  # an HPA field, not KEDA's
        good | {"spec": good["spec"] | {"triggers": [{"type": "kafka", "metadata": {"lagThreshold": 20}}]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCALED_OBJECT_SCHEMA)


@pytest.mark.parametrize("service", CONSUMING)
def test_each_consumer_group_scales_on_the_lag_of_its_topics(service: str) -> None:
    deployment = CONSUMERS[service]
    name = deployment["metadata"]["name"]
    by_target = {so["spec"]["scaleTargetRef"]["name"]: so for so in SCALED_OBJECTS.values()}
    scaled = by_target[name]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == (
        "apps/v1",
        "Deployment",
    )
    # Beyond a topic's partitions a consumer idles on it: the partition count caps the group.
    assert scaled["spec"]["minReplicaCount"] == 1
    assert scaled["spec"]["maxReplicaCount"] == KafkaSettings().partitions == 6
    consumed = _consumed_topics(service)
    assert consumed is not None
    group, topics = consumed
    env = _env(deployment)
    triggers = [t["metadata"] for t in scaled["spec"]["triggers"]]
    assert {t["topic"] for t in triggers} == topics and len(triggers) == len(topics)
    for trigger in triggers:
        assert trigger["consumerGroup"] == group
        assert trigger["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert trigger.get("offsetResetPolicy", "latest") == "earliest"  # as shared/kafka.py's consumers


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployments_run_a_real_trialroute_command_from_the_one_image(name: str) -> None:
    container = _container(DEPLOYMENTS[name])
    assert "command" not in container, "the image's entrypoint is trialroute"
    facts.check_trialroute_command(container["args"])
    assert container["image"] in {image["name"] for image in KUSTOMIZATION["images"]}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_pod_migrates_its_store_first_with_the_service_s_own_settings(name: str) -> None:
    """The service refuses a store behind its code: the init container brings it to the image's head,
    in consumer pods too (they may start first)."""
    deployment = DEPLOYMENTS[name]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["migrate", _serves(deployment)]
    facts.check_trialroute_command(init["args"])
    assert init["image"] == _container(deployment)["image"]
    assert init["envFrom"] == _container(deployment)["envFrom"]
    security = init["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployments_are_hardened(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    service = _serves(deployment)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        # The schema types quantities as int-or-string; the API server also wants requests <= limits.
        assert _quantity(resources["requests"][resource]) <= _quantity(resources["limits"][resource])
    # The only writable places: emptyDirs at /tmp and, for the site router, its runtime directory; the
    # one other volume is the secrets, read-only.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    read_only = {m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")}
    assert read_only == {SECRETS_DIR}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m["mountPath"] not in read_only}
    assert set(mounts.values()) <= empty_dirs
    assert "/tmp" in mounts
    if service == "site_router":
        runtime_dir = _env(deployment).get(
            "SITE_ROUTER_RUNTIME_DIR", facts.dockerfile_env()["SITE_ROUTER_RUNTIME_DIR"]
        )
        assert any(runtime_dir.startswith(path + "/") for path in mounts)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_readiness_readyz_liveness_healthz(name: str) -> None:
    container = _container(DEPLOYMENTS[name])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["https"] == int(facts.dockerfile_env()["AUTH_PORT"])
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"]["path"] == path, probe
        assert container[probe]["httpGet"]["port"] == "https", probe
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_metrics_on_their_own_port_and_no_docs_in_production(name: str) -> None:
    """Only the API port is in the Service; /metrics is on the pod's metrics port, for Prometheus."""
    deployment = DEPLOYMENTS[name]
    service = _serves(deployment)
    prefix = facts.settings_class(service).model_config["env_prefix"]
    env = _env(deployment)
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"https", "metrics"}
    assert ports["metrics"] == int(env[f"{prefix}METRICS_PORT"])
    assert env[f"{prefix}DOCS_ENABLED"] == "false"
    assert env[f"{prefix}ENVIRONMENT"] == "production"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    if deployment is API.get(service):
        service_ports = K8S_SERVICES[name]["spec"]["ports"]
        assert [p["targetPort"] for p in service_ports] == ["https"]
    else:
        assert name not in K8S_SERVICES, "consumer pods serve no API"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_environment_is_read_by_the_service(name: str) -> None:
    service = _serves(DEPLOYMENTS[name])
    env = _env(DEPLOYMENTS[name])
    unknown = set(env) - facts.env_read_by(service)
    assert not unknown, f"{service} is given variables its settings do not read: {sorted(unknown)}"
    given = set(env) | set(facts.dockerfile_env())
    missing = {var for var in facts.devstack_env(service) if not {var, var + "_FILE"} & given}
    assert not missing, f"{service} lacks {sorted(missing)} (or their _FILE)"


def test_every_configmap_and_secret_is_used_and_read() -> None:
    """ConfigMaps are the environment; Secrets are never in it, only files of the read-only volume."""
    containers = [
        c
        for d in DEPLOYMENTS.values()
        for c in [_container(d), *d["spec"]["template"]["spec"]["initContainers"]]
    ]
    assert all("secretRef" not in source for c in containers for source in c.get("envFrom", []))
    assert all("valueFrom" not in e for c in containers for e in c.get("env", []))
    used = {source["configMapRef"]["name"] for c in containers for source in c.get("envFrom", [])}
    assert used == set(CONFIGMAPS)
    for doc in CONFIGMAPS.values():
        assert set(doc["data"]) <= facts.env_read_by(None), doc["metadata"]["name"]
    mounted = {secret for d in DEPLOYMENTS.values() for secret, _ in _secret_files(d).values()}
    assert set(SECRETS) <= mounted
    for name, doc in SECRETS.items():
        if name.endswith("-secrets"):  # files named after the variables whose _FILE names them
            assert set(doc["stringData"]) <= facts.env_read_by(None), name


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_every_file_setting_names_a_file_of_the_secrets_volume(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    env = _env(deployment)
    service = _serves(deployment)
    paths = {var: path for var, path in env.items() if var.endswith(("_FILE", "CERTFILE", "KEYFILE"))}
    if service == "auth":
        del paths["KAFKA_CA_FILE"]  # shared, and never read: auth uses no Kafka
    for var, path in paths.items():
        secret, key = _file_value(deployment, path)
        if secret in SECRETS:
            assert key in SECRETS[secret]["stringData"], f"{var}: {secret} has no {key}"
    # Every secret of the service's own Secret reaches it as a file.
    own = f"{service.replace('_', '-')}-secrets"
    for key in SECRETS[own]["stringData"]:
        assert env[f"{key}_FILE"] == f"{SECRETS_DIR}/{key}"


def test_secrets_in_the_repository_are_placeholders() -> None:
    for name, secret in SECRETS.items():
        assert "data" not in secret, f"{name}: only readable placeholders (stringData) belong here"
        for key, value in secret["stringData"].items():
            if key == "username":  # a Kafka user's name (the KafkaUser's), not a secret
                continue
            assert "CHANGE-ME" in value, f"{name}: {key} looks like a real secret"


def test_services_reach_auth_kafka_intake_and_postgres_by_their_service_names() -> None:
    env = {service: _env(d) for service, d in API.items()}
    issuer = env["auth"]["AUTH_ISSUER"]
    assert all(e["OAUTH_ISSUER"] == issuer for e in env.values())
    assert _resolves(issuer)
    assert _resolves(env["notifier"]["NOTIFIER_INTAKE_URL"])

    kafka = _of_kind("Kafka")
    (cluster,) = kafka
    listener_ports = {listener["port"] for listener in kafka[cluster]["spec"]["kafka"]["listeners"]}
    for e in env.values():
        host, port = e["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)
        assert host == f"{cluster}-kafka-bootstrap" and int(port) in listener_ports

    postgres = K8S_SERVICES["postgres"]
    assert postgres["spec"]["type"] == "ExternalName"
    databases = set()
    for service, e in env.items():
        secret, key = _file_value(API[service], e[f"{service.upper()}_DATABASE_URL_FILE"])
        url = make_url(SECRETS[secret]["stringData"][key])
        assert (url.drivername, url.host) == ("postgresql+asyncpg", "postgres")
        assert url.query["sslmode"] == "verify-full"
        assert _file_value(API[service], str(url.query["sslrootcert"])) == ("postgres-ca", "ca.crt")
        assert url.port in {p["port"] for p in postgres["spec"]["ports"]}
        databases.add(url.database)
    assert len(databases) == len(facts.SERVICES), "a service never reads another's database"


_SUFFIXES = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: str | int) -> float:
    """A Kubernetes resource quantity as a number; fails on anything else (e.g. `512MB`)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"not a resource quantity: {value!r}"
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def _resolves(url: str) -> bool:
    """True if the URL names an in-namespace Service on one of its ports."""
    parts = urlsplit(url)
    service = K8S_SERVICES.get(parts.hostname or "")
    return service is not None and parts.port in {p["port"] for p in service["spec"]["ports"]}


# --- Strimzi ----------------------------------------------------------------------------------------


def test_kafka_is_kraft_with_a_node_pool() -> None:
    kafkas, pools = _of_kind("Kafka"), _of_kind("KafkaNodePool")
    (cluster,) = kafkas
    spec = kafkas[cluster]["spec"]
    assert kafkas[cluster]["apiVersion"] == STRIMZI
    # kafka.strimzi.io/v1 has no ZooKeeper, and replicas and storage live in the node pools.
    assert "zookeeper" not in spec
    assert not {"replicas", "storage"} & set(spec["kafka"])
    assert spec["kafka"]["config"]["auto.create.topics.enable"] is False
    assert "topicOperator" in spec["entityOperator"]
    assert pools
    roles = set()
    for pool in pools.values():
        assert pool["apiVersion"] == STRIMZI
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert pool["spec"]["replicas"] >= 1
        assert pool["spec"]["storage"]["type"] in {"jbod", "persistent-claim", "ephemeral"}
        roles |= set(pool["spec"]["roles"])
    assert roles == {"controller", "broker"}


def test_every_topic_and_dead_letter_topic_is_a_kafka_topic() -> None:
    topics = _of_kind("KafkaTopic")
    (cluster,) = _of_kind("Kafka")
    brokers = sum(
        p["spec"]["replicas"] for p in _of_kind("KafkaNodePool").values() if "broker" in p["spec"]["roles"]
    )
    names = {t["spec"].get("topicName", name) for name, t in topics.items()}
    assert names == set(all_topics())
    for name, topic in topics.items():
        assert topic["apiVersion"] == STRIMZI
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), f"{name}: not a valid resource name"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert topic["spec"]["partitions"] == KafkaSettings().partitions == 6
        assert 1 <= topic["spec"]["replicas"] <= brokers


# --- encrypted and authenticated links ------------------------------------------------------------------


def test_nothing_runs_over_plain_http_and_authlib_is_never_told_to_allow_it() -> None:
    for name, deployment in DEPLOYMENTS.items():
        env = _env(deployment)
        assert "AUTHLIB_INSECURE_TRANSPORT" not in env, name
        service = _serves(deployment)
        prefix = facts.settings_class(service).model_config["env_prefix"]
        assert env[f"{prefix}SSL_CERTFILE"] == f"{SECRETS_DIR}/tls/tls.crt", name
        assert env[f"{prefix}SSL_KEYFILE"] == f"{SECRETS_DIR}/tls/tls.key", name
        assert env["TLS_CA_FILE"] == f"{SECRETS_DIR}/tls/ca.crt"
        assert _secret_files(deployment)[f"{SECRETS_DIR}/tls/tls.crt"] == (
            f"{service.replace('_', '-')}-tls",
            "tls.crt",
        )
        for var, value in env.items():
            assert not str(value).startswith("http://"), f"{name}: {var} is plain HTTP"
    assert "AUTHLIB_INSECURE_TRANSPORT" not in "".join(p.read_text() for p in facts.K8S_DIR.rglob("*.yaml"))


def test_every_service_has_a_certificate_for_its_service_names() -> None:
    certificates = {c["spec"]["secretName"]: c for c in _of_kind("Certificate").values()}
    (issuer,) = _of_kind("Issuer")
    for name, service in K8S_SERVICES.items():
        if name == "postgres":
            continue
        certificate = certificates[f"{name}-tls"]
        assert name in certificate["spec"]["dnsNames"]
        assert f"{name}.trialroute.svc" in certificate["spec"]["dnsNames"]
        assert certificate["spec"]["issuerRef"] == {"kind": "Issuer", "name": issuer}
        assert [p["port"] for p in service["spec"]["ports"]] == [8000]


def test_kafka_is_reached_over_tls_with_a_scram_user_per_service() -> None:
    (cluster,) = _of_kind("Kafka").values()
    (listener,) = cluster["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"] == {"type": "scram-sha-512"}
    users = _of_kind("KafkaUser")
    for deployment in DEPLOYMENTS.values():
        env = _env(deployment)
        assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-512")
        service = _serves(deployment)
        if service == "auth":  # no Kafka: the shared KAFKA_* are never used
            assert "KAFKA_PASSWORD_FILE" not in env
            continue
        assert _file_value(deployment, env["KAFKA_CA_FILE"]) == (
            f"{cluster['metadata']['name']}-cluster-ca-cert",
            "ca.crt",
        )
        secret, _ = _file_value(deployment, env["KAFKA_PASSWORD_FILE"])
        username = SECRETS[secret]["stringData"]["username"]
        assert _file_value(deployment, env["KAFKA_USERNAME_FILE"]) == (secret, "username")
        user = users[username]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"] == {
            "name": secret,
            "key": "password",
        }


def test_keda_reads_the_lag_as_the_service_s_user_over_tls() -> None:
    authentications = _of_kind("TriggerAuthentication")
    for name, scaled in SCALED_OBJECTS.items():
        for trigger in scaled["spec"]["triggers"]:
            assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
            refs = {
                r["parameter"]: (r["name"], r["key"])
                for r in authentications[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            }
            env = _env(DEPLOYMENTS[name])
            secret, _ = _file_value(DEPLOYMENTS[name], env["KAFKA_PASSWORD_FILE"])
            assert refs == {
                "username": (secret, "username"),
                "password": (secret, "password"),
                "ca": _file_value(DEPLOYMENTS[name], env["KAFKA_CA_FILE"]),
            }


@pytest.mark.parametrize("service", CONSUMING)
def test_each_kafka_user_may_do_what_its_service_does_and_no_more(service: str) -> None:
    """The cluster authorises (``simple``): a user reads and writes the event topics and their
    dead-letter topics, and commits its own group's offsets; it may not create topics nor use another
    group (so KEDA, logged in as the same user, sees that group's lag)."""
    (cluster,) = _of_kind("Kafka").values()
    assert cluster["spec"]["kafka"]["authorization"] == {"type": "simple"}
    deployment = CONSUMERS[service]
    secret, _ = _file_value(deployment, _env(deployment)["KAFKA_PASSWORD_FILE"])
    user = _of_kind("KafkaUser")[SECRETS[secret]["stringData"]["username"]]
    acls = user["spec"]["authorization"]["acls"]
    group, topics = _consumed_topics(service) or ("", frozenset())
    granted: dict[tuple[str, str], set[str]] = {}
    for acl in acls:
        resource = acl["resource"]
        for name in [*all_topics(), group, "trialroute-other"]:
            kind = "group" if name.startswith("trialroute-") else "topic"
            if resource["type"] != kind:
                continue
            matches = (
                name.startswith(resource["name"])
                if resource["patternType"] == "prefix"
                else name == resource["name"]
            )
            if matches:
                granted.setdefault((kind, name), set()).update(acl["operations"])
    for topic in all_topics():
        assert {"Describe", "Read", "Write"} <= granted[("topic", topic)], topic
    assert topics <= {name for kind, name in granted if kind == "topic"}
    assert {"Describe", "Read"} <= granted[("group", group)]
    assert ("group", "trialroute-other") not in granted
    assert not any("Create" in ops or "All" in ops for ops in granted.values())
    for scaled in SCALED_OBJECTS.values():
        if scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]:
            assert {t["metadata"]["consumerGroup"] for t in scaled["spec"]["triggers"]} == {group}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_the_pod_s_settings_load_and_pass_the_production_checks(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings class reads the pod's environment and its secrets volume (placeholders here) as
    the pod would, and accepts them in production: HTTPS, Kafka over SASL_SSL, verify-full."""
    deployment = DEPLOYMENTS[name]
    service = _serves(deployment)
    for var in [v for v in os.environ if v.startswith(("KAFKA_", "OAUTH_", "TLS_", "AUTH_"))]:
        monkeypatch.delenv(var)
    for var, value in _env(deployment).items():
        if value.startswith(SECRETS_DIR + "/") and not (service == "auth" and var == "KAFKA_CA_FILE"):
            local = tmp_path / value.removeprefix(SECRETS_DIR + "/")
            secret, key = _file_value(deployment, value)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(
                SECRETS.get(secret, {}).get("stringData", {}).get(key, "issued in the cluster") + "\n"
            )
            value = str(local)
        monkeypatch.setenv(var, value)
    settings = facts.settings_class(service)()
    assert settings.environment == "production"
    assert settings.serves_tls and settings.base_url.startswith("https://")
    assert settings.oauth.issuer.startswith("https://")
    assert make_url(settings.database_url).query["sslmode"] == "verify-full"
    if service != "auth":
        assert settings.kafka.uses_sasl and settings.kafka.uses_tls
        assert settings.kafka.password.get_secret_value() == "CHANGE-ME"
