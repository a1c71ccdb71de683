"""The container image and the Kubernetes manifests agree with the server they run.

Static checks: every YAML document under deploy/ is parsed; the two variants (deploy/base, one
replica with SQLite, and deploy/redis, several replicas sharing Redis) are rendered by a small
kustomize subset here (resources + strategic-merge patches), which a test compares with the real
``kubectl kustomize`` where kubectl is installed. The served port and the drain time come from the
real CLI parser fed the container's environment, and the probes' health service names are checked
against a real server. The Dockerfile is read by a line parser: no Docker engine is needed.
"""

from __future__ import annotations

import asyncio
import copy
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servewise import cli, server
from servewise.server import RunningServer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VARIANTS = {"base": DEPLOY / "base", "redis": DEPLOY / "redis"}

# Kinds and API versions served by current Kubernetes (1.29+), plus kustomize's own file.
VALID_KINDS = {
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}
SERVER_CONTAINER = "servewise"
# Measured (bench/results/rpc_latency.json and a run of the largest accepted Simulate requests):
# ~57 MiB RSS after start-up, up to ~125 MiB after large requests, 210 MiB peak for a 5M-request
# Simulate. The request covers typical use; the limit covers two such peaks at once.
START_RSS_MIB = 57
PEAK_RSS_MIB = 210
MIB_PER_UNIT = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Doc = dict[str, Any]


# --- YAML and a kustomize subset ------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _load(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


# Strategic-merge list keys for the lists the patches here touch; other lists are replaced.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "name"}
SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches"}


def _merge(base: Any, patch: Any, field_name: str = "") -> Any:
    """Strategic merge patch, the subset used here: maps merge, null deletes, keyed lists merge."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            assert not str(key).startswith("$"), f"unsupported directive {key} in a nested patch"
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field_name in MERGE_KEYS:
        merge_key = MERGE_KEYS[field_name]
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next(
                (i for i, old in enumerate(merged_list) if old[merge_key] == item[merge_key]), None
            )
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = _merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def render(directory: Path) -> list[Doc]:
    """What ``kubectl kustomize DIRECTORY`` prints (as objects; order aside), for this subset."""
    (kustomization,) = _load(directory / "kustomization.yaml")
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZATION_KEYS
    assert not unsupported, f"{directory}: the test's kustomize subset lacks {unsupported}"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        target = (directory / resource).resolve()
        docs.extend(render(target) if target.is_dir() else _load(target))
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only patches with a path are supported"
        (patch,) = _load(directory / entry["path"])
        matches = [i for i, doc in enumerate(docs) if _key(doc) == _key(patch)]
        assert len(matches) == 1, f"{entry['path']} must patch exactly one object"
        if patch.get("$patch") == "delete":
            del docs[matches[0]]
        else:
            docs[matches[0]] = _merge(docs[matches[0]], patch)
    keys = [_key(doc) for doc in docs]
    assert len(keys) == len(set(keys)), f"{directory}: duplicate objects {keys}"
    return docs


@dataclass
class Variant:
    """A rendered variant with its objects by kind."""

    name: str
    docs: list[Doc]
    by_kind: dict[str, list[Doc]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for doc in self.docs:
            self.by_kind.setdefault(doc["kind"], []).append(doc)

    def one(self, kind: str, name: str) -> Doc:
        (doc,) = (d for d in self.by_kind.get(kind, []) if d["metadata"]["name"] == name)
        return doc

    def server_deployment(self) -> Doc:
        (doc,) = (d for d in self.by_kind["Deployment"] if _server_container(d, required=False))
        return doc


def _server_container(deployment: Doc, *, required: bool = True) -> Doc | None:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] == SERVER_CONTAINER:
            return dict(container)
    assert not required, f"{deployment['metadata']['name']} has no {SERVER_CONTAINER} container"
    return None


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Variant:
    """Each deployment variant, rendered."""
    return Variant(request.param, render(VARIANTS[request.param]))


@pytest.fixture(scope="module")
def base() -> Variant:
    """deploy/base rendered: one replica, SQLite on a volume."""
    return Variant("base", render(VARIANTS["base"]))


@pytest.fixture(scope="module")
def redis_variant() -> Variant:
    """deploy/redis rendered: several replicas sharing Redis."""
    return Variant("redis", render(VARIANTS["redis"]))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _pod_labels(deployment: Doc) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def _mib(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i)", quantity)
    assert match, f"memory quantity {quantity!r}: use Ki, Mi or Gi"
    return float(match.group(1)) * MIB_PER_UNIT[match.group(2)]


def _cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- the Dockerfile -------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... stage: its base image, name and (instruction, arguments) lines."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == instruction]


def _dockerfile_lines() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        instruction, _, args = text.partition(" ")
        yield instruction.upper(), args.strip()
    assert not pending, "Dockerfile ends inside a continued line"


def _parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with ${ARG} in FROM resolved."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, args in _dockerfile_lines():
        if instruction == "FROM":
            words = args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            arg_name, _, default = args.partition("=")
            global_args[arg_name] = default
        else:
            stages[-1].instructions.append((instruction, args))
    return global_args, stages


def _env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def _exec_form(args: str) -> list[str]:
    words = yaml.safe_load(args)  # JSON arrays are YAML
    assert isinstance(words, list), f"not exec (JSON) form: {args}"
    return [str(word) for word in words]


@pytest.fixture(scope="module")
def final_stage() -> Stage:
    """The Dockerfile's last stage: what the image runs."""
    return _parse_dockerfile()[1][-1]


def _image_uid(stage: Stage) -> int:
    user = stage.all("USER")[-1]
    return int(user.partition(":")[0])


# --- what the server does with a container's settings ---------------------------------------


@dataclass
class Invocation:
    """The container's `servewise serve` as the real CLI parses it."""

    address: str
    metrics_address: str
    grace_s: float
    env: dict[str, str]

    @property
    def port(self) -> int:
        return server.parse_host_port(self.address)[1]


def _invocation(container: Doc, image: Stage) -> Invocation:
    """Parse the container's command line with the image's ENV overlaid by the container's env."""
    env = _env_of(image)
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: the server's settings are literal values here"
        env[item["name"]] = str(item["value"])
    command = container.get("command") or _exec_form(image.all("ENTRYPOINT")[-1])
    # Kubernetes: a container `command` drops the image's CMD unless `args` is given.
    args = container.get("args") or (
        [] if "command" in container else _exec_form(image.all("CMD")[-1])
    )
    assert command == ["servewise"], f"the container must run servewise, not {command}"
    with mock.patch.dict(os.environ, env, clear=True):
        parsed = cli.build_parser().parse_args([str(arg) for arg in args])
    assert parsed.command == "serve"
    return Invocation(parsed.address, parsed.metrics_address, parsed.grace_s, env)


def _container_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = (p["containerPort"] for p in container["ports"] if p.get("name") == port)
    return int(number)


def _probe_services(variant: Variant) -> dict[str, str]:
    container = _server_container(variant.server_deployment())
    assert container is not None
    return {
        kind: container[kind]["grpc"].get("service", "")
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }


def _all_probe_services() -> set[str]:
    return {
        service
        for directory in VARIANTS.values()
        for service in _probe_services(Variant("", render(directory))).values()
    }


# === YAML documents =========================================================================


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_document_has_a_current_kind(path: Path) -> None:
    """Every YAML document under deploy/ parses and is a kind current Kubernetes serves."""
    docs = _load(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
        assert (doc.get("apiVersion"), doc.get("kind")) in VALID_KINDS, (
            f"{path}: {doc.get('apiVersion')} {doc.get('kind')} is not a current kind"
        )
        if doc["kind"] != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_every_manifest_is_in_its_kustomization() -> None:
    """No YAML file under deploy/ is left out of its folder's kustomization.yaml."""
    for path in _yaml_files():
        if path.name == "kustomization.yaml":
            continue
        (kustomization,) = _load(path.parent / "kustomization.yaml")
        listed = set(kustomization.get("resources", [])) | {
            patch["path"] for patch in kustomization.get("patches", [])
        }
        assert path.name in listed, f"{path.relative_to(REPO)} is not in its kustomization.yaml"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    """The test's kustomize subset renders each variant exactly as `kubectl kustomize` does."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (the static checks above still ran)")
    result = subprocess.run(
        [kubectl, "kustomize", str(VARIANTS[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = {_key(doc): _sorted_keyed_lists(doc) for doc in yaml.safe_load_all(result.stdout)}
    rendered = {_key(doc): _sorted_keyed_lists(doc) for doc in render(VARIANTS[name])}
    assert rendered == expected


def _sorted_keyed_lists(value: Any, field_name: str = "") -> Any:
    """Keyed lists sorted by key: kustomize moves patched items first, the subset keeps them."""
    if isinstance(value, dict):
        return {key: _sorted_keyed_lists(item, key) for key, item in value.items()}
    if isinstance(value, list):
        items = [_sorted_keyed_lists(item) for item in value]
        if field_name in MERGE_KEYS:
            items.sort(key=lambda item: item[MERGE_KEYS[field_name]])
        return items
    return value


# === labels and selectors ===================================================================


def test_selectors_match_pod_labels(variant: Variant) -> None:
    """Deployment, Service, PDB, HPA and NetworkPolicy selectors all find the intended pods."""
    deployments = variant.by_kind["Deployment"]
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _matches(selector, _pod_labels(deployment))
        others = [d for d in deployments if d is not deployment]
        assert not any(_matches(selector, _pod_labels(d)) for d in others), "selectors overlap"
    for service in variant.by_kind["Service"]:
        selected = [d for d in deployments if _matches(service["spec"]["selector"], _pod_labels(d))]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
    (pdb,) = variant.by_kind["PodDisruptionBudget"]
    assert _matches(
        pdb["spec"]["selector"]["matchLabels"], _pod_labels(variant.server_deployment())
    )
    for hpa in variant.by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        variant.one("Deployment", target["name"])
    for policy in variant.by_kind.get("NetworkPolicy", []):
        assert any(
            _matches(policy["spec"]["podSelector"]["matchLabels"], _pod_labels(d))
            for d in deployments
        )
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert any(
                    _matches(peer["podSelector"]["matchLabels"], _pod_labels(d))
                    for d in deployments
                )


def test_volume_claims_exist(variant: Variant) -> None:
    """Every PersistentVolumeClaim a pod mounts is part of the same variant."""
    claims = {doc["metadata"]["name"] for doc in variant.by_kind.get("PersistentVolumeClaim", [])}
    for deployment in variant.by_kind["Deployment"]:
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


# === probes, ports, health ==================================================================


def test_probes_are_native_grpc_on_the_served_port(variant: Variant, final_stage: Stage) -> None:
    """Startup, liveness and readiness probes call gRPC health on the port the server binds."""
    container = _server_container(variant.server_deployment())
    assert container is not None
    served = _invocation(container, final_stage)
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[kind]
        handlers = set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"}
        assert handlers == {"grpc"}, f"{kind} must use the native grpc handler"
        assert probe["grpc"]["port"] == served.port, f"{kind} probes another port"
        assert probe.get("timeoutSeconds", 1) >= 1
    assert _container_port(container, "grpc") == served.port
    host, _ = server.parse_host_port(served.address)
    assert host in {"0.0.0.0", "::"}, "the kubelet probes the pod IP: bind every interface"


def test_services_route_to_the_served_port(variant: Variant, final_stage: Stage) -> None:
    """The Service's grpc port (appProtocol grpc) and metrics port reach the server's ports."""
    deployment = variant.server_deployment()
    container = _server_container(deployment)
    assert container is not None
    served = _invocation(container, final_stage)
    services = [
        s
        for s in variant.by_kind["Service"]
        if _matches(s["spec"]["selector"], _pod_labels(deployment))
    ]
    assert services
    for service in services:
        ports = {port["name"]: port for port in service["spec"]["ports"]}
        assert ports["grpc"]["appProtocol"] == "grpc"
        assert _container_port(container, ports["grpc"]["targetPort"]) == served.port
        if "metrics" in ports:
            metrics_port = server.parse_host_port(served.metrics_address)[1]
            assert _container_port(container, ports["metrics"]["targetPort"]) == metrics_port
    assert any(s["spec"].get("clusterIP") != "None" for s in services), "no ClusterIP Service"


def test_metrics_port_is_scraped(variant: Variant, final_stage: Stage) -> None:
    """The prometheus.io annotations name the port the metrics endpoint listens on."""
    deployment = variant.server_deployment()
    container = _server_container(deployment)
    assert container is not None
    served = _invocation(container, final_stage)
    metrics_port = server.parse_host_port(served.metrics_address)[1]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert _container_port(container, "metrics") == metrics_port


def test_readiness_asks_for_the_api_service(variant: Variant) -> None:
    """Readiness checks ServewiseService itself; liveness and startup check the whole server."""
    services = _probe_services(variant)
    assert services["readinessProbe"] == server.SERVICE_NAME
    assert services["livenessProbe"] == ""
    assert services["startupProbe"] == ""


@pytest.mark.parametrize("service", sorted(_all_probe_services()))
async def test_probe_services_are_registered(
    running_server: RunningServer, grpc_channel: grpc.aio.Channel, service: str
) -> None:
    """Each service a probe names is SERVING on the real server, NOT_SERVING once draining."""
    health = health_pb2_grpc.HealthStub(grpc_channel)
    request = health_pb2.HealthCheckRequest(service=service)
    assert (await health.Check(request, timeout=5)).status == SERVING
    await running_server.health.enter_graceful_shutdown()
    assert (await health.Check(request, timeout=5)).status == NOT_SERVING


# === resources, security, draining ==========================================================


def test_every_container_has_requests_and_limits(variant: Variant) -> None:
    """CPU and memory requests and limits are set on every container, requests <= limits."""
    for deployment in variant.by_kind["Deployment"]:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = resources["requests"][resource]
                limit = resources["limits"][resource]
                convert = _cpu if resource == "cpu" else _mib
                assert 0 < convert(request) <= convert(limit), (container["name"], resource)


def test_server_memory_fits_measured_rss(variant: Variant) -> None:
    """The request covers start-up RSS with headroom; the limit covers two peak requests at once."""
    container = _server_container(variant.server_deployment())
    assert container is not None
    assert _mib(container["resources"]["requests"]["memory"]) >= 2 * START_RSS_MIB
    assert _mib(container["resources"]["limits"]["memory"]) >= 2 * PEAK_RSS_MIB


def test_pods_run_locked_down(variant: Variant, final_stage: Stage) -> None:
    """Non-root (the image's UID), read-only root, no privilege escalation, no capabilities."""
    for deployment in variant.by_kind["Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "add" not in security["capabilities"]
    pod = variant.server_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == _image_uid(final_stage)


def test_server_has_writable_state_and_tmp(variant: Variant, final_stage: Stage) -> None:
    """With a read-only root, the SQLite directory and /tmp are mounted volumes."""
    container = _server_container(variant.server_deployment())
    assert container is not None
    served = _invocation(container, final_stage)
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    sqlite_dir = posixpath.dirname(served.env["SERVEWISE_SQLITE_PATH"])
    assert sqlite_dir in mounts, "SQLite's WAL files need a writable directory"
    assert "/tmp" in mounts  # noqa: S108 - a mount path, not a temporary file
    assert not any(mount.get("readOnly") for mount in mounts.values())
    pod = variant.server_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == _image_uid(final_stage)


def test_service_links_cannot_shadow_settings(variant: Variant) -> None:
    """Service links are off: a Service named servewise would inject SERVEWISE_PORT and friends."""
    pod = variant.server_deployment()["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_grace_period_outlasts_the_drain(variant: Variant, final_stage: Stage) -> None:
    """terminationGracePeriodSeconds exceeds the preStop sleep plus --grace-s."""
    deployment = variant.server_deployment()
    container = _server_container(deployment)
    assert container is not None
    served = _invocation(container, final_stage)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert served.grace_s > 0
    assert grace_period > pre_stop_s + served.grace_s
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= grace_period


def test_pdb_never_blocks_a_drain(variant: Variant) -> None:
    """The PDB leaves at least one pod evictable at the Deployment's replica count."""
    (pdb,) = variant.by_kind["PodDisruptionBudget"]
    replicas = variant.server_deployment()["spec"]["replicas"]
    spec = pdb["spec"]
    assert ("minAvailable" in spec) != ("maxUnavailable" in spec), "set exactly one of the two"
    if "minAvailable" in spec:
        assert spec["minAvailable"] < replicas
    else:
        assert spec["maxUnavailable"] >= 1


def test_image_tag_is_the_package_version(variant: Variant) -> None:
    """The manifests deploy the image tag of the package version in pyproject.toml."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    container = _server_container(variant.server_deployment())
    assert container is not None
    assert container["image"] == f"servewise:{version}"


# === the two variants =======================================================================


def test_base_is_one_replica_on_a_persistent_sqlite_volume(
    base: Variant, final_stage: Stage
) -> None:
    """deploy/base: one replica, SQLite on a PVC, Recreate so two pods never share the file."""
    deployment = base.server_deployment()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    container = _server_container(deployment)
    assert container is not None
    served = _invocation(container, final_stage)
    assert served.env.get("SERVEWISE_STORE", "sqlite") == "sqlite"
    sqlite_dir = posixpath.dirname(served.env["SERVEWISE_SQLITE_PATH"])
    (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == sqlite_dir)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert base.one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_redis_variant_shares_state_across_replicas(
    redis_variant: Variant, final_stage: Stage
) -> None:
    """deploy/redis: >1 replica, a Redis store URL naming a Service here, no per-pod SQLite."""
    deployment = redis_variant.server_deployment()
    replicas = deployment["spec"]["replicas"]
    assert replicas > 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = _server_container(deployment)
    assert container is not None
    store = urlsplit(_invocation(container, final_stage).env["SERVEWISE_STORE"])
    assert store.scheme in {"redis", "rediss"}
    redis_service = redis_variant.one("Service", store.hostname or "")
    assert store.port in {port["port"] for port in redis_service["spec"]["ports"]}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert not any("persistentVolumeClaim" in volume for volume in volumes)
    assert all(
        claim["metadata"]["name"] != "servewise-state"
        for claim in redis_variant.by_kind["PersistentVolumeClaim"]
    )
    (pdb,) = redis_variant.by_kind["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 2


def test_redis_variant_spreads_replicas(redis_variant: Variant) -> None:
    """Replicas spread over zones and nodes; the HPA never scales below the PDB's floor + 1."""
    deployment = redis_variant.server_deployment()
    pod = deployment["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in pod["topologySpreadConstraints"]:
        assert _matches(constraint["labelSelector"]["matchLabels"], _pod_labels(deployment))
    (hpa,) = redis_variant.by_kind["HorizontalPodAutoscaler"]
    (pdb,) = redis_variant.by_kind["PodDisruptionBudget"]
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_redis_keeps_its_data(redis_variant: Variant) -> None:
    """The in-cluster Redis writes an append-only file to a persistent volume."""
    redis = redis_variant.one("Deployment", "servewise-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == data_dir)
    volumes = {v["name"]: v for v in redis["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes[mount["name"]]
    assert redis["spec"]["strategy"]["type"] == "Recreate"


# === Dockerfile =============================================================================


def test_dockerfile_is_multi_stage_on_slim() -> None:
    """A named build stage, and a final stage on a slim Python image that copies only the venv."""
    _, stages = _parse_dockerfile()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name == "build"
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?(@sha256:[0-9a-f]+)?", final.image)
    copies = final.all("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"], "the final stage copies only the venv"


def test_final_stage_has_no_build_or_dev_tools(final_stage: Stage) -> None:
    """No compiler, no pip install, no dev extra, no dev dependency in the final stage."""
    text = " ".join(args for _, args in final_stage.instructions)
    for word in ("pip install", "apt-get install", "gcc", "[dev]"):
        assert word not in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        if name != project["name"]:  # the dev extra may pull in the package's other extras
            assert name not in text, f"dev dependency {name} in the final stage"


def test_build_stage_installs_runtime_dependencies_only() -> None:
    """The build stage installs project.dependencies and `.` (no extras), then drops pip."""
    _, stages = _parse_dockerfile()
    runs = " ".join(stages[0].all("RUN"))
    assert "['project']['dependencies']" in runs
    assert "pip install ." in runs
    assert "optional-dependencies" not in runs
    assert ".[" not in runs
    assert re.search(r"pip uninstall --yes setuptools pip", runs)


def test_image_runs_as_a_fixed_non_root_user(final_stage: Stage) -> None:
    """USER is the numeric UID created in the final stage, not root."""
    uid = _image_uid(final_stage)
    assert uid >= 1000
    runs = " ".join(final_stage.all("RUN"))
    assert f"--uid {uid}" in runs


def test_exposed_ports_are_the_default_ports(final_stage: Stage) -> None:
    """EXPOSE lists the gRPC and metrics ports of the image's settings and the server's defaults."""
    exposed = {
        int(port.split("/")[0]) for args in final_stage.all("EXPOSE") for port in args.split()
    }
    env = _env_of(final_stage)
    grpc_port = server.parse_host_port(env["SERVEWISE_ADDRESS"])[1]
    metrics_port = server.parse_host_port(env["SERVEWISE_METRICS_ADDRESS"])[1]
    assert exposed == {grpc_port, metrics_port}
    assert grpc_port == server.parse_host_port(server.DEFAULT_ADDRESS)[1]
    assert metrics_port == server.parse_host_port(server.DEFAULT_METRICS_ADDRESS)[1]


def test_image_settings_parse(final_stage: Stage) -> None:
    """The image's SERVEWISE_* environment is accepted by the real CLI."""
    served = _invocation({}, final_stage)
    assert served.grace_s == float(_env_of(final_stage)["SERVEWISE_GRACE_S"])
    assert served.address == _env_of(final_stage)["SERVEWISE_ADDRESS"]


def test_sqlite_directory_is_a_volume_owned_by_the_user(final_stage: Stage) -> None:
    """VOLUME is the directory of SERVEWISE_SQLITE_PATH, created and chowned before it."""
    sqlite_path = _env_of(final_stage)["SERVEWISE_SQLITE_PATH"]
    (volume,) = final_stage.all("VOLUME")
    assert _exec_form(volume) == [posixpath.dirname(sqlite_path)]
    runs = " ".join(final_stage.all("RUN"))
    uid = _image_uid(final_stage)
    assert f"chown {uid}:{uid} {posixpath.dirname(sqlite_path)}" in runs


def test_stop_signal_and_labels(final_stage: Stage) -> None:
    """STOPSIGNAL is SIGTERM (the server drains on it); OCI labels name the image and version."""
    assert final_stage.all("STOPSIGNAL") == ["SIGTERM"]
    labels = dict(
        word.split("=", 1) for args in final_stage.all("LABEL") for word in shlex.split(args)
    )
    assert labels["org.opencontainers.image.title"] == "servewise"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    (arg,) = (a for a in final_stage.all("ARG") if a.startswith("VERSION="))
    assert arg == f"VERSION={version}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"


def _healthcheck_command(final_stage: Stage) -> list[str]:
    (args,) = final_stage.all("HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--timeout=" in options
    return _exec_form(command)


def test_healthcheck_asks_the_grpc_health_service(final_stage: Stage) -> None:
    """HEALTHCHECK runs python against grpc.health.v1 for ServewiseService."""
    command = _healthcheck_command(final_stage)
    assert command[:2] == ["python", "-c"]
    assert "HealthStub" in command[2]
    assert f"service='{server.SERVICE_NAME}'" in command[2]


async def _run_healthcheck(command: list[str], port: int) -> int:
    env = {**os.environ, "SERVEWISE_ADDRESS": f"0.0.0.0:{port}"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


async def test_healthcheck_passes_while_serving_and_fails_while_draining(
    running_server: RunningServer, final_stage: Stage
) -> None:
    """The HEALTHCHECK command exits 0 against a serving server and 1 once it drains."""
    command = _healthcheck_command(final_stage)
    assert await _run_healthcheck(command, running_server.port) == 0
    await running_server.health.enter_graceful_shutdown()
    assert await _run_healthcheck(command, running_server.port) == 1


# === .dockerignore ==========================================================================


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern)
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negated, re.compile(regex)))
    return patterns


def _in_build_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in _ignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def _package_directories() -> set[str]:
    """Every directory pyproject.toml builds the distribution from."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    directories = set(setuptools.get("package-dir", {}).values())
    directories |= set(setuptools.get("packages", {}).get("find", {}).get("where", []))
    for module in setuptools.get("ext-modules", []):
        directories |= {posixpath.dirname(source) for source in module["sources"]}
    return {directory for directory in directories if directory not in {"", "."}}


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """pyproject.toml, README.md and package sources go in; build output and the rest stay out."""
    sources = [
        p.relative_to(REPO).as_posix()
        for directory in _package_directories()
        for p in (REPO / directory).rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".pyi", ".c", ".typed"}
        and "__pycache__" not in p.parts
    ]
    assert any(source.startswith("service/servewise/") for source in sources)
    for path in ["pyproject.toml", "README.md", *sources]:
        assert _in_build_context(path), f"{path} is left out of the build context"
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "deploy/base/deployment.yaml",
        "bench/results/x.json",
        "clients/go/go.mod",
        "service/servewise/core/_batchsim.cpython-311-x86_64-linux-gnu.so",
        "service/servewise.egg-info/PKG-INFO",
        "service/servewise/__pycache__/server.cpython-311.pyc",
        "state.db",
        "Dockerfile",
    ]:
        assert not _in_build_context(path), f"{path} would be sent to the build"
    for args in _parse_dockerfile()[1][0].all("COPY"):
        for source in args.split()[:-1]:
            assert source == "." or _in_build_context(source), f"COPY {source}: not in the context"
