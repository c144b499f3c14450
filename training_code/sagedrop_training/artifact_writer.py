"""The model artifact as ``train.py`` leaves it in ``SM_MODEL_DIR`` (SageMaker tars it
into ``model.tar.gz``): the weights, the descriptors ``artifact_layout`` writes and reads,
and the serving ``code/`` (``serving_code``), plus the job's summary beside it."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import torch

from sagedrop_contract import artifact_layout
from sagedrop_training import serving_code

# What the model artifact's code/ folder needs to serve on its own, laid there flat.
SERVING_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "sagedrop_serving")  # fmt: skip


def save_artifact(args, data, model, pre, pretrained, freeze, summary) -> None:
    """Weights, classes, config and serving code: everything the endpoint needs, in one dir."""
    os.makedirs(args.model_dir, exist_ok=True)
    os.makedirs(args.output_data_dir, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(args.model_dir, artifact_layout.WEIGHTS))
    hyperparameters = {
        k: v
        for k, v in vars(args).items()
        if k not in ("data", "model_dir", "output_data_dir", "work_dir")
    }
    config = {
        "format_version": artifact_layout.FORMAT_VERSION,
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
    classes = artifact_layout.class_entries(data.classes, data.labels)
    artifact_layout.write_descriptors(args.model_dir, config, classes)
    serving_code.write_serving_code(
        args.model_dir,
        SERVING_DIR,
        bool(summary["optimised_graph"].get("served")),
        serving_code.inference_wheels(),
    )
    write_json(os.path.join(args.output_data_dir, artifact_layout.SUMMARY), summary)


def write_json(path: str, data) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, allow_nan=True)
        handle.write("\n")
