"""The manifests under k8s/: they render, validate, lint, and agree with the sidecar.

Every kustomization is rendered with tests/support_kustomize.py (and, where kubectl is
installed, compared with ``kubectl kustomize``); every object is validated against the
Kubernetes JSON schemas (kubernetes-validate, strict) or, for the two CRDs, against the fields
of their CRDs; every YAML file is linted. Then one source of truth: the config embedded in each
ConfigMap must load with ``sidecar.config.loads``, and its ports, addresses, paths and secrets
must match ``sidecar.defaults``, the containers' ports and probes, the Services, the
NetworkPolicies, the mounted volumes and the shipper snippets in fluent-plugin-config/. The
Dockerfiles are checked statically: there is no container engine here, so the image is never
built by these tests. k8s/monitoring/ (the alert rules) belongs to another change and is only
read for its alert names.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import yaml
from support import TINY_BUNDLE
from support_kustomize import (
    KustomizeError,
    find_kustomization,
    pod_containers,
    render,
    resource_id,
    split_image,
)

import sidecar
from sidecar import config, defaults
from sidecar.cli import build_parser
from sidecar.scoring.bundle import CARD_FILE, HASHED_FILES, load_bundle
from sidecar.scoring.scorer import ScoringSettings
from sidecar.status_server import make_app
from sidecar.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
SHIPPERS = ROOT / "fluent-plugin-config"
IMAGE_DIR = K8S / "image"
OWNED_ELSEWHERE = ("monitoring",)  # k8s/monitoring/: the alert rules, another change

MODES = ("node-daemonset", "shipper-pod")
DAEMONSET_OVERLAYS = ("node-daemonset", "model-from-image", "model-from-store",
                      "secrets-store-csi")
MODEL_OVERLAYS = ("model-from-image", "model-from-store")
OVERLAYS = ("node-daemonset", "shipper-pod", "model-from-image", "model-from-store",
            "secrets-store-csi")
KUSTOMIZATIONS = ("base", *(f"overlays/{name}" for name in OVERLAYS))
STANDALONE = ("jobs/rotate-token-store-key.yaml",)  # applied by hand, not through kustomize
K8S_VERSIONS = ("1.29", "1.37")  # oldest supported (native sidecars), newest schema shipped

RECEIVER_PORTS = {"forward": defaults.FORWARD_PORT, "otlp": defaults.OTLP_GRPC_PORT,
                  "grpc": defaults.GRPC_PORT, "lumberjack": defaults.LUMBERJACK_PORT}
CONTAINER_PORT_NAMES = {"forward": "forward", "otlp": "otlp-grpc", "grpc": "grpc",
                        "lumberjack": "lumberjack"}
HTTP_PORT_NAME = "http-status"
SECRET_ENVS = (defaults.HASH_SECRET_ENV, defaults.TOKEN_STORE_KEY_ENV,
               defaults.FORWARD_SHARED_KEY_ENV, defaults.DOWNSTREAM_SHARED_KEY_ENV)
ALL_INTERFACES = "0.0.0.0"
MODEL_DIR = "/opt/logminer/models/live"
SIEM_SYSLOG_TLS_PORT = defaults.SYSLOG_TLS_PORT  # syslog over TLS (RFC 5425) to the SIEM
DNS_PORT = 53
MODEL_STORE_PORT = 9000
ALERTS = ("LogMinerThroughputDrop", "LogMinerQueueGrowing", "LogMinerAnomalyRateSpike",
          "LogMinerAnomalyRateZero", "LogMinerModelLoadFailures", "LogMinerDrift",
          "LogMinerSpoolBacklog", "LogMinerDown")


# --------------------------------------------------------------------------- helpers


@functools.cache
def _rendered(path: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / path))


def objects(overlay: str) -> list[dict[str, Any]]:
    """The rendered objects of k8s/overlays/<overlay> (or k8s/<path>), as fresh copies."""
    path = overlay if overlay == "base" or "/" in overlay else f"overlays/{overlay}"
    return copy.deepcopy(list(_rendered(path)))


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def standalone(relative: str) -> list[dict[str, Any]]:
    text = (K8S / relative).read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d]


@dataclass
class Sidecar:
    """One rendered deployment of the sidecar: its workload, pod, container and config."""

    objects: list[dict[str, Any]]
    workload: dict[str, Any]
    pod: dict[str, Any]
    container: dict[str, Any]
    config_text: str
    config: config.Config

    @property
    def pod_labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"]["labels"]

    def all_containers(self) -> list[dict[str, Any]]:
        return pod_containers(self.workload)

    def volume(self, name: str) -> dict[str, Any]:
        hits = [v for v in self.pod.get("volumes", []) if v["name"] == name]
        assert len(hits) == 1, f"expected one volume {name}"
        return hits[0]

    def mount_for(self, path: str, container: dict[str, Any] | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any], str]:
        """(mount, volume, path inside the volume) of the mount holding ``path``."""
        container = container or self.container
        best = None
        for mount in container.get("volumeMounts", []):
            base = PurePosixPath(mount["mountPath"])
            if PurePosixPath(path) == base or base in PurePosixPath(path).parents:
                if best is None or len(mount["mountPath"]) > len(best["mountPath"]):
                    best = mount
        assert best is not None, f"{path}: not on any volume of {container['name']}"
        relative = str(PurePosixPath(path).relative_to(best["mountPath"]))
        return best, self.volume(best["name"]), relative

    def file_exists(self, path: str, container: dict[str, Any] | None = None) -> str:
        """Assert ``path`` is a file some mounted ConfigMap, Secret or CSI volume provides;
        returns the volume kind."""
        _, volume, relative = self.mount_for(path, container)
        if "configMap" in volume:
            cm = find(self.objects, "ConfigMap", volume["configMap"]["name"])
            items = volume["configMap"].get("items")
            keys = {i["path"]: i["key"] for i in items} if items else {k: k for k in cm["data"]}
            assert relative in keys and keys[relative] in cm["data"], f"{path}: not in {cm}"
            return "configMap"
        if "secret" in volume:
            items = volume["secret"].get("items")
            assert items, f"{path}: list the Secret's items so the file names are checked"
            assert relative in {i["path"] for i in items}, f"{path}: not an item of the Secret"
            return "secret"
        if "csi" in volume:
            spc = find(self.objects, "SecretProviderClass",
                       volume["csi"]["volumeAttributes"]["secretProviderClass"])
            names = {o["objectName"] for o in yaml.safe_load(spc["spec"]["parameters"]["objects"])}
            assert relative in names, f"{path}: not an objectName of {spc['metadata']['name']}"
            return "csi"
        raise AssertionError(f"{path}: on volume {volume['name']}, which provides no files")


def sidecar_of(overlay: str) -> Sidecar:
    objs = objects(overlay)
    workloads = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment", "StatefulSet")
                 and any(c["name"] == "logminer" for c in pod_containers(o))]
    assert len(workloads) == 1, f"{overlay}: expected one workload running the sidecar"
    workload = workloads[0]
    pod = workload["spec"]["template"]["spec"]
    container = next(c for c in pod_containers(workload) if c["name"] == "logminer")
    args = container["args"]
    assert args[:2] == ["serve", "--config"] and len(args) == 3, args
    partial = Sidecar(objs, workload, pod, container, "", config.Config())
    _, volume, key = partial.mount_for(args[2])
    text = find(objs, "ConfigMap", volume["configMap"]["name"])["data"][key]
    return Sidecar(objs, workload, pod, container, text, config.loads(text))


def port_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in container.get("ports", [])}


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe or Service port (a number or a port name) to the container port."""
    if isinstance(port, int):
        return port
    return port_map(container)[port]["containerPort"]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def policies_for(sc: Sidecar) -> list[dict[str, Any]]:
    return [p for p in of_kind(sc.objects, "NetworkPolicy")
            if labels_match(p["spec"]["podSelector"].get("matchLabels", {}), sc.pod_labels)]


def rule_ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def namespace_of(peer: dict[str, Any]) -> str | None:
    return (peer.get("namespaceSelector", {}).get("matchLabels", {})
            .get("kubernetes.io/metadata.name"))


def k8s_yaml_files() -> list[Path]:
    files = [p for p in sorted(K8S.rglob("*")) if p.suffix in (".yaml", ".yml")]
    return [p for p in files if p.relative_to(K8S).parts[0] not in OWNED_ELSEWHERE]


# --------------------------------------------------------------------------- rendering


def test_every_kustomization_and_manifest_is_covered() -> None:
    """No kustomization or manifest escapes these tests."""
    found = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")
             if p.relative_to(K8S).parts[0] not in OWNED_ELSEWHERE}
    assert found == set(KUSTOMIZATIONS)
    referenced: set[Path] = set()
    for path in KUSTOMIZATIONS:
        directory = K8S / path
        spec = yaml.safe_load(find_kustomization(directory).read_text(encoding="utf-8"))
        referenced.add(find_kustomization(directory))
        referenced.update((directory / r).resolve() for r in spec.get("resources", []))
        referenced.update((directory / p["path"]).resolve() for p in spec.get("patches", []))
    referenced.update((K8S / s).resolve() for s in STANDALONE)
    referenced.add((K8S / ".yamllint.yaml").resolve())
    orphans = [str(p.relative_to(K8S)) for p in k8s_yaml_files() if p.resolve() not in referenced]
    assert not orphans, f"YAML files no kustomization uses: {orphans}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders_into_the_logminer_namespace(path: str) -> None:
    objs = objects(path)
    assert objs
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {"logminer"}
    assert find(objs, "Namespace", "logminer")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(path: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the strict renderer alone is used")
    out = subprocess.run([kubectl, "kustomize", str(K8S / path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=resource_id)
    mine = sorted(objects(path), key=resource_id)
    assert [resource_id(o) for o in mine] == [resource_id(o) for o in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a == b, resource_id(a)


def _kustomization(tmp_path: Path, kustomization: str, **files: str) -> Path:
    (tmp_path / "kustomization.yaml").write_text(kustomization)
    for name, text in files.items():
        (tmp_path / name.replace("__", ".")).write_text(text)
    return tmp_path


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: b\n"


@pytest.mark.parametrize(("kustomization", "files", "message"), [
    ("resources: [cm.yaml]\ncommonLabels: {a: b}\n", {"cm__yaml": CM}, "unsupported keys"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n  target: {kind: Secret}\n",
     {"cm__yaml": CM, "p__yaml": "- {op: remove, path: /data/a}\n"}, "matches no resource"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n  target: {kind: ConfigMap}\n",
     {"cm__yaml": CM, "p__yaml": "- {op: test, path: /data/a, value: c}\n"}, "test failed"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n  target: {kind: ConfigMap}\n",
     {"cm__yaml": CM, "p__yaml": "data: {a: c}\n"}, "not a JSON6902"),
    ("resources: [cm.yaml]\npatches:\n- path: p.yaml\n  target: {kind: ConfigMap}\n",
     {"cm__yaml": CM, "p__yaml": "- {op: replace, path: /data/zz, value: c}\n"},
     "does not exist"),
    ("resources: [cm.yaml, cm2.yaml]\n", {"cm__yaml": CM, "cm2__yaml": CM}, "duplicate"),
    ("resources: [../outside.yaml]\n", {}, "outside"),
])
def test_renderer_refuses_what_it_does_not_implement(
        tmp_path: Path, kustomization: str, files: dict[str, str], message: str) -> None:
    (tmp_path / "outside.yaml").write_text(CM)
    directory = tmp_path / "k"
    directory.mkdir()
    with pytest.raises(KustomizeError, match=message):
        render(_kustomization(directory, kustomization, **files))


# --------------------------------------------------------------------------- schemas and lint

# Strict subsets of the two CRDs' schemas, for the fields these manifests may use. From
# prometheus-operator example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
# and the secrets-store-csi-driver SecretProviderClass (secrets-store.csi.x-k8s.io/v1).
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                          r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "additionalProperties": False,
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                            "labels": _STRING_MAP, "annotations": _STRING_MAP}}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
            "spec": {
                "type": "object", "required": ["endpoints", "selector"],
                "additionalProperties": False,
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": {"type": "object", "additionalProperties": False,
                                 "properties": {"matchLabels": _STRING_MAP}},
                    "namespaceSelector": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"},
                                       "matchNames": {"type": "array",
                                                      "items": {"type": "string"}}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                       "scheme": {"enum": ["http", "https"]},
                                       "interval": _DURATION, "scrapeTimeout": _DURATION,
                                       "honorLabels": {"type": "boolean"}}}}}}}},
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
            "spec": {"type": "object", "required": ["provider"], "additionalProperties": False,
                     "properties": {"provider": {"type": "string"},
                                    "parameters": _STRING_MAP,
                                    "secretObjects": {"type": "array"}}}}},
}


def validate_object(obj: dict[str, Any], version: str) -> None:
    import jsonschema  # installed with kubernetes-validate (a test dependency)
    import kubernetes_validate

    schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        jsonschema.validate(obj, schema)
        return
    kubernetes_validate.validate(obj, version, strict=True)  # unknown kinds raise


def _all_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in KUSTOMIZATIONS:
        for obj in objects(path):
            yield path, obj
    for relative in STANDALONE:
        for obj in standalone(relative):
            yield relative, obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for where, obj in _all_objects():
        try:
            validate_object(obj, version)
        except Exception as exc:
            raise AssertionError(f"{where}: {resource_id(obj)}: {exc}") from None
        checked += 1
    assert checked > 40


def test_schema_validation_is_strict() -> None:
    import jsonschema  # installed with kubernetes-validate

    ds = find(objects("node-daemonset"), "DaemonSet", "logminer")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(Exception, match="securityContxt"):
        validate_object(ds, K8S_VERSIONS[-1])
    sm = find(objects("base"), "ServiceMonitor", "logminer")
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(sm, K8S_VERSIONS[-1])
    sm["spec"]["endpoints"][0] = {"port": "http-metrics", "interval": "30 seconds"}
    with pytest.raises(jsonschema.ValidationError):
        validate_object(sm, K8S_VERSIONS[-1])


def _lint(text: str, name: str) -> list[str]:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(K8S / ".yamllint.yaml"))
    return [f"{name}:{p.line}:{p.column}: {p.desc} ({p.rule})"
            for p in linter.run(text, conf, name)]


def test_yaml_files_and_embedded_yaml_lint_clean() -> None:
    problems = []
    for path in k8s_yaml_files():
        problems += _lint(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    embedded = 0
    for path in KUSTOMIZATIONS:
        for cm in of_kind(objects(path), "ConfigMap"):
            for key, text in cm.get("data", {}).items():
                if key.endswith((".yaml", ".yml")):
                    problems += _lint(text, f"{path}: ConfigMap {cm['metadata']['name']}/{key}")
                    embedded += 1
    assert embedded >= 3
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- the config


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_embedded_config_loads_and_uses_the_default_ports_and_paths(overlay: str) -> None:
    cfg = sidecar_of(overlay).config
    for name, port in RECEIVER_PORTS.items():
        assert getattr(cfg.receivers, name).port == port
        assert getattr(cfg.receivers, name).enabled
    assert cfg.http.port == defaults.HTTP_PORT
    assert cfg.http.host == ALL_INTERFACES  # kubelet probes and Prometheus use the pod IP
    assert cfg.data_dir == defaults.DATA_DIR
    assert cfg.token_store.enabled and cfg.token_store.path is None  # data_dir/tokens
    assert cfg.scoring.model_dir == MODEL_DIR


@pytest.mark.parametrize("overlay", DAEMONSET_OVERLAYS)
def test_daemonset_receivers_bind_all_interfaces_as_the_tls_snippet(overlay: str) -> None:
    sc = sidecar_of(overlay)
    tls_snippet = yaml.safe_load((SHIPPERS / "sidecar" / "logminer-tls.yaml").read_text())
    ours = yaml.safe_load(sc.config_text)["receivers"]
    for name, port in RECEIVER_PORTS.items():
        receiver = ours[name]
        assert receiver.pop("host") == ALL_INTERFACES
        assert receiver.pop("port") == port
        assert receiver == tls_snippet["receivers"][name], name
        assert getattr(sc.config.receivers, name).tls.cert_file
    assert sc.config.receivers.forward.require_shared_key


def test_shipper_pod_receivers_keep_the_loopback_default() -> None:
    cfg = sidecar_of("shipper-pod").config
    for name in RECEIVER_PORTS:
        receiver = getattr(cfg.receivers, name)
        assert receiver.host == defaults.LISTEN_HOST
        assert receiver.tls.cert_file is None  # loopback inside one pod: plain TCP


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_records_go_at_least_once_to_the_aggregator_over_tls(overlay: str) -> None:
    cfg = sidecar_of(overlay).config
    (exporter,) = cfg.exporters
    assert exporter.type == "forward" and exporter.mode == "ack"
    assert exporter.port == defaults.AGGREGATOR_PORT
    assert exporter.tls.enabled and exporter.use_shared_key
    assert re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+\.svc(\.cluster\.local)?", exporter.host)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_checksum_annotation_rolls_the_pods_on_a_change(overlay: str) -> None:
    sc = sidecar_of(overlay)
    digest = hashlib.sha256(sc.config_text.encode()).hexdigest()
    annotations = sc.workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations.get("logminer.io/config-sha256") == digest, (
        f"set logminer.io/config-sha256 to {digest}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_grace_fits_in_the_termination_grace_period(overlay: str) -> None:
    sc = sidecar_of(overlay)
    assert sc.config.pipeline.shutdown_grace_seconds + 5 <= sc.pod[
        "terminationGracePeriodSeconds"]


# --------------------------------------------------------------------------- ports and probes


@pytest.mark.parametrize("overlay", DAEMONSET_OVERLAYS)
def test_daemonset_container_and_host_ports_are_the_config_ports(overlay: str) -> None:
    sc = sidecar_of(overlay)
    ports = port_map(sc.container)
    assert set(ports) == {*CONTAINER_PORT_NAMES.values(), HTTP_PORT_NAME}
    for name, port_name in CONTAINER_PORT_NAMES.items():
        port = ports[port_name]
        assert port["containerPort"] == getattr(sc.config.receivers, name).port
        assert port["hostPort"] == port["containerPort"]
        assert port["protocol"] == "TCP"
    assert ports[HTTP_PORT_NAME]["containerPort"] == sc.config.http.port
    assert "hostPort" not in ports[HTTP_PORT_NAME]
    assert not sc.pod.get("hostNetwork")
    strategy = sc.workload["spec"]["updateStrategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0  # two pods cannot share hostPorts


def test_shipper_pod_exposes_only_the_http_port() -> None:
    sc = sidecar_of("shipper-pod")
    assert {n: p["containerPort"] for n, p in port_map(sc.container).items()} == {
        HTTP_PORT_NAME: defaults.HTTP_PORT}
    assert not any("hostPort" in p for c in sc.all_containers() for p in c.get("ports", []))
    assert sc.container["restartPolicy"] == "Always"  # a native sidecar
    names = [c["name"] for c in sc.pod["initContainers"]]
    assert names.index("logminer-data-dir-owner") < names.index("logminer")


def _wsgi_status(app: Any, path: str) -> str:
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    return statuses[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_real_health_endpoints(overlay: str) -> None:
    sc = sidecar_of(overlay)
    probes = {kind: sc.container[kind]["httpGet"]
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert container_port(sc.container, probe["port"]) == sc.config.http.port
    telemetry = Telemetry()
    app = make_app(telemetry)
    assert _wsgi_status(app, "/health").startswith("200")
    assert _wsgi_status(app, "/ready").startswith("503")
    telemetry.health.set("receivers", True)
    assert _wsgi_status(app, "/ready").startswith("200")


@pytest.mark.parametrize("overlay", MODES)
def test_service_and_servicemonitor_scrape_the_metrics_port(overlay: str) -> None:
    sc = sidecar_of(overlay)
    service = find(sc.objects, "Service", "logminer-metrics")
    assert labels_match(service["spec"]["selector"], sc.pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["port"] == defaults.HTTP_PORT
    assert container_port(sc.container, port["targetPort"]) == sc.config.http.port
    monitor = find(sc.objects, "ServiceMonitor", "logminer")
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert _wsgi_status(make_app(Telemetry()), endpoint["path"]).startswith("200")


# --------------------------------------------------------------------------- network policies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_allow_only_whats_needed(overlay: str) -> None:
    sc = sidecar_of(overlay)
    selected = policies_for(sc)
    assert len(selected) == len(of_kind(sc.objects, "NetworkPolicy"))  # none is dead
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress")
               for p in selected)
    ingress = [r for p in selected for r in p["spec"].get("ingress", [])]
    egress = [r for p in selected for r in p["spec"].get("egress", [])]
    for rule in ingress + egress:
        assert rule.get("ports") and (rule.get("from") or rule.get("to")), rule

    prometheus = [r for r in ingress if any(
        f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        == "prometheus" for f in r["from"])]
    assert [rule_ports(r) for r in prometheus] == [{("TCP", sc.config.http.port)}]
    receivers = {("TCP", getattr(sc.config.receivers, n).port) for n in RECEIVER_PORTS}
    others = set().union(*(rule_ports(r) for r in ingress if r not in prometheus))
    if overlay == "shipper-pod":
        assert others == set()  # the shipper sends over loopback
    else:
        assert others == receivers
        (sources,) = [r for r in ingress if r not in prometheus]
        assert sources["from"] == [{"namespaceSelector": {}, "podSelector": {
            "matchLabels": {"logminer.io/log-source": "true"}}}]

    (exporter,) = sc.config.exporters
    aggregator_ns = exporter.host.split(".")[1]
    allowed = {port: rule for rule in egress for port in rule_ports(rule)}
    expected = {("TCP", exporter.port), ("TCP", SIEM_SYSLOG_TLS_PORT), ("UDP", DNS_PORT),
                ("TCP", DNS_PORT)}
    if overlay == "model-from-store":
        expected.add(("TCP", MODEL_STORE_PORT))
    assert set(allowed) == expected
    assert [namespace_of(t) for t in allowed[("TCP", exporter.port)]["to"]] == [aggregator_ns]
    assert [namespace_of(t) for t in allowed[("UDP", DNS_PORT)]["to"]] == ["kube-system"]


def test_model_store_policy_matches_the_bundle_url() -> None:
    sc = sidecar_of("model-from-store")
    init = next(c for c in sc.pod["initContainers"] if c["name"] == "model-bundle")
    env = {e["name"]: e["value"] for e in init["env"]}
    url = urllib.parse.urlsplit(env["BUNDLE_URL"])
    assert url.scheme == "https" and env["BUNDLE_URL"].endswith("/")
    policy = find(sc.objects, "NetworkPolicy", "logminer-allow-model-store")
    (rule,) = policy["spec"]["egress"]
    assert rule_ports(rule) == {("TCP", url.port)} == {("TCP", MODEL_STORE_PORT)}
    assert [namespace_of(t) for t in rule["to"]] == [url.hostname.split(".")[1]]
    assert sc.file_exists(env["SSL_CERT_FILE"], init) == "secret"


# --------------------------------------------------------------------------- secrets, files


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_mounted_files_named_by_the_default_variables(
        overlay: str, tmp_path: Path) -> None:
    sc = sidecar_of(overlay)
    env = sc.container["env"]
    assert all("valueFrom" not in e for e in env)  # never a secret in an env value
    cfg = sc.config
    needed = {defaults.HASH_SECRET_ENV}
    if cfg.token_store.enabled:
        needed.add(defaults.TOKEN_STORE_KEY_ENV)
    if cfg.receivers.forward.require_shared_key:
        needed.add(defaults.FORWARD_SHARED_KEY_ENV)
    if any(getattr(e, "use_shared_key", False) for e in cfg.exporters):
        needed.add(defaults.DOWNSTREAM_SHARED_KEY_ENV)
    assert needed <= set(SECRET_ENVS)
    names = {e["name"]: e["value"] for e in env}
    assert set(names) == {f"{n}_FILE" for n in needed}
    # Each file is provided by a Secret (or CSI) volume, and the sidecar reads them all.
    fake = {}
    for name, path in names.items():
        assert sc.file_exists(path) in ("secret", "csi")
        _, volume, _ = sc.mount_for(path)
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(f"value-of-{name}-0123456789abcdef\n")
        fake[name] = str(local)
    secrets = config.load_secrets(fake)
    assert bool(secrets.hash_secret)
    assert bool(secrets.token_store_key) == (defaults.TOKEN_STORE_KEY_ENV in needed)
    assert bool(secrets.forward_shared_key) == (defaults.FORWARD_SHARED_KEY_ENV in needed)
    assert bool(secrets.downstream_shared_key) == (defaults.DOWNSTREAM_SHARED_KEY_ENV in needed)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_files_in_the_config_are_mounted(overlay: str) -> None:
    sc = sidecar_of(overlay)
    paths = [getattr(getattr(sc.config.receivers, n).tls, f)
             for n in RECEIVER_PORTS for f in ("cert_file", "key_file", "client_ca_file")]
    paths += [getattr(e.tls, f) for e in sc.config.exporters
              for f in ("ca_file", "cert_file", "key_file")]
    paths = [p for p in paths if p]
    assert paths
    for path in paths:
        assert sc.file_exists(path) == "secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_data_dir_is_a_writable_host_volume_owned_by_the_sidecar_user(overlay: str) -> None:
    sc = sidecar_of(overlay)
    mount, volume, relative = sc.mount_for(sc.config.data_dir)
    assert relative == "." and not mount.get("readOnly")
    assert volume["hostPath"] == {"path": defaults.DATA_DIR, "type": "DirectoryOrCreate"}
    owner = next(c for c in sc.pod["initContainers"] if c["name"].endswith("data-dir-owner"))
    assert sc.mount_for(sc.config.data_dir, owner)[1] is volume
    security = sc.container["securityContext"]
    command = " ".join(owner["command"])
    assert f"chown {security['runAsUser']}:{security['runAsGroup']} {defaults.DATA_DIR}" in command
    assert f"chmod 0700 {defaults.DATA_DIR}" in command


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_dir_is_the_image_bundle_or_an_init_container_bundle(overlay: str) -> None:
    sc = sidecar_of(overlay)
    model_dir = PurePosixPath(sc.config.scoring.model_dir)
    mounts = [m for m in sc.container["volumeMounts"]
              if PurePosixPath(m["mountPath"]) in (model_dir, *model_dir.parents)
              and m["mountPath"] != "/"]
    if overlay not in MODEL_OVERLAYS:
        assert mounts == []  # the bundle baked into the image (test_dockerfile_...)
        return
    (mount,) = mounts
    assert mount["mountPath"] == str(model_dir.parent) and mount["readOnly"] is True
    assert "emptyDir" in sc.volume(mount["name"])
    init = next(c for c in sc.pod["initContainers"] if c["name"] == "model-bundle")
    (writer,) = [m for m in init["volumeMounts"] if m["name"] == mount["name"]]
    assert writer["mountPath"] == mount["mountPath"] and not writer.get("readOnly")
    assert sc.pod["initContainers"][-1] is init  # after data-dir-owner, before the sidecar
    if overlay == "model-from-store":
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["DEST"] == str(model_dir)
        assert sc.file_exists(init["command"][-1], init) == "configMap"
    else:
        copied = re.findall(r"/bundle/([\w.]+)", " ".join(init["command"]))
        assert set(copied) == {CARD_FILE, *HASHED_FILES}
        assert init["command"][-1].rstrip().endswith(f" {model_dir}")


# --------------------------------------------------------------------------- security


def _container_security(container: dict[str, Any]) -> dict[str, Any]:
    security = container.get("securityContext", {})
    assert security.get("allowPrivilegeEscalation") is False, container["name"]
    assert security.get("readOnlyRootFilesystem") is True, container["name"]
    assert security.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
    assert not security.get("privileged"), container["name"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]
    return security


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str) -> None:
    sc = sidecar_of(overlay)
    for container in sc.all_containers():
        security = _container_security(container)
        added = set(security["capabilities"].get("add", []))
        if container["name"].endswith("data-dir-owner"):
            assert added == {"CHOWN", "FOWNER"}
        else:
            assert not added, container["name"]
    security = sc.container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    seccomp = security.get("seccompProfile") or sc.pod["securityContext"]["seccompProfile"]
    assert seccomp == {"type": "RuntimeDefault"}
    assert sc.pod["securityContext"]["fsGroup"] == security["runAsGroup"]
    assert sc.pod["automountServiceAccountToken"] is False
    account = find(sc.objects, "ServiceAccount", sc.pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & {
        o["kind"] for o in sc.objects}
    assert not any(sc.pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    selector = sc.pod["nodeSelector"]
    assert {t["key"] for t in sc.pod["tolerations"]} == set(selector) == {
        "logminer.io/secure-node"}
    namespace = find(sc.objects, "Namespace", "logminer")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/warn"] == "restricted"


def test_rotation_pod_runs_logminer_tokens_rotate_on_the_node_store() -> None:
    (pod,) = standalone("jobs/rotate-token-store-key.yaml")
    sc = Sidecar(objects("node-daemonset"), {"spec": {"template": {"spec": pod["spec"]}}},
                 pod["spec"], pod["spec"]["containers"][0], "", config.Config())
    container = sc.container
    _container_security(container)
    args = build_parser().parse_args(container["args"])
    assert args.func.__name__ == "cmd_tokens_rotate"
    assert args.store == f"{defaults.DATA_DIR}/tokens"
    assert sc.file_exists(args.new_key_file) == "secret"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) == {f"{defaults.TOKEN_STORE_KEY_ENV}_FILE"}
    assert sc.file_exists(env[f"{defaults.TOKEN_STORE_KEY_ENV}_FILE"]) == "secret"
    assert sc.mount_for(args.store)[1]["hostPath"]["path"] == defaults.DATA_DIR
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["nodeName"]


def _images() -> Iterator[tuple[str, str]]:
    for where, obj in _all_objects():
        spec = obj.get("spec", {})
        for container in pod_containers(obj) if obj["kind"] != "Pod" else spec["containers"]:
            yield where, container["image"]


def test_images_are_pinned_and_the_sidecar_tag_is_the_package_version() -> None:
    sidecar_images = 0
    for where, image in _images():
        name, tag, digest = split_image(image)
        assert "/" in name and (tag or digest), f"{where}: placeholder image {image}"
        if name.endswith("/logminer/sidecar"):
            assert tag == sidecar.__version__, f"{where}: {image}"
            sidecar_images += 1
    assert sidecar_images >= 10


# --------------------------------------------------------------------------- shipper snippets


def test_shipper_pod_fluent_bit_sends_as_the_shipped_snippet() -> None:
    sc = sidecar_of("shipper-pod")
    shipper = next(c for c in sc.pod["containers"] if c["name"] == "fluent-bit")
    config_path = shipper["command"][shipper["command"].index("-c") + 1]
    assert sc.file_exists(config_path, shipper) == "configMap"
    _, volume, key = sc.mount_for(config_path, shipper)
    ours = yaml.safe_load(find(sc.objects, "ConfigMap", volume["configMap"]["name"])["data"][key])
    snippet = yaml.safe_load((SHIPPERS / "fluent-bit" / "to-sidecar.yaml").read_text())
    (output,) = ours["pipeline"]["outputs"]
    (expected, *_) = snippet["pipeline"]["outputs"]
    assert {k: v for k, v in output.items() if k != "match"} == {
        k: v for k, v in expected.items() if k != "match"}
    assert output["host"] == sc.config.receivers.forward.host == defaults.LISTEN_HOST
    assert output["port"] == sc.config.receivers.forward.port == defaults.FORWARD_PORT
    (tail,) = ours["pipeline"]["inputs"]
    assert re.fullmatch(output["match"].replace(".", r"\.").replace("*", ".*"),
                        tail["tag"].replace("*", "x"))


# --------------------------------------------------------------------------- fetch_bundle.py


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def bundle_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (that dir, its URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def _run_fetch(tmp_path: Path, url: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    fetch = find(objects("model-from-store"), "ConfigMap", "logminer-fetch-bundle")
    script = tmp_path / "fetch_bundle.py"
    script.write_text(fetch["data"]["fetch_bundle.py"])
    (tmp_path / "models").mkdir(exist_ok=True)
    dest = tmp_path / "models" / "live"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(BUNDLE_URL=url, DEST=str(dest), NO_PROXY="*")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    return done, dest


def test_fetch_bundle_installs_a_complete_verified_bundle(
        tmp_path: Path, bundle_server: tuple[Path, str]) -> None:
    served, url = bundle_server
    shutil.copytree(TINY_BUNDLE, served / "tiny" / "1")
    done, dest = _run_fetch(tmp_path, url + "tiny/1/")
    assert done.returncode == 0, done.stderr
    assert "into" in done.stdout
    assert sorted(p.name for p in dest.iterdir()) == sorted([CARD_FILE, *HASHED_FILES])
    for name in (CARD_FILE, *HASHED_FILES):
        assert (dest / name).read_bytes() == (TINY_BUNDLE / name).read_bytes()
    load_bundle(dest)  # the sidecar accepts what the init container installed
    assert sorted(p.name for p in dest.parent.iterdir()) == ["live"]


def test_fetch_bundle_leaves_nothing_when_a_digest_does_not_match(
        tmp_path: Path, bundle_server: tuple[Path, str]) -> None:
    served, url = bundle_server
    bundle = served / "tiny" / "1"
    shutil.copytree(TINY_BUNDLE, bundle)
    with (bundle / HASHED_FILES[-1]).open("ab") as out:
        out.write(b" ")
    done, dest = _run_fetch(tmp_path, url + "tiny/1/")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"{HASHED_FILES[-1]}: sha256 does not match card.json")
    assert list(dest.parent.iterdir()) == []
    done, _ = _run_fetch(tmp_path, url + "tiny/1")
    assert done.returncode == 1 and "must end in /" in done.stderr


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line; comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            pending = ""
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = [[]]
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result  # result[0]: the global ARGs before the first FROM


def _patterns(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _glob(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def copy_sources(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context in a stage."""
    copies = []
    for word, args in stage:
        if word == "COPY" and not args.startswith("--from"):
            *sources, dest = shlex.split(args)
            copies.append((sources, dest))
    return copies


def test_dockerfile_is_slim_non_root_runtime_only() -> None:
    instructions = dockerfile(IMAGE_DIR / "Dockerfile")
    glob_args, *image_stages = stages(instructions)
    args = dict(a.split("=", 1) for w, a in glob_args if w == "ARG")
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?",
                        args["PYTHON_IMAGE"])
    assert [s[0] for s in image_stages] == [("FROM", "${PYTHON_IMAGE} AS build"),
                                            ("FROM", "${PYTHON_IMAGE}")]
    build, final = image_stages
    runs = " ".join(a for w, a in build if w == "RUN")
    installs = re.findall(r"pip install ([^&;|]*)", runs)
    assert [i.strip() for i in installs] == ["."]  # the package, no extras (no [train])
    assert "pip show tensorflow" in runs  # and the build fails if TensorFlow got in
    assert not re.search(r"tensorflow|\[train\]", " ".join(a for w, a in final))
    user = [a for w, a in final if w == "USER"]
    assert user == ["10001:10001"]
    security = sidecar_of("node-daemonset").container["securityContext"]
    assert user[0] == f"{security['runAsUser']}:{security['runAsGroup']}"
    exposed = {int(p) for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == {*RECEIVER_PORTS.values(), defaults.HTTP_PORT}
    (healthcheck,) = [a for w, a in final if w == "HEALTHCHECK"]
    assert f"http://{defaults.LISTEN_HOST}:{defaults.HTTP_PORT}/health" in healthcheck
    assert ("ENTRYPOINT", '["logminer"]') in final and ("CMD", '["serve"]') in final
    for overlay in OVERLAYS:  # the manifests run the entry point with serve --config
        assert "command" not in sidecar_of(overlay).container
    assert any(w == "RUN" and f"install -d -o 10001 -g 10001 -m 0700 {defaults.DATA_DIR}" in a
               for w, a in final)


def test_dockerfile_ships_the_bundle_where_the_configs_look() -> None:
    build, final = stages(dockerfile(IMAGE_DIR / "Dockerfile"))[1:]
    (workdir,) = [a for w, a in final if w == "WORKDIR"]
    # `docker run IMAGE` with the built-in default model_dir (relative) finds the bundle...
    default_dir = str(PurePosixPath(workdir) / ScoringSettings().model_dir)
    bundles = {dest.rstrip("/"): [PurePosixPath(s).name for s in sources]
               for sources, dest in copy_sources(build) if dest.startswith("/opt/logminer/")}
    assert set(bundles[default_dir]) >= {CARD_FILE, *HASHED_FILES}
    # ... and the manifests' model_dir is a link to it.
    link = PurePosixPath(MODEL_DIR)
    assert ("RUN", f"ln -s {PurePosixPath(default_dir).name} {link}") in build
    assert link.parent == PurePosixPath(default_dir).parent
    assert ("COPY", "--from=build /opt/logminer /opt/logminer") in final


@pytest.mark.parametrize(("name", "extra_ignored"), [
    ("Dockerfile", ["tests/test_config.py", "k8s/README.md", "bench/RESULTS.md",
                    "logminer_sidecar.egg-info/PKG-INFO", "sidecar/__pycache__/app.cpython.pyc",
                    "models/hdfs/reference.npz", "models/hdfs/evaluation/raw-hdfs5k.json",
                    ".git/HEAD", "fluent-plugin-config/README.md"]),
    ("model-bundle.Dockerfile", ["sidecar/app.py", "tests/test_config.py",
                                 "models/hdfs/evaluation/raw-hdfs5k.json",
                                 "models/hdfs/reference.npz", "models/hdfs/EVALUATION.md"]),
])
def test_dockerfile_copies_exist_and_pass_its_dockerignore(
        name: str, extra_ignored: list[str]) -> None:
    instructions = dockerfile(IMAGE_DIR / name)
    patterns = _patterns(IMAGE_DIR / f"{name}.dockerignore")
    build_args = {k: v for w, a in instructions if w == "ARG" and "=" in a
                  for k, v in [a.split("=", 1)]}
    copied = 0
    for sources, _ in [c for stage in stages(instructions) for c in copy_sources(stage)]:
        for source in sources:
            for key, value in build_args.items():
                source = source.replace(f"${{{key}}}", value)
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
            files = [p for p in (ROOT / source).rglob("*") if p.is_file()] if (
                ROOT / source).is_dir() else [ROOT / source]
            for file in files:
                relative = str(file.relative_to(ROOT))
                if "__pycache__" not in relative:
                    assert not dockerignored(patterns, relative), f"{name}: {relative} ignored"
                    copied += 1
    assert copied >= 4
    for path in extra_ignored:
        assert dockerignored(patterns, path), f"{name}: {path} is in the build context"


def test_model_bundle_image_holds_what_the_init_container_copies() -> None:
    instructions = dockerfile(IMAGE_DIR / "model-bundle.Dockerfile")
    (image_stage,) = stages(instructions)[1:]
    ((sources, dest),) = copy_sources(image_stage)
    assert dest == "/bundle/"
    assert {PurePosixPath(s).name for s in sources} == {CARD_FILE, *HASHED_FILES}
    users = [a for w, a in image_stage if w == "USER"]
    assert users and not users[-1].startswith("0")
    init = next(c for c in sidecar_of("model-from-image").pod["initContainers"]
                if c["name"] == "model-bundle")
    assert init["securityContext"]["runAsUser"] == int(users[-1].split(":")[0])


# --------------------------------------------------------------------------- docs


def readme() -> str:
    return (K8S / "README.md").read_text(encoding="utf-8")


def monitoring_alerts() -> set[str]:
    """Alert names in k8s/monitoring/ (PrometheusRule objects or plain rule files), if any."""
    names: set[str] = set()
    directory = K8S / "monitoring"
    for path in sorted(directory.rglob("*.y*ml")) if directory.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict):
                continue
            groups = (doc.get("spec") or {}).get("groups") or doc.get("groups") or []
            names.update(rule["alert"] for group in groups for rule in group.get("rules", [])
                         if "alert" in rule)
    return names


def test_runbooks_cover_every_alert_and_link_the_rules() -> None:
    text = readme()
    headings = set(re.findall(r"^### (\w+)\s*$", text, re.MULTILINE))
    missing = sorted((set(ALERTS) | monitoring_alerts()) - headings)
    assert not missing, f"no runbook for {missing}"
    assert "### Anomaly alert" in text
    assert "](monitoring/)" in text
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in text


def test_readme_commands_run_with_the_cli() -> None:
    text = readme()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    commands = [line.strip() for block in blocks for line in block.splitlines()
                if line.strip().startswith("logminer ")]
    commands += re.findall(r"`(logminer [^`]+)`", text)
    commands += re.findall(r"`LOGMINER_\w+=\S+ (logminer [^`]+)`", text)
    assert len(commands) >= 6
    parser = build_parser()
    for command in commands:
        words = shlex.split(re.split(r"\s[>|#]|&&", command)[0])
        parser.parse_args(words[1:])  # SystemExit on an unknown command or option
    assert "logminer tokens rotate --new-key-file" in text
    assert "sidecar stopped" in text or "must be stopped" in text
