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
from datetime import UTC, datetime

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from hyperparameter_rules import HyperparameterError, check_job_hyperparameters
from job_contract import emit_metrics
from sagedrop_debugging.debug_session import DebugOptions, DebugSession, parse_trace_steps
from sagedrop_debugging.rule_base import RuleConfigError
from sagedrop_debugging.rule_set import parse_rules_config
from sagedrop_serving.image_io import AUGMENTATIONS, Preprocessing, eval_transform, train_transform
from sagedrop_serving.model_def import (
    BACKBONES,
    FREEZE_MODES,
    PRETRAINED_MODES,
    WeightsUnavailable,
    apply_freeze,
    build_classifier,
    load_imagenet_weights,
    resolve_freeze,
)
from sagedrop_training import (
    audit_pass,
    ddp_runtime,
    fit_loop,
    graph_export,
    held_out,
    imagenet_weights,
    run_tracking,
    serving_code,
)
from sagedrop_training.data_audit import LEAKAGE_POLICIES, Fingerprint
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
    Fit,
    NoProbe,
    StopTraining,
    feature_batches,
)

log = logging.getLogger("sagedrop.train")
HERE = os.path.dirname(os.path.abspath(__file__))
# What the model artifact's code/ folder needs to serve on its own, laid there flat.
SERVING_DIR = os.path.join(HERE, "sagedrop_serving")
MAX_PARITY_IMAGES = 2000  # validation images the exported graph is checked on
ARTIFACT_FORMAT = 1


def boolean(text: str) -> bool:
    value = str(text).strip().strip("\"'").lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def choice(options):
    """A choices= that also accepts the JSON-quoted strings SageMaker tools sometimes pass."""

    def parse(text: str) -> str:
        value = str(text).strip().strip("\"'").lower()
        if value not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse prints its usage text and exits 2 on a bad value; a job's failure reason
    should be the one line that says which hyperparameter was wrong."""

    def error(self, message: str):
        raise HyperparameterError(f"invalid hyperparameter: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.splitlines()[0])
    hp = p.add_argument_group("hyperparameters (SageMaker passes these as --name value)")
    hp.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    hp.add_argument("--momentum", type=float, default=0.9)
    hp.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    hp.add_argument("--epochs", type=int, default=5)
    hp.add_argument("--backbone", type=choice(tuple(BACKBONES)), default="resnet18")
    hp.add_argument(
        "--pretrained",
        type=choice(PRETRAINED_MODES),
        default="auto",
        help="auto: ImageNet weights when a file is there; true: required; false: never "
        "(nothing is ever downloaded)",
    )
    hp.add_argument(
        "--weights-path",
        default=None,
        help="local ImageNet weights (default: the weights channel, then the torch hub cache)",
    )
    hp.add_argument(
        "--freeze",
        type=choice(FREEZE_MODES),
        default="auto",
        help="auto: backbone with ImageNet weights, none without",
    )
    hp.add_argument("--weight-decay", type=float, default=1e-4)
    hp.add_argument("--image-size", type=int, default=224)
    hp.add_argument("--augment", type=choice(AUGMENTATIONS), default="flip-crop")
    hp.add_argument("--lr-schedule", type=choice(("cosine", "constant")), default="cosine")
    hp.add_argument("--seed", type=int, default=0)
    hp.add_argument("--num-workers", type=int, default=-1, help="-1: one per spare CPU, up to 8")
    hp.add_argument(
        "--cache-features",
        type=choice(("auto", "true", "false")),
        default="auto",
        help="auto: with a frozen backbone, train the head on features computed once",
    )
    hp.add_argument("--valid-fraction", type=float, default=0.1)
    hp.add_argument("--test-fraction", type=float, default=0.1)
    hp.add_argument("--top-k", type=int, default=5, help="labels the served model returns")
    hp.add_argument(
        "--leakage",
        type=choice(LEAKAGE_POLICIES),
        default="leave-out",
        help="valid/test images that duplicate a training image: left out of evaluation, "
        "or kept (the data audit counts them either way)",
    )
    hp.add_argument(
        "--export-graph",
        type=choice(graph_export.EXPORT_MODES),
        default="auto",
        help="an ONNX graph beside model.pt, served if it passes parity; auto: for a model "
        "that can be deployed (the debug job, a run by hand), not for tuning trials",
    )
    hp.add_argument(
        "--quantise",
        type=choice(graph_export.QUANTISE_MODES),
        default="none",
        help="int8: serve an int8 graph if it costs at most 0.01 validation accuracy",
    )
    hp.add_argument(
        "--debug",
        type=boolean,
        default=False,
        help="record tensors and profile the run (the debug/profile job)",
    )
    dbg = p.add_argument_group("debug job (with --debug true)")
    dbg.add_argument(
        "--rules",
        default="",
        help='JSON: rule parameters by rule name, e.g. {"Overfit": {"patience": 3}, '
        '"StepOutlier": false, "VanishingGradient": {"stop": true}}',
    )
    dbg.add_argument("--debug-save-interval", type=int, default=50, help="steps between saves")
    dbg.add_argument("--profiler-interval-ms", type=int, default=500)
    dbg.add_argument(
        "--profiler-trace-steps", default="", help="torch.profiler trace of these steps, e.g. 5-8"
    )
    dbg.add_argument(
        "--tensorboard-dir",
        default=None,
        help="default: SM_OUTPUT_DIR/tensorboard (what TensorBoardOutputConfig uploads)",
    )
    io = p.add_argument_group("locations (SageMaker sets these through SM_* variables)")
    io.add_argument("--data", default=None, help="zip or folder; default: SM_CHANNEL_TRAINING")
    io.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    io.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "output"))
    io.add_argument("--work-dir", default=None, help="where a zip is extracted (default: temp)")
    io.add_argument("--device", type=choice(("auto", "cpu", "cuda")), default="auto")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments, checked; raises ``HyperparameterError`` naming the one that is wrong.

    In a SageMaker job (``SM_HPS`` set by the toolkit) every hyperparameter must also be
    on the shared allow-list with a bounded value: a request that slipped a path or a
    framework key past the upload checks still cannot steer this job.
    """
    received = {}
    if "SM_HPS" in os.environ:
        try:
            received = json.loads(os.environ["SM_HPS"])
        except ValueError:
            raise HyperparameterError("SM_HPS is not a JSON object") from None
        received = received if isinstance(received, dict) else {}
        check_job_hyperparameters(received)
    args, unknown = build_parser().parse_known_args(argv)
    if isinstance(received.get("rules"), dict):
        # A request that passed rules as a JSON object (not as JSON text) reaches the
        # command line as the toolkit's "Overfit={...},StepOutlier=False"; SM_HPS still
        # holds the object itself.
        args.rules = json.dumps(received["rules"])
    if unknown:
        log.warning("ignoring arguments this script does not know: %s", " ".join(unknown))
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.image_size < 16:
        raise HyperparameterError("epochs and batch-size must be >= 1, lr > 0, image-size >= 16")
    if args.debug_save_interval < 1 or args.profiler_interval_ms < 10:
        raise HyperparameterError("debug-save-interval must be >= 1 and profiler-interval-ms >= 10")
    try:
        parse_trace_steps(args.profiler_trace_steps)
    except ValueError as exc:
        raise HyperparameterError(f"profiler-trace-steps: {exc}") from None
    return args


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
    model.to(runtime.device, memory_format=torch.channels_last)
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
        recorded = model.fc if use_cache else model
        session = _start_debug_session(args, runtime, recorded, rules_config, use_cache)
        log.info("debug run: rules and profiler report are written to %s", args.output_data_dir)

    try:
        if use_cache:
            plan, test_batches, unreadable, audit = _cached_feature_fit(
                args, runtime, data, model, pre
            )
        else:
            workers = _num_workers(args.num_workers)
            audit = audit_pass.audit_images(runtime, data, pre.resize_size, workers, args.leakage)
            plan, test_batches, unreadable = _image_fit(args, runtime, data, model, pre)
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
    outputs: list | None = [] if _served_later(args) else None
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
        _save_artifact(args, data, model, pre, pretrained, freeze, summary)
        log.info("model saved to %s (%.1fs)", args.model_dir, summary["seconds"])
    return 0


def _image_fit(args, runtime, data: PreparedDataset, model: nn.Module, pre: Preprocessing):
    """Train the whole model (or its unfrozen part) on augmented images, epoch by epoch."""
    per_process_batch = max(1, args.batch_size // runtime.world_size)
    workers = _num_workers(args.num_workers)
    draft = pre.resize_size
    train_set = ImageFileDataset(data.splits["train"], train_transform(pre, args.augment), draft)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = (
        DistributedSampler(train_set, seed=args.seed, drop_last=False)
        if runtime.distributed
        else None
    )
    loader_options = dict(
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=collate_skipping_unreadable,
        prefetch_factor=4 if workers > 0 else None,
    )
    train_loader = DataLoader(
        train_set,
        batch_size=per_process_batch,
        sampler=sampler,
        shuffle=sampler is None,
        generator=generator,
        drop_last=len(train_set) > per_process_batch * runtime.world_size,
        **loader_options,
    )

    def train_batches(epoch: int) -> DataLoader:
        if sampler is not None:
            sampler.set_epoch(epoch)
        return train_loader

    def eval_loader(split: str) -> DataLoader:
        items = ddp_runtime.shard(data.splits[split], runtime)
        dataset = ImageFileDataset(items, eval_transform(pre), draft)
        return DataLoader(
            dataset, batch_size=per_process_batch * 2, shuffle=False, **loader_options
        )

    valid_loader = eval_loader("valid")
    optimizer = _optimizer(args, model.parameters())
    plan = Fit(
        model=model,
        trained=DistributedDataParallel(model) if runtime.distributed else model,
        evaluated=model,
        train_batches=train_batches,
        valid_batches=lambda: valid_loader,
        optimizer=optimizer,
        scheduler=_scheduler(args, optimizer),
    )
    return plan, lambda: eval_loader("test"), set()


def _cached_feature_fit(args, runtime, data, model: nn.Module, pre: Preprocessing):
    """Frozen backbone: its features never change, so compute them once per image.

    Each epoch is then a few matrix products on the head, through the same loop as
    images. Training images get the evaluation transform here (no augmentation): the
    price of computing them once.
    """
    workers = _num_workers(args.num_workers)
    started = time.perf_counter()
    features, shard_prints = {}, {}
    for split in ("train", "valid", "test"):
        items = ddp_runtime.shard(data.splits[split], runtime)
        *features[split], shard_prints[split] = _cached_features(
            args, runtime, data, model, pre, split, items, workers
        )
    log.info(
        "backbone features computed once in %.1fs; augmentation is off on this path",
        time.perf_counter() - started,
    )
    features, unreadable, audit = audit_pass.audit_features(
        runtime, data, features, shard_prints, args.leakage, args.seed, _served_later(args)
    )
    head = model.fc
    optimizer = _optimizer(args, head.parameters())
    generator = torch.Generator().manual_seed(args.seed + runtime.rank)
    per_process_batch = max(1, args.batch_size // runtime.world_size)
    x_train, y_train = features["train"]

    def in_order(split: str):
        x, y = features[split]
        return lambda: feature_batches(x, y, per_process_batch * 2)

    plan = Fit(
        model=model,
        trained=DistributedDataParallel(head) if runtime.distributed else head,
        evaluated=head,
        train_batches=lambda _: feature_batches(x_train, y_train, per_process_batch, generator),
        valid_batches=in_order("valid"),
        optimizer=optimizer,
        scheduler=_scheduler(args, optimizer),
    )
    return plan, in_order("test"), unreadable, audit


def _cached_features(args, runtime, data, model, pre, split, items, workers):
    """Features for one split, reused across runs through SAGEDROP_FEATURE_CACHE if set.

    Tuning trials on one host share the same frozen backbone and images; the local cloud
    points them at one cache so only the first trial pays for the forward passes.
    """
    cache_dir = os.environ.get("SAGEDROP_FEATURE_CACHE")
    cache_file = None
    if cache_dir and args.weights_path is None:
        key = hashlib.sha256(
            json.dumps(
                [
                    data.fingerprint(),
                    split,
                    args.backbone,
                    args.pretrained,
                    pre.to_dict(),
                    "pil-eval-transform",  # how those pixels are made (image_io.EvalTransform)
                    "fingerprints-1",  # what data_audit reads of each image
                    runtime.rank,
                    runtime.world_size,
                    torch.__version__,
                ]
            ).encode()
        ).hexdigest()[:24]
        cache_file = os.path.join(cache_dir, f"features-{key}.pt")
        if os.path.exists(cache_file):
            cached = torch.load(cache_file, map_location=runtime.device, weights_only=True)
            log.info("reusing cached %s features from %s", split, cache_file)
            prints = [Fingerprint.from_dict(p) for p in cached["prints"]]
            return cached["x"], cached["y"], prints
    dataset = ImageFileDataset(items, eval_transform(pre), pre.resize_size, fingerprints=True)
    loader = DataLoader(
        dataset,
        batch_size=128,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        collate_fn=collate_skipping_unreadable,
    )
    prints: list[Fingerprint] = []
    x, y, _ = fit_loop.extract_features(model, loader, runtime, prints)
    if cache_file:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{cache_file}.{os.getpid()}.tmp"
        saved = [p.to_dict() for p in prints]
        torch.save({"x": x.cpu(), "y": y.cpu(), "prints": saved}, tmp)
        os.replace(tmp, cache_file)
    return x, y, prints


def _served_later(args) -> bool:
    """A run whose model can be deployed: the debug job, or a run by hand; not a trial."""
    return bool(args.debug) or "SM_HPS" not in os.environ


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
    served_later = _served_later(args)
    if args.export_graph == "none" or (args.export_graph == "auto" and not served_later):
        return {"served": False, "reason": f"not exported (export-graph={args.export_graph})"}
    os.makedirs(args.model_dir, exist_ok=True)
    items = data.splits["valid"][:MAX_PARITY_IMAGES]
    loader = DataLoader(
        ImageFileDataset(items, eval_transform(pre), pre.resize_size),
        batch_size=32,
        num_workers=min(2, _num_workers(args.num_workers)),
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
        "num_workers": _num_workers(args.num_workers),
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


def _optimizer(args, params) -> torch.optim.Optimizer:
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.SGD(
        trainable, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )


def _scheduler(args, optimizer):
    if args.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _num_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) - 1))


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


def _save_artifact(args, data, model, pre, pretrained, freeze, summary) -> None:
    """Weights, classes, config and serving code: everything the endpoint needs, in one dir."""
    os.makedirs(args.model_dir, exist_ok=True)
    os.makedirs(args.output_data_dir, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(args.model_dir, "model.pt"))
    classes = [
        {"index": i, "folder": folder, "label": label}
        for i, (folder, label) in enumerate(zip(data.classes, data.labels, strict=True))
    ]
    _write_json(os.path.join(args.model_dir, "classes.json"), classes)
    hyperparameters = {
        k: v
        for k, v in vars(args).items()
        if k not in ("data", "model_dir", "output_data_dir", "work_dir")
    }
    config = {
        "format_version": ARTIFACT_FORMAT,
        "backbone": args.backbone,
        "num_classes": len(data.classes),
        "preprocessing": pre.to_dict(),
        "draft_size": pre.resize_size,
        "top_k": args.top_k,
        "pretrained": pretrained,
        "freeze": freeze,
        "hyperparameters": hyperparameters,
        "metrics": {"test_loss": summary["test_loss"], "test_accuracy": summary["test_accuracy"]},
        "test_coverage": summary["test_coverage"],
        # The ONNX graph's verdict: served (passed parity) or why the eager model serves.
        "optimised_graph": summary["optimised_graph"],
        "torch_version": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # The model's version: the job that made it (SageMaker sets TRAINING_JOB_NAME).
        "training_job": os.environ.get("TRAINING_JOB_NAME"),
    }
    _write_json(os.path.join(args.model_dir, "config.json"), config)
    serving_code.write_serving_code(
        args.model_dir,
        SERVING_DIR,
        bool(summary["optimised_graph"].get("served")),
        serving_code.inference_wheels(),
    )
    _write_json(os.path.join(args.output_data_dir, "training_summary.json"), summary)


def _write_json(path: str, data) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, allow_nan=True)
        handle.write("\n")


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
