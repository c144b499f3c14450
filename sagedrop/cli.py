"""The ``sagedrop`` command line.

``sagedrop dataset sample|check|pack`` work on datasets; ``sagedrop demo`` runs the whole
thing on the local cloud; ``up``, ``drop``, ``status`` and ``report`` run and inspect the
local cloud; ``sagedrop rules evaluate`` judges a debug job's trace again offline;
``sagedrop aws configure|deploy`` connect the pipeline to an AWS account.
Each command prints what a person needs and exits non-zero when something is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from chalicelib import naming
from sagedrop.sample_data import pack_dataset, write_sample_dataset
from sagedrop_contract.dataset_rules import DatasetReport, inspect_path

DEFAULT_ROOT = ".sagedrop"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagedrop", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    dataset = commands.add_parser("dataset", help="make, check and pack datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    sample = dataset_commands.add_parser(
        "sample", help="write the digits sample dataset (folder and zip) into DIR"
    )
    sample.add_argument("dir")
    sample.add_argument("--size", type=int, default=32, help="image side in pixels")
    sample.add_argument("--per-class", type=int, default=None, help="cap images per class")
    sample.add_argument("--classes", type=int, default=10, choices=range(2, 11), metavar="2..10")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=_sample)

    check = dataset_commands.add_parser(
        "check",
        help="report on a dataset zip or folder: its layout, then the job's pixel audit "
        "(duplicates, leakage across splits, label conflicts, imbalance)",
    )
    check.add_argument("path")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--listing-only",
        action="store_true",
        help="judge names and the zip's declared CRC-32s only (what the upload Lambda "
        "does); decode no image",
    )
    check.add_argument("--workers", type=int, default=None, help="decoding processes")
    check.set_defaults(handler=_check)

    pack = dataset_commands.add_parser("pack", help="check a dataset folder and zip it")
    pack.add_argument("folder")
    pack.add_argument("out_zip")
    pack.set_defaults(handler=_pack)

    demo = commands.add_parser("demo", help="run the pipeline end to end on the sample data")
    demo.add_argument("--root", default=".sagedrop-demo", help="working folder (recreated)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per trial")
    demo.set_defaults(handler=_demo)

    up = commands.add_parser("up", help="run the local cloud in the foreground (Ctrl-C stops)")
    up.add_argument("--root", default=DEFAULT_ROOT)
    up.set_defaults(handler=_up)
    drop = commands.add_parser(
        "drop", help="zips to the data bucket (datasets/), images to the inference bucket"
    )
    drop.add_argument("paths", nargs="+", metavar="PATH")
    drop.add_argument("--root", default=DEFAULT_ROOT)
    drop.add_argument(
        "--dataset",
        default=None,
        help="images: the dataset whose model labels them (images/<dataset>/); "
        "default: the only dataset being served (or dropped)",
    )
    drop.set_defaults(handler=_drop)
    status = commands.add_parser(
        "status", help="datasets, their runs (one per upload) and endpoints at a glance"
    )
    status.add_argument("--root", default=DEFAULT_ROOT)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=_status)
    mlflow_ui = commands.add_parser(
        "mlflow", help="MLflow's UI over the local cloud's runs, on 127.0.0.1 (Ctrl-C stops)"
    )
    mlflow_ui.add_argument("--root", default=DEFAULT_ROOT)
    mlflow_ui.add_argument("--port", type=int, default=5000)
    mlflow_ui.set_defaults(handler=_mlflow)
    report = commands.add_parser(
        "report", help="one HTML page: a dataset's versions side by side, or one run"
    )
    report.add_argument("name", help="a dataset, or a run: its tuning job's name (see status)")
    report.add_argument("--root", default=DEFAULT_ROOT)
    report.add_argument("--out", default=None, help="default: <root>/reports/NAME.html")
    report.set_defaults(handler=_report)

    models = commands.add_parser(
        "models", help="each dataset's model versions in Model Registry, and which one serves"
    )
    models.add_argument("name", nargs="?", default=None, help="one dataset (default: all)")
    models.add_argument("--json", action="store_true", help="one JSON object")
    _where(models)
    models.set_defaults(handler=_models)
    approve = commands.add_parser(
        "approve", help="approve (or --reject) one version; the newest approved one serves"
    )
    approve.add_argument("name", help="the dataset")
    approve.add_argument("--version", type=int, required=True)
    approve.add_argument("--reject", action="store_true", help="reject it instead")
    approve.add_argument("--why", default=None, help="recorded as the ApprovalDescription")
    approve.add_argument(
        "--override",
        action="store_true",
        help="approve a version the quality gate Rejected (its reasons go into the notice)",
    )
    _where(approve)
    approve.set_defaults(handler=_approve)
    rollback = commands.add_parser(
        "rollback", help="serve an earlier approved version again (newer ones are rejected)"
    )
    rollback.add_argument("name", help="the dataset")
    rollback.add_argument(
        "--version", type=int, default=None, help="default: the approved one before the serving"
    )
    rollback.add_argument(
        "--override", action="store_true", help="roll back to a version the quality gate Rejected"
    )
    _where(rollback)
    rollback.set_defaults(handler=_rollback)

    rules = commands.add_parser("rules", help="debug and profiler rules, offline")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    evaluate = rules_commands.add_parser(
        "evaluate", help="judge a debug job's trace again (same verdicts, or new parameters)"
    )
    evaluate.add_argument(
        "path", help="debug_trace.jsonl, a folder or output.tar.gz holding it, or a local job name"
    )
    evaluate.add_argument("--root", default=DEFAULT_ROOT, help="for a local job name")
    evaluate.add_argument(
        "--rules", default=None, help="JSON parameters by rule name; default: the job's own"
    )
    evaluate.add_argument("--report", default=None, help="also write report.html here")
    evaluate.add_argument("--json", action="store_true", help="verdicts as JSON")
    evaluate.add_argument(
        "--fail-on-issues", action="store_true", help="exit 3 when a rule finds issues"
    )
    evaluate.set_defaults(handler=_rules_evaluate)

    aws = commands.add_parser("aws", help="connect the pipeline to an AWS account")
    aws_commands = aws.add_subparsers(dest="aws_command", required=True)
    configure = aws_commands.add_parser(
        "configure",
        help="read the CloudFormation stack, upload the training code, write the Chalice stage",
    )
    configure.add_argument("--stack", required=True, help="stack made from pipeline.yaml")
    configure.add_argument("--region", default=None, help="default: the AWS CLI's region")
    configure.add_argument("--stage", default="prod", help="Chalice stage (default prod)")
    configure.add_argument("--profile", default=None, help="AWS profile")
    configure.add_argument("--training-instance-type", default="ml.g4dn.xlarge")
    configure.add_argument("--inference-instance-type", default="ml.m5.large")
    configure.set_defaults(handler=_aws_configure)
    deploy = aws_commands.add_parser(
        "deploy", help="chalice deploy for a configured stage, with its bucket names"
    )
    deploy.add_argument("--stage", default="prod")
    deploy.set_defaults(handler=_aws_deploy)
    return parser


def _where(command: argparse.ArgumentParser) -> None:
    """``--root`` (the local cloud, the default) or ``--stage`` (AWS, through boto3)."""
    where = command.add_mutually_exclusive_group()
    where.add_argument("--root", default=None, help=f"a local cloud (default {DEFAULT_ROOT})")
    where.add_argument("--stage", default=None, help="a configured AWS stage (boto3)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "root", None):
        # One absolute root for every command: reports link files by file:// URIs, which
        # a relative path cannot be (`--root .sagedrop`, as the README writes it).
        args.root = str(Path(args.root).expanduser().resolve())
    return int(args.handler(args) or 0)


def _sample(args) -> int:
    folder = write_sample_dataset(
        args.dir, size=args.size, per_class=args.per_class, classes=args.classes, seed=args.seed
    )
    archive = pack_dataset(folder, Path(args.dir) / "digits.zip")
    report = inspect_path(str(folder))
    print(f"wrote {folder} and {archive}")
    _print_report(report, str(archive))
    return 0


def _check(args) -> int:
    report = inspect_path(args.path)
    audit = None
    if report.usable and not args.listing_only:
        from sagedrop import pixel_audit

        try:
            audit = pixel_audit.run(args.path, args.workers, quiet=args.json)
        except pixel_audit.AuditError as exc:
            print(f"sagedrop dataset check: {exc}", file=sys.stderr)
            return 1
    if args.json:
        out = {**report.summary(), "counts": report.counts}
        if audit is not None:
            out["pixel_audit"] = audit
        print(json.dumps(out, indent=2))
    else:
        _print_report(report, args.path)
        if audit is not None:
            from sagedrop import pixel_audit

            pixel_audit.print_audit(audit)
    return 0 if report.usable else 1


def _pack(args) -> int:
    report = inspect_path(args.folder)
    _print_report(report, args.folder)
    if not report.usable:
        print(f"not packed: fix the problems above in {args.folder} first", file=sys.stderr)
        return 1
    print(f"packed {pack_dataset(args.folder, args.out_zip)}")
    return 0


def _mlflow(args) -> int:
    from sagedrop.local import tracking_store

    root = Path(args.root)
    command = tracking_store.ui_command(root, args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {tracking_store.store_uri(root)}")
    with contextlib.suppress(KeyboardInterrupt):
        return subprocess.run(command, check=False).returncode
    return 0


def _demo(args) -> int:
    from sagedrop.demo import run_demo

    return run_demo(args.root, epochs=args.epochs)


def _up(args) -> int:
    import signal
    import threading

    from sagedrop.local.cloud import AlreadyRunning, LocalCloud

    cloud = LocalCloud(args.root)
    try:
        cloud.start()
    except AlreadyRunning as exc:
        print(f"sagedrop up: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    # Both stop it, however it was started: a shell starts background jobs with SIGINT
    # ignored, and Python then raises no KeyboardInterrupt.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"local cloud up on {cloud.root}; drop files with: sagedrop drop PATH --root "
          f"{args.root}  (Ctrl-C stops)", flush=True)  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        while not done.wait(0.5):  # short waits: SIGTERM's handler runs between them
            continue
    print("stopping: running jobs resume on the next `sagedrop up`", flush=True)
    cloud.stop()
    return 0


def _drop(args) -> int:
    from sagedrop.local.drop import drop_files

    try:
        for line in drop_files(args.root, [Path(p) for p in args.paths], args.dataset):
            print(line)
    except ValueError as exc:
        print(f"sagedrop drop: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args) -> int:
    from sagedrop.local.status import print_status, status_object

    if not (Path(args.root) / "state.sqlite").exists():
        print(f"sagedrop status: no local cloud under {args.root}", file=sys.stderr)
        return 1
    snapshot = status_object(Path(args.root))
    if args.json:
        print(json.dumps(snapshot, indent=2, default=str))
    else:
        print_status(snapshot)
    return 0


def _report(args) -> int:
    from sagedrop.local import overview
    from sagedrop.local.report import render, render_dataset
    from sagedrop.local.state import State

    root = Path(args.root)
    if not (root / "state.sqlite").exists():
        print(f"sagedrop report: no local cloud under {args.root}", file=sys.stderr)
        return 1
    state = State(root / "state.sqlite")
    try:
        runs = overview.runs(root, state)
        prefix = naming.endpoint_prefix(os.environ)
        datasets = overview.datasets(root, state, runs, prefix)
    finally:
        state.close()
    found = [p for p in runs if p["name"] == args.name]
    dataset = [d for d in datasets if d["name"] == args.name]
    if not found and not dataset:
        print(f"sagedrop report: no dataset or run named {args.name!r} (see sagedrop status)",
              file=sys.stderr)  # fmt: skip
        return 1
    out = Path(args.out) if args.out else root / "reports" / f"{args.name}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(found[0], root) if found else render_dataset(dataset[0], root))
    print(f"wrote {out}")
    return 0


@contextlib.contextmanager
def _registry_target(args, command: str):
    from sagedrop import models

    target = (
        models.aws_target(args.stage)
        if args.stage
        else models.local_target(Path(args.root or DEFAULT_ROOT))
    )
    try:
        yield models, target
    finally:
        if target.close:
            target.close()


def _registry_command(command: str, args, action) -> int:
    from sagedrop.models import ModelsError

    try:
        with _registry_target(args, command) as (models, target):
            return action(models, target)
    except ModelsError as exc:
        print(f"sagedrop {command}: {exc}", file=sys.stderr)
        return 1


def _models(args) -> int:
    def action(models, target) -> int:
        names = [args.name] if args.name else models.dataset_names(target)
        entries = [models.listing(target, name) for name in names]
        if args.json:
            print(json.dumps({"datasets": entries}, indent=2, default=str))
        elif not entries:
            print("no registered versions yet: a dataset's first one comes from its debug job")
        for entry in [] if args.json else entries:
            models.print_listing(entry)
        return 0

    return _registry_command("models", args, action)


def _approve(args) -> int:
    def action(models, target) -> int:
        verb = "rejected" if args.reject else "approved"
        why = args.why or f"{verb} by hand with sagedrop approve"
        print(
            models.approve(
                target, args.name, args.version, why, reject=args.reject, override=args.override
            )
        )
        return 0

    return _registry_command("approve", args, action)


def _rollback(args) -> int:
    def action(models, target) -> int:
        print(models.rollback(target, args.name, args.version, override=args.override))
        return 0

    return _registry_command("rollback", args, action)


def _rules_evaluate(args) -> int:
    from sagedrop import rules_offline

    try:
        records, verdicts = rules_offline.evaluate(args.path, args.root, args.rules)
    except (OSError, ValueError) as exc:
        print(f"sagedrop rules evaluate: {exc}", file=sys.stderr)
        return 1
    rules_offline.print_verdicts(verdicts, args.json)
    if args.report:
        written = rules_offline.write_report(records, verdicts, args.report)
        print(f"wrote {written}", file=sys.stderr if args.json else sys.stdout)
    if args.fail_on_issues and any(v.status == "IssuesFound" for v in verdicts):
        return 3
    return 0


def _aws_configure(args) -> int:
    import boto3

    from sagedrop import aws_configure

    session = boto3.Session(region_name=args.region, profile_name=args.profile)
    try:
        environment = aws_configure.configure(
            args.stack,
            args.stage,
            session,
            training_instance_type=args.training_instance_type,
            inference_instance_type=args.inference_instance_type,
        )
    except aws_configure.ConfigureError as exc:
        print(f"sagedrop aws configure: {exc}", file=sys.stderr)
        return 1
    print(f"wrote stage {args.stage!r} to {aws_configure.CHALICE_CONFIG}:")
    for name, value in sorted(environment.items()):
        print(f"  {name}={value}")
    print(f"next: sagedrop aws deploy --stage {args.stage}")
    return 0


def _aws_deploy(args) -> int:
    from sagedrop import aws_configure

    try:
        return aws_configure.deploy(args.stage)
    except aws_configure.ConfigureError as exc:
        print(f"sagedrop aws deploy: {exc}", file=sys.stderr)
        return 1


def _print_report(report: DatasetReport, name: str) -> None:
    verdict = "usable" if report.usable else "NOT usable"
    print(f"{name}: {verdict}, {len(report.classes)} classes, {report.image_count()} images")
    if report.classes:
        splits = [s for s in ("train", "valid", "test") if s in report.counts]
        width = max(len(c) for c in report.classes)
        print(f"  {'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
        for folder in report.classes:
            counts = "  ".join(f"{report.counts[s].get(folder, 0):>6}" for s in splits)
            print(f"  {folder:<{width}}  {counts}")
    if report.ignored_files:
        print(f"  ignored files: {report.ignored_files}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    for warning in report.warnings:
        print(f"  warning: {warning}")
