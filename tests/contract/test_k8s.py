"""deploy/k8s cannot be applied here (no cluster): check the manifests' structure and references."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from stream_app.core.catalog import parse_catalog
from stream_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "valueloop"


def _docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in _docs() if d["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    [container] = containers
    return container


def _env() -> dict[str, Any]:
    return {e["name"]: e for e in _container()["env"]}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_prometheusrule", K8S / "render_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_kind_is_shipped_once_in_the_valueloop_namespace() -> None:
    kinds = sorted(d["kind"] for d in _docs())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceMonitor",
        ]
    )
    assert _one("Namespace")["metadata"]["name"] == NAMESPACE
    for doc in _docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_selectors_reach_the_worker_pods() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = _one("Service")
    assert _matches(service["spec"]["selector"], pod_labels)
    pdb = _one("PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    monitor = _one("ServiceMonitor")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]


def test_metrics_port_is_exposed_end_to_end() -> None:
    container = _container()
    [port] = container["ports"]
    assert port["containerPort"] == 9108
    env = _env()
    assert env["VALUELOOP_METRICS_PORT"]["value"] == "9108"
    # The default 127.0.0.1 would be unreachable from the Service.
    assert env["VALUELOOP_METRICS_HOST"]["value"] == "0.0.0.0"
    [service_port] = _one("Service")["spec"]["ports"]
    assert service_port["port"] == 9108 and service_port["targetPort"] == port["name"]
    [endpoint] = _one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"


def test_service_name_gives_the_job_label_the_alerts_expect() -> None:
    """Targets get job=<Service name>; the WorkerNotReady alert reads up{job=~"valueloop.*"}."""
    assert _one("Service")["metadata"]["name"].startswith("valueloop")


def test_probes_use_health_for_readiness_and_live_for_liveness() -> None:
    container = _container()
    port = container["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": port}
    assert container["startupProbe"]["httpGet"]["path"] == "/live"


def test_resources_and_security_are_set() -> None:
    container = _container()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    pod = _one("Deployment")["spec"]["template"]["spec"]
    uid = re.search(r"useradd --uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # With a read-only root, every place the worker writes must be a volume.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert _env()["VALUELOOP_DATA_DIR"]["value"] in mounts and "/tmp" in mounts


def test_replicas_do_not_exceed_partitions() -> None:
    deployment = _one("Deployment")
    partitions = int(_env()["VALUELOOP_TOPIC_PARTITIONS"]["value"])
    assert 1 <= deployment["spec"]["replicas"] <= partitions
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert _one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_worker_runs_the_worker_command_with_real_settings() -> None:
    assert _container()["args"] == ["worker"]
    fields = {f"VALUELOOP_{n.upper()}" for n in Settings.model_fields}
    for name in _env():
        assert name in fields, f"{name} is not a valueloop setting"


def test_kpi_catalog_configmap_is_mounted_and_valid() -> None:
    configmap = _one("ConfigMap")
    catalog = parse_catalog(configmap["data"]["kpis.toml"], source="deploy/k8s/configmap.yaml")
    assert any(k.critical for k in catalog.kpis)
    pod = _one("Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    [mount] = [m for m in _container()["volumeMounts"] if m["name"] == volume["name"]]
    assert _env()["VALUELOOP_KPIS_FILE"]["value"] == f"{mount['mountPath']}/kpis.toml"


def test_prometheusrule_carries_exactly_the_rule_files() -> None:
    render = _render_module()
    rule = _one("PrometheusRule")
    groups: list[dict[str, Any]] = []
    for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    assert rule["spec"]["groups"] == groups
    # Byte-equal to a fresh render, so the generated file is never hand-edited.
    text = (K8S / "prometheusrule.yaml").read_text()
    assert text == render.render(), "run python deploy/k8s/render_prometheusrule.py"
    assert render.main(["--check"]) == 0
