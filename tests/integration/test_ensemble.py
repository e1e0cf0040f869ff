"""maintenance-ensemble: N members behind a TorchServe workflow. The served answer equals the
mean of the members computed in-process; a failing member gives a clear error, not a hang."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import Built, bare_server, package_variant
from maas.deploy import deploy_workflow, registered_workflows, undeploy_workflow
from maas.export.ensemble import WORKFLOW, package_workflow, workflow_spec
from maas.export.variants import held_out_outputs
from maas.export.zoo import maintenance as m


@pytest.fixture(scope="module")
def ensemble(ensemble_built):
    return ensemble_built


def wfpredict(ts, name: str, body: bytes):
    return ts.client.request("inference", "POST", f"/wfpredict/{name}", data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)


def test_ensemble_is_built_only_when_as_good_as_its_best_member(ensemble) -> None:
    result, *_ = ensemble
    rec = result.record
    best = max(v["roc_auc"] for v in rec["members"].values())
    assert set(rec["members"]) == {"m0", "m1", "m2"} and rec["held_out"]["records"] == 6000
    assert result.built == (rec["ensemble"]["roc_auc"] >= best) == rec["ensemble_at_least_best_auroc"]
    if result.built:
        assert result.war.name == f"{WORKFLOW}.war"
    else:  # said so, and the best member is the one to keep
        assert result.war is None and rec["members"][rec["best_member"]]["roc_auc"] == best


def test_served_ensemble_is_the_mean_of_its_members(ensemble, tmp_path_factory) -> None:
    result, work, store, wf_store = ensemble
    ts = bare_server(tmp_path_factory, store, workflow_store=str(wf_store))
    try:
        deploy_workflow(ts.client, wf_store, WORKFLOW)
        assert WORKFLOW in registered_workflows(ts.client)
        records = m.generate(12, seed=31)
        sent = [records.as_json(i) for i in range(12)]
        feats = np.array([[1.0 if r["type"] == t else 0.0 for t in m.PRODUCT_TYPES] + [r[f] for f in m.NUMERIC_FIELDS]
                          for r in sent], dtype=np.float32)  # exactly what the members parse
        onnx = [work / f"maintenance-ens3-m{i}" / "model.onnx" for i in range(3)]
        expected = np.mean([held_out_outputs(p, {"features": feats})[0] for p in onnx], axis=0)
        for i in range(12):
            resp = wfpredict(ts, WORKFLOW, json.dumps(sent[i]).encode())
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert answer["failure_probability"] == pytest.approx(float(expected[i]), abs=1e-5)
            assert answer["failure_probability"] == pytest.approx(np.mean(list(answer["members"].values())), abs=1e-6)
            assert answer["spread"]["members"] == 3 and answer["spread"]["min"] <= answer["spread"]["max"]
        batch = wfpredict(ts, WORKFLOW, json.dumps([records.as_json(i) for i in range(4)]).encode()).json()
        assert len(batch) == 4 and all("members" in a for a in batch)
        # TorchServe 0.12 workflows drop a member's status: the member's 4xx body comes back as is.
        bad = wfpredict(ts, WORKFLOW, json.dumps({**sent[0], "type": "Q"}).encode()).json()
        assert bad["code"] == 400 and bad["field"] == "type"
        undeploy_workflow(ts.client, WORKFLOW)
        assert WORKFLOW not in registered_workflows(ts.client)
    finally:
        ts.stop()


def test_a_failing_member_is_a_clear_error_not_a_hang(ensemble, tmp_path_factory, tmp_path: Path) -> None:
    result, work, store, wf_store = ensemble
    member = Built("maintenance", work / "maintenance-ens3-m0", store / "maintenance-ens3-m0.mar")
    package_variant(member, store, tmp_path, "maintenance-broken",
                    lambda src: src.replace("    def postprocess(self, outputs: Arrays, single: bool) -> Any:\n",
                                            "    def postprocess(self, outputs: Arrays, single: bool) -> Any:\n"
                                            "        raise RuntimeError('member down')\n"))
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    import yaml

    spec = workflow_spec(["maintenance-ens3-m0.mar", "maintenance-broken.mar"], timeout_ms=3000)
    (spec_dir / "workflow.yaml").write_text(yaml.safe_dump(spec))
    package_workflow(spec_dir, wf_store, name="broken-ensemble")
    ts = bare_server(tmp_path_factory, store, workflow_store=str(wf_store))
    try:
        deploy_workflow(ts.client, wf_store, "broken-ensemble")
        started = time.monotonic()
        resp = wfpredict(ts, "broken-ensemble", json.dumps(m.generate(1, seed=2).as_json(0)).encode())
        assert resp.status_code >= 500 and time.monotonic() - started < 20
        assert resp.json().get("message")
    finally:
        ts.stop()
