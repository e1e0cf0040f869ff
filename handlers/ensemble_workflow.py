"""Function nodes of the `maintenance-ensemble` TorchServe workflow.

    pre -> m0, m1, ..., m{N-1} (independently trained maintenance models) -> aggregate

`pre` hands each request body to every member unchanged (each member validates it as the
single model does). `aggregate` gets one JSON answer per member, keyed by member node name,
and returns the mean failure probability f(x) = 1/N sum g_i(x), each member's answer and
their spread. TorchServe runs these functions one request at a time.
"""
import json
import statistics

THRESHOLD = 0.5


def pre(data, context):
    if not data:  # TorchServe calls every function node once with no data when it loads
        return None
    return [row.get("data") or row.get("body") for row in data]


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
        "failure": mean >= THRESHOLD,
        "failure_modes": {m: round(statistics.fmean(v), 6) for m, v in modes.items()},
        "members": {node: round(p, 6) for node, p in probs.items()},
        "spread": {"std": round(statistics.pstdev(probs.values()), 6), "min": round(min(probs.values()), 6),
                   "max": round(max(probs.values()), 6), "members": len(probs)},
    }


def aggregate(data, context):
    if not data:
        return None
    out = []
    for idx, row in enumerate(data):
        answers = {node: json.loads(value) for node, value in row.items()}
        errors = [a for a in answers.values() if isinstance(a, dict) and "failure_probability" not in a]
        if errors:  # every member validates the same way: pass the first member's 4xx on, status included
            code = int(errors[0].get("code", 400))
            context.set_response_status(code, str(errors[0].get("message", "bad request"))[:200], idx)
            out.append(errors[0])
            continue
        first = next(iter(answers.values()))
        if isinstance(first, list):  # a list of records: combine record by record
            out.append([_record_answer({node: a[i] for node, a in answers.items()}) for i in range(len(first))])
        else:
            out.append(_record_answer(answers))
    return out
