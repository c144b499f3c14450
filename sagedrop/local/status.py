"""``sagedrop status``: the local cloud's datasets, their runs and endpoints, as text or JSON."""

from __future__ import annotations

import os
from pathlib import Path

from chalicelib import naming
from sagedrop.local import overview, tracking_store
from sagedrop.local.state import State


def status_object(root: Path) -> dict:
    state = State(Path(root) / "state.sqlite")
    try:
        runs = overview.runs(Path(root), state)
        for run in runs:  # the per-epoch series are for reports, not the summary
            for trial in run["trials"]:
                trial.pop("series", None)
            if run["debug_job"]:
                run["debug_job"].pop("series", None)
        prefix = naming.endpoint_prefix(os.environ)
        return {
            "root": str(Path(root).resolve()),
            "datasets": overview.datasets(Path(root), state, runs, prefix),
            "runs": runs,
            "endpoints": overview.endpoints(state),
            "rejected_uploads": overview.rejected_uploads(Path(root)),
            "predictions": len(overview.predictions(Path(root))),
            # Where the pipeline records runs (the root's store unless up was told another).
            "mlflow_tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")
            or tracking_store.store_uri(Path(root)),
        }
    finally:
        state.close()


def print_status(snapshot: dict) -> None:
    if not snapshot["runs"] and not snapshot["rejected_uploads"]:
        print("no runs yet: drop a dataset zip with `sagedrop drop PATH`")
    shown: set[str] = set()
    for dataset in snapshot["datasets"]:
        _print_dataset(dataset)
        for p in snapshot["runs"]:
            if p["name"] in dataset["runs"]:
                _print_run(p)
                shown.add(p["name"])
    for p in snapshot["runs"]:
        if p["name"] not in shown:
            _print_run(p)
    for rejected in snapshot["rejected_uploads"]:
        print(f"rejected {rejected.get('dataset')}: {'; '.join(rejected.get('reasons', []))}")
    for endpoint in snapshot["endpoints"]:
        where = f" 127.0.0.1:{endpoint['port']}" if endpoint["port"] else ""
        print(f"endpoint {endpoint['name']}: {endpoint['status']} ({endpoint['model']}){where}")
        if endpoint.get("failure_reason"):
            print(f"  {endpoint['failure_reason']}")
    print(f"predictions written: {snapshot['predictions']}")


def _print_dataset(dataset: dict) -> None:
    status = dataset["endpoint_status"] or "no endpoint yet"
    serving = dataset["serving_version"]
    print(
        f"dataset {dataset['name']}: endpoint {dataset['endpoint']} {status}"
        + ("" if serving is None else f", serving version {serving}")
        + f"; {len(dataset['runs'])} upload(s), {dataset['predictions']} prediction(s)"
    )
    for v in dataset["versions"]:
        accuracy = "-" if v["test_accuracy"] is None else f"{v['test_accuracy']:.4f}"
        mark = "*" if v["serving"] else " "
        print(f"  {mark} v{v['number']:<3} {v['approval']:<21} test_accuracy {accuracy}  "
              f"{v['debug_job']}")  # fmt: skip


def _print_run(p: dict) -> None:
    tuning = p["tuning"]
    best = tuning["best_objective"]
    print(f"{p['name']}  dataset {p['dataset']}")
    print(
        f"  tuning   {tuning['status']:<11} trials {tuning['trials_started']}/"
        f"{tuning['trials_planned']}"
        + ("" if best is None else f", best valid_accuracy {best:.4f} ({tuning['best_job']})")
    )
    if tuning.get("failure_reason"):
        print(f"           {tuning['failure_reason']}")
    waiting = [t for t in p["trials"] if t.get("secondary_status") == "Pending"]
    if waiting:
        print(f"           {len(waiting)} trial(s) waiting for a free local training slot")
    debug = p["debug_job"]
    if debug:
        accuracy = debug["test_accuracy"]
        pending = debug.get("secondary_status") == "Pending"
        print(
            f"  debug    {debug['status']:<11} {debug['name']}"
            + ("" if accuracy is None else f", test_accuracy {accuracy:.4f}")
            + (" (waiting for a free local training slot)" if pending else "")
        )
        flagged = [r for r in debug["rules"] if r["RuleEvaluationStatus"] != "NoIssuesFound"]
        if debug["rules"]:
            print(
                f"  rules    {len(debug['rules']) - len(flagged)} NoIssuesFound"
                + "".join(
                    f"; {r['RuleConfigurationName']}: {r['RuleEvaluationStatus']}" for r in flagged
                )
            )
        for rule in flagged:
            details = rule.get("StatusDetails", "")
            details = details if len(details) <= 110 else details[:107] + "..."
            print(f"           {rule['RuleConfigurationName']}: {details}")
        if debug.get("report"):
            print(f"  report   {debug['report']}")
        if debug.get("tensorboard"):
            print(f"  tensorboard --logdir {debug['tensorboard']}")
    if p["gate"]:
        print(f"  gate     {p['gate'].get('decision')}")
    print(f"  model    {p['model'] or '-'}  predictions {p['predictions']}")
