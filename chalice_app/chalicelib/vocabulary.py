"""The names sagedrop writes on AWS resources and reads back later: tags on tuning and
training jobs, models and endpoints, the CustomerMetadataProperties keys of a Model
Registry version, and the upload a pipeline run starts from. The request builders
(``sagemaker_requests``) write them; the gate, the registry, deploying and the local
cloud's overview read them."""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib import naming

TAG_DATASET = "sagedrop:dataset"
TAG_TUNING_JOB = "sagedrop:tuning-job"
TAG_TEST_ACCURACY = "sagedrop:test-accuracy"
TAG_CLASSES = "sagedrop:classes"
TAG_SERVING = "sagedrop:serving"
TAG_MODEL_PACKAGE = "sagedrop:model-package"
# The per-class recall floor this dataset's versions must meet (its sagedrop.json may raise
# the operator's GATE_MIN_CLASS_RECALL): it travels with the jobs to the gate.
TAG_MIN_CLASS_RECALL = "sagedrop:min-class-recall"
# CustomerMetadataProperties of a registered version: what `sagedrop models` lists and
# what deploying it needs, long after the job's dataset zip may have been replaced.
META_DATASET = "sagedrop:dataset"
META_DEBUG_JOB = "sagedrop:debug-job"
META_TEST_ACCURACY = "sagedrop:test-accuracy"
META_CLASSES = "sagedrop:classes"
META_RULES = "sagedrop:rules"
META_SERVING = "sagedrop:serving"
META_REPORT = "sagedrop:report"
META_EVALUATION = "sagedrop:evaluation"
META_MACRO_F1 = "sagedrop:macro-f1"
META_WORST_CLASS = "sagedrop:worst-class"
# The data audit's headline (data_audit.json): one line, the two numbers read most, its URI.
META_DATA_AUDIT = "sagedrop:data-audit"
META_LEAKED_TEST = "sagedrop:leaked-test"
META_LABEL_ERRORS = "sagedrop:label-error-candidates"
META_AUDIT_REPORT = "sagedrop:data-audit-report"


@dataclass(frozen=True)
class Upload:
    """The S3 object that started a pipeline."""

    bucket: str
    key: str
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def tuning_job_name(self) -> str:
        return naming.tuning_job_name(self.bucket, self.key, self.etag)
