"""The judged debug job as the next version of its dataset's Model Registry group, with
the gate's approval, and the notice that says what it gets wrong: its metrics, the
worst class, the data audit's headline, the rules' reasons."""

from __future__ import annotations

from typing import Literal

from chalicelib import (
    job_reports,
    judging,
    naming,
    registry,
    registry_requests,
    run_recording,
    sagemaker_requests,
    vocabulary,
)
from chalicelib.clients import client
from chalicelib.notify import Notice
from chalicelib.outcome import Outcome
from chalicelib.settings import Settings


def register(
    settings: Settings,
    training: dict,
    upload: vocabulary.Upload,
    group: str,
    endpoint: str,
    judgement: judging.Judgement,
) -> Outcome:
    """The judged model as the group's next version, with the gate's approval."""
    name = training["TrainingJobName"]
    sagemaker = client("sagemaker")
    decision, approval = judgement.decision, judgement.approval
    serving = judgement.tags.get(vocabulary.TAG_SERVING)
    evidence = registry_requests.Evidence(
        test_accuracy=judgement.test_accuracy,
        rules=judgement.rules,
        classes=judgement.classes,
        reports=judgement.reports.uris,
        evaluation=judgement.evaluation,
        audit=judgement.audit,
    )
    request = registry_requests.model_package_request(
        settings,
        upload,
        training,
        group,
        approval=approval,
        description=registry.gate_description(approval, name, decision.reasons),
        serving=serving or sagemaker_requests.serving_tag(settings),
        evidence=evidence,
    )
    arn = sagemaker.create_model_package(**request)["ModelPackageArn"]
    version = arn.rsplit("/", 1)[-1]
    pipeline = naming.pipeline_name(upload.key)
    summaries: dict[str, tuple[Literal["blocked", "pending-approval", "approved"], str]] = {
        registry.REJECTED: (
            "blocked",
            f"Model from {name} is version {version} of {group}, Rejected: the quality gate "
            f"blocked it; {endpoint} keeps serving what it serves.",
        ),
        registry.PENDING: (
            "pending-approval",
            f"Model from {name} passed the gate and is version {version} of {group}, waiting "
            f"for approval: `sagedrop approve {pipeline} --version {version}` (or approve it "
            "in SageMaker Studio) deploys it.",
        ),
        registry.APPROVED: (
            "approved",
            f"Model from {name} passed the gate and is version {version} of {group}, Approved: "
            f"{endpoint} will serve it.",
        ),
    }
    status, summary = summaries[approval]
    package = {"ModelPackageArn": arn, "ModelApprovalStatus": approval,
               "ModelPackageVersion": version}  # fmt: skip
    tracked = run_recording.debug_registered(
        settings, training, upload, package,
        {**judgement.final_metrics, **_evaluation_metrics(judgement.evaluation)},
        judgement.reports.uris,
    )  # fmt: skip
    notice = Notice(
        stage="gate",
        status=status,
        dataset=upload.uri,
        jobs={"debug job": name, "model package": arn, "endpoint": endpoint},
        metrics={
            **{
                k: v
                for k, v in judgement.final_metrics.items()
                if k.startswith(("test_", "valid_"))
            },
            **_evaluation_metrics(judgement.evaluation),
            **_audit_metrics(judgement.audit),
        },
        decision=decision.verdict,
        reasons=decision.reasons
        + _worst_class_line(judgement.evaluation)
        + ([job_reports.audit_line(judgement.audit)] if judgement.audit else [])
        + [f"report: {p}" for p in judgement.reports.problems]
        + tracked.notice_line(),
        summary=summary,
    )
    return Outcome(status, [notice], [f"ModelVersions{approval}"])


def _evaluation_metrics(evaluation: dict) -> dict[str, float]:
    overall = evaluation.get("overall") or {}
    names = {"macro_f1": "test_macro_f1", "balanced_accuracy": "test_balanced_accuracy",
             "top5_accuracy": "test_top5_accuracy"}  # fmt: skip
    metrics = {label: float(overall[key]) for key, label in names.items() if key in overall}
    if evaluation.get("calibration"):
        metrics["test_ece"] = float(evaluation["calibration"]["ece"])
    return metrics


def _audit_metrics(audit: dict | None) -> dict[str, float]:
    if not audit:
        return {}
    metrics = {
        "leaked test images": float(audit["leaked"]["test"]),
        "leaked test fraction": audit["leaked_test_fraction"],
        "near duplicates": float(audit["near_duplicates"]),
    }
    if audit.get("label_error_candidates") is not None:
        metrics["label-error candidates"] = float(audit["label_error_candidates"])
    return metrics


def _worst_class_line(evaluation: dict) -> list[str]:
    worst = evaluation.get("worst_class")
    if not worst:
        return []
    return [f"worst class: {worst['label']} (recall {worst['recall']:.4f} on "
            f"{worst['support']} test images)"]  # fmt: skip
