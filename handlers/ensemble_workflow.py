"""Function nodes of the `maintenance-ensemble` TorchServe workflow.

    pre -> m0, m1, ..., m{N-1} (independently trained maintenance models) -> aggregate

`pre` hands each request body to every member unchanged (each member validates it as the
single model does). `aggregate` gets one JSON answer per member, keyed by member node name,
and returns the mean failure probability f(x) = 1/N sum g_i(x), each member's answer and
their spread. TorchServe runs these functions one request at a time.

TorchServe 0.12 answers every workflow prediction with HTTP 200 whatever status a node sets:
a client's mistake (a member's 4xx) comes back as the member's JSON error body; a member that
failed on its side makes `aggregate` raise, which TorchServe turns into a 500.
"""
import json
import statistics
from pathlib import Path

from http_reply import json_body, set_status

SETTINGS = {}  # ensemble.json from the .war, read when TorchServe loads the node: {"threshold": ...}


def _load(context):
    SETTINGS.update(json.loads((Path(context.system_properties["model_dir"]) / "ensemble.json").read_text()))


def pre(data, context):
    if not data:  # TorchServe calls every function node once with no data when it loads
        return None
    # A falsy body ([] or 0) is still the client's body: members answer it with their own 400.
    return [row["data"] if row.get("data") is not None else row.get("body", b"") for row in data]


def _record_answer(per_member):
    """per_member: {node: one maintenance answer} -> the ensemble's answer for one record."""
    probs = {node: float(a["failure_probability"]) for node, a in sorted(per_member.items())}
    mean = statistics.fmean(probs.values())
    modes = {}
    for answer in per_member.values():
        for mode, p in answer["failure_modes"].items():
            modes.setdefault(mode, []).append(float(p))
    return {
        "failure_probability": round(mean, 6),
        "failure": mean >= SETTINGS["threshold"],
        "failure_modes": {m: round(statistics.fmean(v), 6) for m, v in modes.items()},
        "members": {node: round(p, 6) for node, p in probs.items()},
        "spread": {"std": round(statistics.pstdev(probs.values()), 6), "min": round(min(probs.values()), 6),
                   "max": round(max(probs.values()), 6), "members": len(probs)},
    }


def aggregate(data, context):
    if not data:  # the load call: read the threshold the members use
        _load(context)
        return None
    out = []
    for idx, row in enumerate(data):
        answers = {node: json.loads(value) for node, value in row.items()}
        errors = [a for a in answers.values() if isinstance(a, dict) and "failure_probability" not in a]
        failed = [a for a in errors if not (isinstance(a.get("code"), int) and 400 <= a["code"] < 500)]
        if failed:
            # A member failed on its side (not the client's mistake): TorchServe 0.12 answers every
            # workflow prediction with 200, so only an exception makes this a 5xx for the client.
            raise RuntimeError(f"an ensemble member failed: {str(failed[0].get('message'))[:200]}")
        if errors:  # every member validates the same way: pass the first member's 4xx on, status included
            code = errors[0].get("code")
            set_status(context, idx, code if isinstance(code, int) and 400 <= code < 600 else 400)
            out.append(json_body(errors[0]))
            continue
        first = next(iter(answers.values()))
        if isinstance(first, list):  # a list of records: combine record by record
            out.append(json_body([_record_answer({node: a[i] for node, a in answers.items()}) for i in range(len(first))]))
        else:
            out.append(json_body(_record_answer(answers)))
    return out
