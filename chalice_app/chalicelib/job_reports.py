"""The debug job's reports as S3 objects a model version can point at.

The job leaves ``rules.json``, ``report.html`` and ``evaluation.json`` inside
``output.tar.gz``; Model Registry's ``ModelMetrics`` name single objects. So the gate
streams the archive once, copies those members (bounded in size) next to it under
``reports/``, and writes ``metrics.json``: the version's model-quality statistics in
Model Monitor's multiclass layout (``model_quality``), which SageMaker Studio shows on the
version's page. The rules' ``StatusDetails`` and the evaluation come back too, so the gate
can say *why* a rule found issues and what the model gets wrong.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from chalicelib import bounded_json
from chalicelib.model_quality import statistics_document

RULES, REPORT, EVALUATION = "rules.json", "report.html", "evaluation.json"
AUDIT = "data_audit.json"
MAX_MEMBER_BYTES = 16 * 1024 * 1024
CONTENT_TYPES = {RULES: "application/json", REPORT: "text/html", EVALUATION: "application/json",
                 AUDIT: "application/json", "metrics.json": "application/json"}  # fmt: skip
KINDS = {RULES: "rules", REPORT: "report", EVALUATION: "evaluation", AUDIT: "audit",
         "metrics.json": "metrics"}  # fmt: skip
# The audit's headline numbers the gate, the notice and the version read.
AUDIT_COUNTS = ("exact_duplicates", "near_duplicates", "label_conflicts", "unreadable")


@dataclass
class JobReports:
    """S3 URIs by kind (``metrics``, ``rules``, ``report``), the rules' details by rule
    name, and what could not be read (logged and said; never a reason to lose a model)."""

    uris: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    evaluation: dict | None = None
    audit: dict | None = None  # data_audit.json's headline, checked


def output_archive(training: dict) -> str:
    output = training["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{output}/{training['TrainingJobName']}/output/output.tar.gz"


def publish(s3, training: dict, metrics: dict[str, float]) -> JobReports:
    """Copy the job's reports to ``<output>/<job>/reports/`` and return where they are."""
    archive_uri = output_archive(training)
    parsed = urlparse(archive_uri)
    bucket, base = parsed.netloc, parsed.path.lstrip("/").rsplit("/output/", 1)[0] + "/reports"
    reports = JobReports()
    members: dict[str, bytes] = {}
    try:
        body = s3.get_object(Bucket=bucket, Key=parsed.path.lstrip("/"))["Body"]
        with tarfile.open(fileobj=body, mode="r|gz") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name in (RULES, REPORT, EVALUATION, AUDIT):
                    if member.size > MAX_MEMBER_BYTES:
                        reports.problems.append(
                            f"{name} is {member.size:,} bytes, over the gate's bound of "
                            f"{MAX_MEMBER_BYTES:,}: refused"
                        )
                        continue
                    handle = archive.extractfile(member)
                    members[name] = handle.read() if handle else b""
    except (ClientError, tarfile.TarError, OSError, EOFError) as exc:
        reports.problems.append(f"{archive_uri} cannot be read: {exc}")
    if RULES in members:
        try:
            for entry in json.loads(members[RULES]):
                reports.details[entry["RuleConfigurationName"]] = entry.get("StatusDetails", "")
        except (ValueError, KeyError, TypeError) as exc:
            reports.problems.append(f"{RULES} is not the list of rule statuses: {exc}")
            del members[RULES]
    reports.evaluation = _read(members, EVALUATION, _checked_evaluation, "an evaluation", reports)
    reports.audit = _read(members, AUDIT, checked_audit, "a data audit", reports)
    statistics = (
        statistics_document(reports.evaluation)
        if reports.evaluation and reports.evaluation.get("overall")
        else model_quality_statistics(metrics)
    )
    members["metrics.json"] = json.dumps(statistics, indent=2).encode()
    for name, data in members.items():
        key = f"{base}/{name}"
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=CONTENT_TYPES[name])
        reports.uris[KINDS[name]] = f"s3://{bucket}/{key}"
    return reports


def _read(members: dict[str, bytes], name: str, check, what: str, reports: JobReports):
    """``check(members[name])``, or None (and the member dropped, its problem said) when
    it is absent or not ``what`` it claims to be."""
    if name not in members:
        return None
    try:
        return check(members[name])
    except ValueError as exc:
        reports.problems.append(f"{name} is not {what}: {exc}")
        del members[name]
        return None


def _checked_evaluation(data: bytes) -> dict:
    """The evaluation's JSON, with the fields the gate and the statistics read checked:
    the job wrote it, but a broken job must not break the gate."""
    document = bounded_json.loads(data, EVALUATION)
    if not isinstance(document, dict) or not isinstance(document.get("classes"), list):
        raise ValueError("no list of classes")
    classes = len(document["classes"])
    for image in document.get("images") or []:
        if not all(isinstance(image.get(k), int) and 0 <= image[k] < classes
                   for k in ("true", "predicted")):  # fmt: skip
            raise ValueError("an image's class index is out of range")
    matrix = document.get("confusion_matrix")
    if matrix is not None and (
        len(matrix) != classes or any(len(row) != classes for row in matrix)
    ):
        raise ValueError("the confusion matrix is not classes x classes")
    return document


def checked_audit(data: bytes) -> dict:
    """The audit's headline (with the test split's size), its numbers checked: the job
    wrote it, but the gate blocks on one of them, so none may be a string or negative."""
    document = bounded_json.loads(data, AUDIT)
    headline = document.get("headline") if isinstance(document, dict) else None
    if not isinstance(headline, dict):
        raise ValueError("no headline")
    images = document.get("images")
    images = images if isinstance(images, dict) else {}
    leaked = headline.get("leaked")
    if not isinstance(leaked, dict) or not all(_count(leaked.get(s)) for s in ("valid", "test")):
        raise ValueError("no count of leaked valid and test images")
    if not all(_count(headline.get(k)) for k in AUDIT_COUNTS) or not _count(images.get("test")):
        raise ValueError("a count is missing or not a whole number")
    fraction = headline.get("leaked_test_fraction")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0 <= fraction <= 1
    ):
        raise ValueError("leaked_test_fraction is not a fraction")
    left_out = headline.get("left_out")
    left_out = left_out if isinstance(left_out, dict) else {}
    candidates = headline.get("label_error_candidates")
    imbalance = headline.get("imbalance_train")
    return {
        **{k: headline[k] for k in AUDIT_COUNTS},
        "leaked": {s: leaked[s] for s in ("valid", "test")},
        "left_out": {s: left_out[s] for s in ("valid", "test") if _count(left_out.get(s))},
        "leaked_test_fraction": float(fraction),
        "test_images": images["test"],
        "label_error_candidates": candidates if _count(candidates) else None,
        "imbalance_train": float(imbalance) if isinstance(imbalance, int | float) else None,
        "policy": str(document.get("leakage_policy", "")),
    }


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def audit_line(audit: dict) -> str:
    """The audit's headline in one line, for a notice, a version's metadata and the CLI."""
    leaked, left = audit["leaked"], audit.get("left_out", {})
    parts = [
        f"leaked test {leaked['test']}/{audit['test_images']} "
        f"({audit['leaked_test_fraction']:.1%}; {left.get('test', 0)} left out)",
        f"leaked valid {leaked['valid']}",
        f"exact duplicates {audit['exact_duplicates']}",
        f"near duplicates {audit['near_duplicates']}",
        f"label conflicts {audit['label_conflicts']}",
    ]
    if audit.get("label_error_candidates") is not None:
        parts.append(f"likely label errors {audit['label_error_candidates']}")
    if audit.get("imbalance_train") is not None:
        parts.append(f"imbalance {audit['imbalance_train']:g}:1")
    if audit["unreadable"]:
        parts.append(f"unreadable {audit['unreadable']}")
    return "data audit: " + ", ".join(parts)


def model_quality_statistics(metrics: dict[str, float]) -> dict:
    """Model Monitor's ``multiclass_classification_metrics`` layout; ``standard_deviation``
    is unknown for one test run and given as 0, as Model Monitor does for a point value."""
    return {
        "version": 0.0,
        "dataset": {"item_count": None},
        "multiclass_classification_metrics": {
            name.removeprefix("test_"): {"value": value, "standard_deviation": 0.0}
            for name, value in sorted(metrics.items())
            if name.startswith("test_")
        },
    }
