"""Kubernetes and KServe manifests for the model zoo, plus the storage layout they mount.

    deploy/kserve/servingruntime.yaml              ServingRuntime `maas-torchserve` (our image)
    deploy/kserve/<model>.yaml                     InferenceService, Open Inference Protocol (v2)
    deploy/kserve/storage/<model>/config/config.properties   the cluster flavour of ours
    deploy/kserve/storage/<model>/config/metrics.yaml
    deploy/kserve/storage/<model>/model-store/<archive>.mar  (copied from model_store/, not committed)
    deploy/kubernetes/<model>.yaml                 Deployment + Service + NetworkPolicy
    deploy/kubernetes/models-pvc.yaml              the volume holding storage/<model>/ trees

One storage tree per model serves both: KServe mounts `storageUri` at /mnt/models, the plain
Deployment mounts the PVC's `<model>` sub-path there. Resource requests follow the model's
worker and thread settings (see `pod_resources`), so workers x threads <= requested cores.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maas.core.spec import ModelSpec
from maas.core.store import Archive, archive_member, store_archives
from maas.export.archive import archive_name as archive_file_name
from maas.properties import read_properties, write_properties

IMAGE = "maas-torchserve:0.12.0"  # built from deploy/docker/Dockerfile
MOUNT = "/mnt/models"
INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT = 8080, 8081, 8082
PRE_STOP_SLEEP_S = 5  # < terminationGracePeriodSeconds (30), which also covers TorchServe's own ~2.5 s stop
RUNTIME = "maas-torchserve"
PVC = "maas-models"
# Threads per worker when the model leaves it to the machine (intra_op_threads=0).
DEFAULT_THREADS_PER_WORKER = 2
FRONTEND_MILLICPU = 250  # the Java frontend: netty threads, batching, metrics
FRONTEND_MEMORY_MIB = 512

# Settings carried over from the project's config.properties unchanged: caps, queues, protocols.
CARRIED = ("max_request_size", "max_response_size", "job_queue_size", "default_response_timeout",
           "number_of_netty_threads", "netty_client_threads", "ts_open_inference_protocol",
           "metrics_mode", "enable_metrics_api")


@dataclass(frozen=True)
class PodResources:
    """What one pod serving a model asks for."""

    workers: int
    threads_per_worker: int
    cpu_millis: int
    memory_mib: int

    @property
    def ort_cores(self) -> int:
        return self.workers * self.threads_per_worker

    def requirements(self) -> dict[str, Any]:
        # No CPU limit (CFS throttling adds tail latency); memory limit = 2x request (OOM guard).
        return {"requests": {"cpu": f"{self.cpu_millis}m", "memory": f"{self.memory_mib}Mi"},
                "limits": {"memory": f"{2 * self.memory_mib}Mi"}}


def pod_resources(spec: ModelSpec) -> PodResources:
    """CPU: every worker's intra-op threads plus the frontend; memory: frontend + workers."""
    s = spec.serving
    threads = s.intra_op_threads or DEFAULT_THREADS_PER_WORKER
    return PodResources(workers=s.max_workers, threads_per_worker=threads,
                        cpu_millis=s.max_workers * threads * 1000 + FRONTEND_MILLICPU,
                        memory_mib=FRONTEND_MEMORY_MIB + s.max_workers * s.worker_memory_mib)


def archive_name(spec: ModelSpec, version: str | None) -> str:
    return f"{archive_file_name(spec.name, version, spec.version)}.mar"


def cluster_properties(project: dict[str, str], spec: ModelSpec, version: str | None = None) -> dict[str, str]:
    """config.properties for a pod serving `spec`: see pod_properties."""
    version = version or spec.version
    settings = {"marName": archive_name(spec, version), **spec.serving.snapshot_settings()}
    return pod_properties(project, spec.name, version, settings, spec.serving.max_workers)


def pod_properties(project: dict[str, str], model: str, version: str, settings: dict[str, Any],
                   workers: int) -> dict[str, str]:
    """config.properties for a pod: inference and metrics on the pod network, the rest loopback.

    Token authorization is off in a pod: TorchServe writes random keys into the pod's own
    key_file.json, which neither kubelet probes nor cluster clients can read. The boundary is
    the NetworkPolicy (plain Kubernetes) or KServe's ingress; the management API stays on
    loopback and the model API is off, so nothing can be registered from outside.
    """
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {model: {version: {
        "defaultVersion": True, **settings}}}}
    props = {
        "inference_address": f"http://0.0.0.0:{INFERENCE_PORT}",
        "management_address": f"http://127.0.0.1:{MANAGEMENT_PORT}",
        "metrics_address": f"http://0.0.0.0:{METRICS_PORT}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "allowed_urls": project.get("allowed_urls", "^file:///nonexistent/.*$"),
        "install_py_dep_per_model": "false",
        "model_store": f"{MOUNT}/model-store",
        "metrics_config": f"{MOUNT}/config/metrics.yaml",
        "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
        "default_workers_per_model": str(workers),
        "vmargs": "-XX:+UseContainerSupport -XX:MaxRAMPercentage=25 -XX:+ExitOnOutOfMemoryError",
    }
    props.update({k: project[k] for k in CARRIED if k in project})
    return props


def _labels(spec: ModelSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "maas",
            "app.kubernetes.io/version": spec.version}


def _probes() -> dict[str, Any]:
    # Readiness: the Open Inference Protocol's ready check; liveness: TorchServe's /ping. The
    # startup probe gives a slow model load (minilm: ~3 s on 2 cores) up to 5 minutes.
    def get(path: str, period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": INFERENCE_PORT}, "periodSeconds": period,
                "timeoutSeconds": 2, "failureThreshold": failures}
    return {"startupProbe": get("/ping", 5, 60), "readinessProbe": get("/v2/health/ready", 5, 3),
            "livenessProbe": get("/ping", 10, 3)}


def _container(spec: ModelSpec | None, res: PodResources | None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "kserve-container" if spec is None else "torchserve",
        "image": IMAGE,
        "args": ["torchserve", "--start", "--foreground",
                 f"--ts-config={MOUNT}/config/config.properties", f"--model-store={MOUNT}/model-store"],
        "ports": [{"containerPort": INFERENCE_PORT, "name": "http1" if spec is None else "http", "protocol": "TCP"}],
        # seccomp on the container too: a ServingRuntime has no pod securityContext of ours, and a
        # namespace enforcing the "restricted" Pod Security Standard refuses a container without it
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        # A terminating pod leaves the Service's endpoints while it gets SIGTERM, not before: for
        # a few seconds kube-proxy and ingresses still send it new connections. TorchServe closes
        # its ports on SIGTERM, so those would be refused; the sleep keeps them served first.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SLEEP_S)]}}},
    }
    if spec is not None:
        c["ports"].append({"containerPort": METRICS_PORT, "name": "metrics", "protocol": "TCP"})
    if res is not None:
        c["env"] = [{"name": "MAAS_CPU_CORES", "value": str(res.ort_cores)}]
        c["resources"] = res.requirements()
    return c


def serving_runtime() -> dict[str, Any]:
    """A namespaced ServingRuntime: TorchServe from our image, answering v2 in the handlers."""
    container = _container(None, None)
    container.update(_probes())
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
        "metadata": {"name": RUNTIME, "labels": {"app.kubernetes.io/part-of": "maas"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(METRICS_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "maas-onnx", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [container],
        },
    }


def inference_service(spec: ModelSpec, storage_uri: str) -> dict[str, Any]:
    res = pod_resources(spec)
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": spec.name, "labels": _labels(spec),
                     "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
        "spec": {"predictor": {
            "minReplicas": 1, "maxReplicas": 4,
            "model": {
                "modelFormat": {"name": "maas-onnx", "version": "1"},
                "runtime": RUNTIME, "protocolVersion": "v2",
                "storageUri": f"{storage_uri.rstrip('/')}/{spec.name}",
                "env": [{"name": "MAAS_CPU_CORES", "value": str(res.ort_cores)}],
                "resources": res.requirements(),
            },
        }},
    }


def deployment(spec: ModelSpec) -> dict[str, Any]:
    labels = _labels(spec)
    container = _container(spec, pod_resources(spec))
    container.update(_probes())
    # A read-only root filesystem, as the image test runs it (tests/integration/test_container_image.py):
    # TorchServe's cwd and TEMP (logs, key file, unpacked archives) and /tmp (workers' sockets) are emptyDirs.
    container["securityContext"]["readOnlyRootFilesystem"] = True
    container["volumeMounts"] = [{"name": "models", "mountPath": MOUNT, "subPath": spec.name, "readOnly": True},
                                 {"name": "scratch", "mountPath": "/home/model-server/tmp"},
                                 {"name": "tmp", "mountPath": "/tmp"}]
    container["env"].append({"name": "TEMP", "value": "/home/model-server/tmp"})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
            "template": {
                "metadata": {"labels": labels,
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
                "spec": {
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": PVC, "readOnly": True}},
                                {"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(spec: ModelSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": spec.name},
                 "ports": [{"name": "http", "port": INFERENCE_PORT, "targetPort": "http", "protocol": "TCP"},
                           {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
    }


def network_policy(spec: ModelSpec) -> dict[str, Any]:
    """Only pods labelled maas-client=true reach inference; only the monitoring namespace, metrics."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"maas-client": "true"}}}],
                 "ports": [{"port": INFERENCE_PORT, "protocol": "TCP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                 "ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
            ],
        },
    }


def models_pvc() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": PVC, "labels": {"app.kubernetes.io/part-of": "maas"}},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "2Gi"}}},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a rule file inside a ConfigMap) as readable literal blocks."""


_Dumper.add_representer(str, lambda d, text: d.represent_scalar("tag:yaml.org,2002:str", text,
                                                                 style="|" if "\n" in text else None))


def dump(docs: list[dict[str, Any]], path: Path, what: str) -> Path:
    header = f"# {what}\n# Generated by `maas export-kserve`; edit maas/kube.py or the model's spec, not this file.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False) for d in docs))
    return path


def write_storage(folder: Path, spec: ModelSpec, project_config: Path, model_store: Path | None,
                  version: str | None = None) -> Path | None:
    """folder/config/{config.properties,metrics.yaml}; folder/model-store/<archive> when it is built.

    Returns the copied archive, or None when model_store holds none for this model/version.
    """
    project = read_properties(project_config)
    config = folder / "config"
    config.mkdir(parents=True, exist_ok=True)
    write_properties(config / "config.properties", cluster_properties(project, spec, version),
                     header=f"TorchServe in a pod serving {spec.name}; generated by `maas export-kserve`")
    metrics = project.get("metrics_config")
    if metrics:
        shutil.copy(project_config.parent / metrics, config / "metrics.yaml")
    wanted = archive_name(spec, version)
    found = store_archives(model_store) if model_store and model_store.is_dir() else []
    match = next((a.path for a in found if a.path.name == wanted), None)
    if match is None:
        return None
    store = folder / "model-store"
    store.mkdir(exist_ok=True)
    return Path(shutil.copy2(match, store / wanted))


def write_llm_storage(folder: Path, archive: Archive, project_config: Path) -> Path:
    """A language model's storage tree, laid out as write_storage's: config/ plus its archive folder
    (`maas package --llm` ships the no-archive format) in model-store/, with the worker and batching
    settings of the archive's own model-config.yaml. Served on the same image; its clients speak
    the OpenAI API at /predictions/<model>/<version>/v1 (no v2, so no InferenceService)."""
    settings = yaml.safe_load(archive_member(archive, "model-config.yaml")) or {}
    kept = {k: settings[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout")
            if k in settings}
    project = read_properties(project_config)
    props = pod_properties(project, archive.model, archive.version, {"marName": archive.path.name, **kept},
                           int(settings.get("maxWorkers", 1)))
    config = folder / "config"
    config.mkdir(parents=True, exist_ok=True)
    write_properties(config / "config.properties", props,
                     header=f"TorchServe in a pod serving {archive.model}; generated by `maas export-kserve`")
    if project.get("metrics_config"):
        shutil.copy(project_config.parent / project["metrics_config"], config / "metrics.yaml")
    target = folder / "model-store" / archive.path.name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(exist_ok=True)
    if archive.path.is_dir():
        return Path(shutil.copytree(archive.path, target))
    return Path(shutil.copy2(archive.path, target))


@dataclass
class ExportResult:
    manifests: list[Path]
    archives: list[Path]
    missing: list[str]


def prometheus_rules_configmap(slos: dict[str, Any]) -> dict[str, Any]:
    """maas's Prometheus rules (maas/monitor.py) as a ConfigMap, for a Prometheus in the cluster
    to mount as a rule file (the pods carry prometheus.io/* scrape annotations)."""
    from maas.monitor import RULES_FILE, rules_yaml

    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "maas-prometheus-rules", "labels": {"app.kubernetes.io/part-of": "maas"}},
            "data": {RULES_FILE: rules_yaml(slos)}}


def export_all(specs: list[ModelSpec], project_config: Path, model_store: Path | None, kserve_dir: Path,
               kube_dir: Path, storage_uri: str = f"pvc://{PVC}", project_dir: Path | None = None) -> ExportResult:
    """Write every manifest and storage tree for `specs`."""
    from maas.monitor import slo_models

    result = ExportResult([], [], [])
    result.manifests.append(dump([serving_runtime()], kserve_dir / "servingruntime.yaml",
                                 "KServe ServingRuntime for the maas TorchServe image"))
    result.manifests.append(dump([models_pvc()], kube_dir / "models-pvc.yaml",
                                 "Volume holding one storage tree per model (see deploy/kserve/storage/)"))
    # Every SLO's rules, as `maas monitor rules` writes them: one rule file for the machine and the cluster
    # (a model not deployed there has no series, and its alerts stay silent).
    slos = slo_models(project_dir)
    result.manifests.append(dump([prometheus_rules_configmap(slos)], kube_dir / "prometheus-rules.yaml",
                                 "maas alert and recording rules (from the SLO files), for KServe and plain "
                                 "Kubernetes alike"))
    for spec in specs:
        result.manifests.append(dump([inference_service(spec, storage_uri)], kserve_dir / f"{spec.name}.yaml",
                                     f"KServe InferenceService for {spec.name} (Open Inference Protocol v2)"))
        result.manifests.append(dump([deployment(spec), service(spec), network_policy(spec)],
                                     kube_dir / f"{spec.name}.yaml", f"{spec.name} on plain Kubernetes"))
        archive = write_storage(kserve_dir / "storage" / spec.name, spec, project_config, model_store)
        if archive is None:
            result.missing.append(spec.name)
        else:
            result.archives.append(archive)
    return result
