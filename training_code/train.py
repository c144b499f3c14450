"""SageMaker script-mode entry point: transfer-learn a ResNet on a dogImages-style dataset.

Runs unchanged in SageMaker's PyTorch container (hyperparameters as ``--name value``,
data in ``SM_CHANNEL_*``, model to ``SM_MODEL_DIR``), in sagedrop's local cloud, under
``torchrun`` for DDP, and by hand (``python train.py --data digits.zip``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sagedrop_contract.hyperparameter_rules import HyperparameterError
from sagedrop_contract.job_contract import emit_metrics
from sagedrop_debugging.debug_session import DebugOptions, DebugSession, parse_trace_steps
from sagedrop_debugging.rule_base import RuleConfigError
from sagedrop_debugging.rule_set import parse_rules_config
from sagedrop_serving.image_io import Preprocessing, eval_transform
from sagedrop_serving.model_def import (
    WeightsUnavailable,
    apply_freeze,
    build_classifier,
    load_imagenet_weights,
    resolve_freeze,
)
from sagedrop_training import (
    artifact_writer,
    audit_pass,
    ddp_runtime,
    fit_loop,
    fit_plans,
    graph_export,
    held_out,
    imagenet_weights,
    run_tracking,
)
from sagedrop_training.data_pipeline import (
    DatasetError,
    ImageFileDataset,
    PreparedDataset,
    collate_skipping_unreadable,
    find_data_source,
    prepare_dataset,
)
from sagedrop_training.fit_loop import (
    NO_PROBE,
    EpochResult,
    NoProbe,
    StopTraining,
)
from sagedrop_training.job_arguments import parse_args

log = logging.getLogger("sagedrop.train")
MAX_PARITY_IMAGES = 2000  # validation images the exported graph is checked on


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except HyperparameterError as exc:
        _setup_logging(None)
        log.error("%s", exc)
        _report_failure(exc)
        return 2
    runtime = ddp_runtime.start(args.device)
    _setup_logging(runtime)
    try:
        return _run(args, runtime)
    except (DatasetError, WeightsUnavailable, RuleConfigError, StopTraining) as exc:
        log.error("%s", exc)
        _report_failure(exc)
        return 1
    finally:
        ddp_runtime.stop()


def _run(args: argparse.Namespace, runtime: ddp_runtime.Runtime) -> int:
    """Train and save; the extraction folder this run made is removed however it ends."""
    source = find_data_source(args.data)
    work_dir = args.work_dir or _default_work_dir(source)
    try:
        return _train_and_save(args, runtime, source, work_dir)
    finally:
        if args.work_dir is None and runtime.local_rank == 0:
            shutil.rmtree(work_dir, ignore_errors=True)


def _train_and_save(args, runtime: ddp_runtime.Runtime, source, work_dir: str) -> int:
    started = time.perf_counter()
    rules_config = parse_rules_config(args.rules) if args.debug else {}
    _seed_everything(args.seed + runtime.rank)
    data = _on_local_main_first(
        runtime,
        lambda: prepare_dataset(
            source, work_dir, args.seed, args.valid_fraction, args.test_fraction
        ),
    )
    log.info(
        "dataset: %d classes; %s images (train/valid/test)",
        len(data.classes),
        "/".join(str(len(data.splits[s])) for s in ("train", "valid", "test")),
    )

    pre = Preprocessing.for_size(args.image_size)
    model = build_classifier(args.backbone, len(data.classes))
    weights, found = (
        (None, "")
        if args.pretrained == "false"
        else imagenet_weights.locate(args.backbone, args.weights_path)
    )
    pretrained = load_imagenet_weights(model, args.backbone, args.pretrained, weights, found)
    freeze = resolve_freeze(args.freeze, pretrained)
    apply_freeze(model, freeze)
    model.to(runtime.device)
    model.to(memory_format=torch.channels_last)
    use_cache = args.cache_features == "true" or (
        args.cache_features == "auto" and freeze == "backbone"
    )
    log.info(
        "backbone %s, pretrained=%s, frozen=%s, cached features=%s, device=%s, processes=%d",
        args.backbone,
        pretrained,
        freeze,
        use_cache,
        runtime.device,
        runtime.world_size,
    )
    tracking = run_tracking.JobRun.from_environment(
        os.environ.get("TRAINING_JOB_NAME"), _job_params(), runtime.is_main
    )
    session: NoProbe = NO_PROBE
    if args.debug and runtime.is_main:
        recorded = cast(nn.Module, model.fc) if use_cache else model
        session = _start_debug_session(args, runtime, recorded, rules_config, use_cache)
        log.info("debug run: rules and profiler report are written to %s", args.output_data_dir)

    try:
        if use_cache:
            plan, test_batches, unreadable, audit = fit_plans.cached_feature_fit(
                args, runtime, data, model, pre
            )
        else:
            workers = fit_plans.num_workers(args.num_workers)
            audit = audit_pass.audit_images(runtime, data, pre.resize_size, workers, args.leakage)
            plan, test_batches, unreadable = fit_plans.image_fit(args, runtime, data, model, pre)
        if runtime.is_main and args.debug:
            session.add_section(audit_pass.report_section(audit, data))
        fitted = fit_loop.fit(
            plan,
            args.epochs,
            runtime,
            session,
            on_epoch=lambda epoch, train, valid: _tracked(
                tracking, _log_epoch(args, runtime, epoch, train, valid)
            ),
        )
    finally:
        session.finish(os.environ.get("TRAINING_JOB_NAME", "local run"))
    history = fitted.history
    unreadable |= fitted.unreadable
    outputs: list | None = [] if fit_plans.served_later(args) else None
    test = fit_loop.evaluate(plan.evaluated, test_batches(), runtime, outputs=outputs)
    unreadable.update(test.unreadable)
    _log_final(runtime, fitted.best, test, unreadable)
    final = {"valid_accuracy": fitted.best.accuracy, "test_loss": test.loss,
             "test_accuracy": test.accuracy}  # fmt: skip
    tracking.finish(final, succeeded=True)
    if outputs is not None:
        _write_evaluation(args, runtime, data, unreadable, outputs)

    untested = _classes_without_test_images(runtime, data, unreadable)
    if untested and runtime.is_main:
        log.warning(
            "%d class(es) have no readable test image left (unreadable, or left out as "
            "copies of training images), so test accuracy says nothing about them: %s",
            len(untested),
            ", ".join(untested[:20]),
        )
    if runtime.is_main:
        audit_pass.write(args.output_data_dir, audit)
        summary = {
            "data_audit": audit.headline,
            "history": history,
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
            "test_coverage": {"classes": len(data.classes), "untested_classes": untested},
            "unreadable_images": sorted(unreadable),
            "dataset": data.report.summary(),
            "split_notes": data.notes,
            "pretrained": pretrained,
            "freeze": freeze,
            "cached_features": use_cache,
            "seconds": time.perf_counter() - started,
            "experiment_tracking": tracking.summary(),
        }
        summary["optimised_graph"] = _optimised_graph(args, data, model, pre)
        artifact_writer.save_artifact(args, data, model, pre, pretrained, freeze, summary)
        log.info("model saved to %s (%.1fs)", args.model_dir, summary["seconds"])
    return 0


def _write_evaluation(args, runtime, data: PreparedDataset, unreadable: set[str], outputs) -> None:
    """``evaluation.json``: what the model gets right and wrong on the test split, and the
    serving version on the same images when the pipeline handed it over."""
    shard = ddp_runtime.shard(data.splits["test"], runtime)
    parts = ddp_runtime.gather(runtime, held_out.outcomes_of(shard, unreadable, outputs, data.root))
    if not runtime.is_main:
        return
    outcomes = held_out.merged(parts)
    serving = held_out.serving_outcomes(data.splits["test"], data.labels, data.root, runtime.device)
    document = held_out.write(
        args.output_data_dir, data.labels, outcomes, args.seed, serving, data.left_out
    )
    if data.left_out.get("test"):
        log.info("evaluation: %d leaked test image(s) left out (data_audit.json names them)",
                 len(data.left_out["test"]))  # fmt: skip
    overall, worst, paired = (
        document.get("overall"),
        document.get("worst_class"),
        document["paired"],
    )
    if overall and worst:
        low, high = (document["intervals"]["macro_f1"][k] for k in ("low", "high"))
        log.info("evaluation: macro-F1 %.4f (95%% CI %.4f-%.4f), worst class %s (recall %.4f), "
                 "ECE %.4f", overall["macro_f1"], low, high, worst["label"], worst["recall"],
                 document["calibration"]["ece"])  # fmt: skip
    if paired["status"] == "compared":
        log.info(
            "serving version on the same %d test images: accuracy %.4f vs this model's %.4f",
            paired["images"],
            paired["serving_accuracy"],
            paired["new_accuracy"],
        )
    else:
        log.info("serving version not compared: %s", paired.get("reason"))


def _optimised_graph(args, data: PreparedDataset, model: nn.Module, pre: Preprocessing) -> dict:
    """Export the ONNX graph into the model directory and judge it on the validation
    split (``graph_export``); the verdict for ``config.json``."""
    deployable = fit_plans.served_later(args)
    if args.export_graph == "none" or (args.export_graph == "auto" and not deployable):
        return {"served": False, "reason": f"not exported (export-graph={args.export_graph})"}
    os.makedirs(args.model_dir, exist_ok=True)
    items = data.splits["valid"][:MAX_PARITY_IMAGES]
    loader = DataLoader(
        ImageFileDataset(items, eval_transform(pre), pre.resize_size),
        batch_size=32,
        num_workers=min(2, fit_plans.num_workers(args.num_workers)),
        collate_fn=collate_skipping_unreadable,
    )
    example = torch.zeros(1, 3, pre.image_size, pre.image_size)
    return graph_export.export_and_verify(model, args.model_dir, example, loader, args.quantise)


def _classes_without_test_images(runtime, data: PreparedDataset, unreadable: set[str]) -> list:
    """Labels of classes none of whose test images could be read, across all processes.

    Such a class is invisible to test accuracy (a dataset whose every 'cat' image is
    corrupt scores 1.0 on the rest); the gate refuses a model whose artifact lists any.
    """
    failed_paths = set()
    for reason in unreadable:  # "<path>: <why>"; a path may itself hold ": "
        at = reason.find(": ")
        while at != -1:
            failed_paths.add(reason[:at])
            at = reason.find(": ", at + 1)
    readable = [0.0] * len(data.classes)
    for path, label in ddp_runtime.shard(data.splits["test"], runtime):
        if path not in failed_paths:
            readable[label] += 1
    totals = ddp_runtime.sum_across(runtime, *readable) if readable else []
    return [data.labels[i] for i, count in enumerate(totals) if count == 0]


def _start_debug_session(args, runtime, recorded: nn.Module, rules_config: dict, use_cache: bool):
    tensorboard_dir = args.tensorboard_dir
    if tensorboard_dir is None:
        base = os.environ.get("SM_OUTPUT_DIR")
        tensorboard_dir = os.path.join(base or args.output_data_dir, "tensorboard")
    options = DebugOptions(
        rules_config=rules_config,
        save_interval=args.debug_save_interval,
        profiler_interval_s=args.profiler_interval_ms / 1000,
        trace_steps=parse_trace_steps(args.profiler_trace_steps),
        tensorboard_dir=tensorboard_dir,
    )
    meta = {
        "job": os.environ.get("TRAINING_JOB_NAME", "local run"),
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "num_workers": fit_plans.num_workers(args.num_workers),
        "device": str(runtime.device),
        "world_size": runtime.world_size,
        "epochs": args.epochs,
        "lr": args.lr,
        "image_size": args.image_size,
        "cached_features": use_cache,
    }
    return DebugSession(
        recorded,
        args.output_data_dir,
        options,
        runtime.device,
        meta,
        stop_within_epoch=not runtime.distributed,
    )


def _tracked(tracking: run_tracking.JobRun, record: dict) -> dict:
    """The epoch's record, also in the job's MLflow run (when it has one)."""
    tracking.epoch(record)
    return record


def _job_params() -> dict[str, str]:
    """The job's hyperparameters as the toolkit handed them (``SM_HPS``), less its own keys."""
    try:
        given = json.loads(os.environ.get("SM_HPS") or "{}")
    except ValueError:
        return {}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in given.items()
            if not k.startswith(("sagemaker_", "_tuning"))}  # fmt: skip


def _log_epoch(args, runtime, epoch, train: EpochResult, valid: EpochResult) -> dict:
    record = {
        "epoch": epoch,
        "train_loss": train.loss,
        "train_accuracy": train.accuracy,
        "valid_loss": valid.loss,
        "valid_accuracy": valid.accuracy,
        "train_samples": train.samples,
        "valid_samples": valid.samples,
        "train_seconds": train.seconds,
    }
    if runtime.is_main:
        emit_metrics(
            epoch=epoch, train_loss=train.loss, valid_loss=valid.loss, valid_accuracy=valid.accuracy
        )
        rate = train.samples / train.seconds if train.seconds > 0 else float("inf")
        log.info(
            "epoch %d/%d: train %.1fs (%.0f img/s), train acc %.4f, valid acc %.4f",
            epoch,
            args.epochs,
            train.seconds,
            rate,
            train.accuracy,
            valid.accuracy,
        )
    return record


def _log_final(runtime, best: fit_loop.BestSoFar, test: EpochResult, unreadable: set[str]) -> None:
    count = int(ddp_runtime.sum_across(runtime, len(unreadable))[0])
    if runtime.is_main:
        log.info("best validation epoch: %d; its weights are kept", best.epoch)
        # The last valid_accuracy a job prints is what SageMaker's tuner takes as the
        # trial's objective: make it the kept (best) epoch's, not the last epoch's.
        emit_metrics(valid_accuracy=best.accuracy, test_loss=test.loss, test_accuracy=test.accuracy)
        if count:
            log.warning("%d unreadable image(s) were skipped:", count)
            for reason in sorted(unreadable)[:20]:
                log.warning("  unreadable: %s", reason)
        else:
            log.info("no unreadable images")


def _on_local_main_first(runtime: ddp_runtime.Runtime, work):
    """Run ``work`` on local rank 0 first (extraction, downloads), then on the other ranks."""
    result = work() if runtime.local_rank == 0 else None
    ddp_runtime.barrier(runtime)
    if runtime.local_rank != 0:
        result = work()
    return result


def _default_work_dir(source) -> str:
    """One folder per run, shared by its DDP ranks (torchrun gives them one run id), so a
    run that removes its folder at the end never pulls files from under another run."""
    run = os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
    digest = hashlib.sha256(json.dumps([source, run], sort_keys=True).encode())
    return os.path.join(tempfile.gettempdir(), f"sagedrop-data-{digest.hexdigest()[:16]}")


def _report_failure(exc: BaseException) -> None:
    """The reason, as the last line on stderr, starting with the built-in error it is.

    SageMaker's PyTorch image runs this script through its training toolkit, and the
    toolkit writes ``output/failure`` (the job's FailureReason) itself: the script's
    stderr from the first line that names a Python error class. A file written here
    would be overwritten; this line becomes the reason's ``ErrorMessage``. Logs and
    warnings go to stdout (``_setup_logging``) so nothing on stderr comes before it.
    """
    builtin = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")
    print(f"{builtin}: {exc}", file=sys.stderr, flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _setup_logging(runtime: ddp_runtime.Runtime | None) -> None:
    """Logs and Python warnings to stdout; stderr is kept for the failure reason."""
    level = logging.INFO if runtime is None or runtime.is_main else logging.WARNING
    prefix = f"[rank {runtime.rank}] " if runtime and runtime.distributed else ""
    logging.basicConfig(
        level=level,
        stream=sys.stdout,
        force=True,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
    )
    logging.captureWarnings(True)


if __name__ == "__main__":
    sys.exit(main())
