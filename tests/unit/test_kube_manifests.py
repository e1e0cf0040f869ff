"""deploy/kserve and deploy/kubernetes: in sync with `maas export-kserve`, valid against the
Kubernetes and KServe schemas offline, and sized from each model's worker/thread settings."""
from __future__ import annotations

import copy
import filecmp
import json
from pathlib import Path

import pytest
import yaml
from manifest_schema import ManifestError, problems, validate, validate_all

from maas.config_audit import audit
from maas.export import zoo
from maas.kube import DEFAULT_THREADS_PER_WORKER, cluster_properties, export_all, pod_resources
from maas.properties import read_properties

MODELS = list(zoo.models())

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = [ROOT / "deploy" / "kserve", ROOT / "deploy" / "kubernetes"]


def docs(folder: Path) -> list[dict]:
    return [d for f in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("export")
    export_all([zoo.get(m).spec for m in MODELS], ROOT / "config.properties", None, out / "kserve", out / "kubernetes")
    return out / "kserve", out / "kubernetes"


def test_committed_manifests_match_a_fresh_export(fresh: tuple[Path, Path]) -> None:
    for committed, new in zip(COMMITTED, fresh):
        names = sorted(p.name for p in new.glob("*.yaml"))
        assert names == sorted(p.name for p in committed.glob("*.yaml"))
        _, mismatch, errors = filecmp.cmpfiles(committed, new, names, shallow=False)
        assert not mismatch and not errors, f"run `maas export-kserve digits maintenance minilm` and commit: {mismatch + errors}"


def test_every_manifest_is_valid_offline() -> None:
    every = [d for folder in COMMITTED for d in docs(folder)]
    validate_all(every)
    kinds = [d["kind"] for d in every]
    assert kinds.count("InferenceService") == len(MODELS) == kinds.count("Deployment") == kinds.count("Service")
    assert {"ServingRuntime", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap"} <= set(kinds)


def test_the_cluster_gets_the_same_prometheus_rules() -> None:
    (rules_map,) = [d for d in docs(COMMITTED[1]) if d["kind"] == "ConfigMap"]
    assert rules_map["data"]["maas-rules.yaml"] == (ROOT / "deploy" / "prometheus" / "maas-rules.yaml").read_text()


def _isvc() -> dict:
    return yaml.safe_load((COMMITTED[0] / "maintenance.yaml").read_text())


KSERVE_BREAKS = {
    "unknown field": lambda d: d["spec"]["predictor"]["model"].update(storageUrl="pvc://typo"),
    "wrong type": lambda d: d["spec"]["predictor"].update(minReplicas="one"),
    "required field": lambda d: d["spec"]["predictor"]["model"]["env"][0].pop("name"),
    "wrong shape": lambda d: d["spec"]["predictor"]["model"]["resources"].update(requests=["2"]),
}


def test_the_kserve_check_catches_broken_inference_services() -> None:
    """Each breakage alone is caught (one KServe SDK process checks them all)."""
    docs = [_isvc()]
    for break_it in KSERVE_BREAKS.values():
        docs.append(copy.deepcopy(docs[0]))
        break_it(docs[-1])
    found = problems(docs)
    assert found[0] is None
    assert [name for name, problem in zip(KSERVE_BREAKS, found[1:]) if not problem] == []


@pytest.mark.parametrize("break_it", [
    lambda d: d["spec"].update(replicas="2"),
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
    lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
])
def test_the_kubernetes_check_catches_broken_deployments(break_it) -> None:
    doc = next(d for d in docs(COMMITTED[1]) if d["kind"] == "Deployment")
    break_it(doc)
    with pytest.raises(ManifestError):
        validate(doc)


@pytest.mark.parametrize("model", list(MODELS))
def test_resources_follow_workers_and_threads(model: str) -> None:
    spec = zoo.get(model).spec
    res = pod_resources(spec)
    threads = spec.serving.intra_op_threads or DEFAULT_THREADS_PER_WORKER
    assert res.ort_cores == spec.serving.max_workers * threads
    isvc = yaml.safe_load((COMMITTED[0] / f"{model}.yaml").read_text())["spec"]["predictor"]["model"]
    deploy = next(d for d in yaml.safe_load_all((COMMITTED[1] / f"{model}.yaml").read_text()) if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    for c in (isvc, container):
        # The handler sizes ORT from MAAS_CPU_CORES, so workers x threads == the cores requested for ORT.
        assert {"name": "MAAS_CPU_CORES", "value": str(res.ort_cores)} in c["env"]
        cpu = c["resources"]["requests"]["cpu"]
        assert int(cpu.rstrip("m")) >= 1000 * res.ort_cores
        assert "cpu" not in c["resources"]["limits"]
    assert {p["httpGet"]["path"] for p in (container["readinessProbe"], container["livenessProbe"])} == \
        {"/v2/health/ready", "/ping"}


@pytest.mark.parametrize("model", list(MODELS))
def test_pod_config_keeps_management_private(model: str) -> None:
    spec = zoo.get(model).spec
    props = cluster_properties(read_properties(ROOT / "config.properties"), spec)
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["enable_model_api"] == "false" and props["install_py_dep_per_model"] == "false"
    assert props["max_request_size"] == read_properties(ROOT / "config.properties")["max_request_size"]
    snapshot = json.loads(props["model_snapshot"])["models"][model][spec.version]
    assert snapshot["marName"] == f"{model}.mar" and snapshot["batchSize"] == spec.serving.batch_size
    findings = audit(props)  # what the pod loosens, on purpose: pod-network addresses, no tokens
    assert sorted(f.split("=")[0].split(" ")[0] for f in findings) == \
        ["disable_token_authorization", "inference_address", "metrics_address"]


def test_cli_writes_the_layout_and_names_what_is_not_built(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from maas.cli import cli

    args = ["--model-store", str(tmp_path / "empty"), "export-kserve", "digits",
            "--kserve-dir", str(tmp_path / "k"), "--kubernetes-dir", str(tmp_path / "p")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "storage" / "digits" / "config" / "config.properties").is_file()
    assert (tmp_path / "k" / "digits.yaml").is_file() and not (tmp_path / "k" / "minilm.yaml").exists()
    assert "not built" in result.output
    bad = CliRunner().invoke(cli, ["export-kserve", "resnet", "--kserve-dir", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown model" in bad.output


def test_pods_keep_serving_while_they_leave_the_endpoints() -> None:
    """A terminating pod is taken out of its Service while it gets SIGTERM: the preStop sleep
    keeps it answering the connections still sent to it, within the grace period."""
    runtime = yaml.safe_load((COMMITTED[0] / "servingruntime.yaml").read_text())
    pods = [d["spec"]["template"]["spec"] for d in docs(COMMITTED[1]) if d["kind"] == "Deployment"]
    assert pods and len(pods) == len(MODELS)
    for container in [*runtime["spec"]["containers"], *(p["containers"][0] for p in pods)]:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and 0 < int(command[1]) <= 10
    assert all(int(p["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1]) + 10
               <= p["terminationGracePeriodSeconds"] for p in pods)
