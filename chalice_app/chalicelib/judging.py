"""Judging a finished debug job: the evidence the quality gate weighs, and its decision.

The evidence is read from SageMaker and S3, never taken from the job's word alone: rule
verdicts from its metrics (and the rules it was asked to run, from its request), the
artifact checked against the dataset's own classes, and the model serving the same
dataset for comparison, only when it answers the same question (the same classes).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass

from botocore.exceptions import ClientError

from chalicelib import job_reports, registry, registry_requests, sagemaker_requests, vocabulary
from chalicelib.artifact_check import artifact_problems, read_artifact
from chalicelib.clients import client
from chalicelib.deploying import describe_endpoint
from chalicelib.gate import (
    GateDecision,
    judge_audit,
    judge_evaluation,
    quality_gate,
)
from chalicelib.outcome import logger
from chalicelib.s3_ranged import S3RangedFile
from chalicelib.settings import Settings
from sagedrop_contract import job_contract
from sagedrop_contract.dataset_rules import inspect_zip
from sagedrop_contract.job_contract import ISSUES


@dataclass
class Judgement:
    decision: GateDecision
    approval: str  # registry.APPROVED | PENDING | REJECTED
    final_metrics: dict[str, float]
    test_accuracy: float | None
    rules: list[dict] | None
    classes: list[str] | None
    reports: job_reports.JobReports
    tags: dict[str, str]  # the debug job's own (its serving choice, its recall floor)

    @property
    def evaluation(self) -> dict:
        return self.reports.evaluation or {}

    @property
    def audit(self) -> dict | None:
        return self.reports.audit


def judge(
    settings: Settings, training: dict, upload: vocabulary.Upload, endpoint: str
) -> Judgement:
    """The gate's decision on a Completed debug job, and the approval it sets."""
    final = {m["MetricName"]: m["Value"] for m in training.get("FinalMetricDataList", [])}
    test_accuracy = final.get("test_accuracy")
    rules = job_contract.rule_statuses(final)
    reports = job_reports.publish(client("s3"), training, final)
    for problem in reports.problems:
        logger.warning("debug job reports: %s", problem)
    for rule in rules or []:
        if rule["RuleEvaluationStatus"] == ISSUES:
            fallback = f"see rules.json and report.html in {job_reports.output_archive(training)}"
            rule["StatusDetails"] = reports.details.get(rule["RuleConfigurationName"]) or fallback
    problems, classes = unservable(training, upload)
    serving_accuracy, not_compared, serving_artifact = serving_accuracy_of(endpoint, classes)
    tags = job_tags(training)
    evidence = judge_evaluation(
        reports.evaluation,
        class_recall_floor(settings, tags),
        stale_comparison(training, serving_artifact),
    )
    judge_audit(reports.audit, settings.gate_max_leaked_fraction, evidence)
    decision = quality_gate(
        rules,
        test_accuracy,
        serving_accuracy,
        settings.gate_blocking_rules,
        settings.gate_tolerance,
        settings.gate_min_test_accuracy,
        artifact_problems=problems,
        expected_rules=job_contract.expected_rules(rules_config_of(training)),
        evidence=evidence,
    )
    if not_compared:
        decision.reasons.append(not_compared)
    if decision.rule:
        decision.reasons.append(decision.rule)
    if not decision.deploy:
        approval = registry.REJECTED
    elif settings.model_approval == "manual":
        approval = registry.PENDING
    else:
        approval = registry.APPROVED
    return Judgement(decision, approval, final, test_accuracy, rules, classes, reports, tags)


def job_tags(training: dict) -> dict[str, str]:
    arn = training.get("TrainingJobArn")
    if not arn:
        return {}
    listed = client("sagemaker").list_tags(ResourceArn=arn).get("Tags", [])
    return {t["Key"]: t["Value"] for t in listed}


def class_recall_floor(settings: Settings, tags: dict[str, str]) -> float:
    """The operator's GATE_MIN_CLASS_RECALL, or the dataset's own when it raised it (its
    tag); never lower than the operator's, whatever a tag says."""
    try:
        raised = float(tags.get(vocabulary.TAG_MIN_CLASS_RECALL, "") or 0.0)
    except ValueError:
        raised = 0.0
    return max(settings.gate_min_class_recall, min(raised, 1.0))


def comparable_serving_artifact(endpoint: str, upload: vocabulary.Upload) -> str | None:
    """The ``model.tar.gz`` the dataset's endpoint serves, when it has the dataset's classes
    (read from the zip's central directory): what the debug job compares itself with."""
    try:
        report = inspect_zip(S3RangedFile(client("s3"), upload.bucket, upload.key))
    except ClientError as exc:
        logger.warning("cannot read %s for its classes: %s", upload.uri, exc)
        return None
    if not report.usable:
        return None
    return serving_accuracy_of(endpoint, list(report.classes))[2]


def rules_config_of(training: dict) -> dict:
    """The ``rules`` hyperparameter the job was started with (as the SDK encodes it: a
    JSON string holding JSON text). Unreadable → {} (every rule expected): the job itself
    refuses a bad value, so a Completed job's is readable."""
    value = training.get("HyperParameters", {}).get("rules", "")
    for _ in range(2):  # the SDK's encoding, then the JSON text inside it
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value) if value else {}
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def unservable(training: dict, upload: vocabulary.Upload) -> tuple[list[str], list[str] | None]:
    """Why the job's artifact cannot serve its dataset ([] when it can), and the dataset's
    classes (folder names in index order; None when they cannot be read).

    The dataset's classes come from the zip itself (its central directory, by ranged
    reads), not from the job, so a job that went wrong cannot vouch for itself.
    """
    uri = training.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not uri:
        return ["the job produced no model artifact"], None
    try:
        sizes, documents = read_artifact(client("s3"), uri)
    except (ClientError, tarfile.TarError, OSError, EOFError) as exc:
        return [f"the model artifact {uri} cannot be read: {exc}"], None
    try:
        report = inspect_zip(S3RangedFile(client("s3"), upload.bucket, upload.key))
    except ClientError as exc:
        reason = f"the dataset {upload.uri} cannot be read to check the model's classes: {exc}"
        return [reason], None
    if not report.usable:
        problems = "; ".join(report.problems[:3])
        return [f"the dataset {upload.uri} can no longer be checked: {problems}"], None
    return artifact_problems(sizes, documents, report.classes), list(report.classes)


def serving_accuracy_of(
    endpoint: str, classes: list[str] | None
) -> tuple[float | None, str, str | None]:
    """Test accuracy of the model the dataset's endpoint serves now (from its sagedrop
    tag), why it was not compared ("" when it was, or when nothing serves), and its
    artifact's S3 URI (None when nothing comparable serves).

    A model of other classes answers another question: its accuracy says nothing about
    the new one, so the gate applies its minimum alone and says so.
    """
    described = describe_endpoint(endpoint)
    if described is None:
        return None, "", None
    model_name, tags, artifact = registry.serving_model_artifact(client("sagemaker"), described)
    if classes is None or tags.get(vocabulary.TAG_CLASSES) != registry_requests.classes_digest(
        classes
    ):
        why = "differ" if vocabulary.TAG_CLASSES in tags else "are not recorded on it"
        return (
            None,
            (
                f"not compared with the model serving {endpoint} ({model_name}): its "
                f"classes {why}, so only the minimum test accuracy applies"
            ),
            None,
        )
    if vocabulary.TAG_TEST_ACCURACY in tags:
        return float(tags[vocabulary.TAG_TEST_ACCURACY]), "", artifact
    return None, "", artifact


def stale_comparison(training: dict, serving_artifact: str | None) -> str:
    """Why the artifact the job was compared with (its ``serving`` channel) is not the
    one serving now ("" when it is, or when none was handed over)."""
    handed = next(
        (
            c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in training.get("InputDataConfig", [])
            if c.get("ChannelName") == sagemaker_requests.SERVING_CHANNEL
        ),
        None,
    )
    if handed is None or handed == serving_artifact:
        return ""
    if serving_artifact is None:
        return "the version it was compared with no longer serves a comparable model"
    return "the version it was compared with no longer serves (another was deployed since)"
