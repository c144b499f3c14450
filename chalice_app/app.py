"""Chalice handlers: decode the event, call one function of ``chalicelib.flow``.

The event sources declared here (buckets, prefixes, suffixes, EventBridge patterns) are
what ``chalice deploy`` creates on AWS and what the local cloud routes by.
"""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, S3Event
from chalice import Chalice

from chalicelib import flow, naming
from chalicelib.notify import Stage

app = Chalice(app_name="sagedrop")

DATA_BUCKET = os.environ.get("DATA_BUCKET", "sagedrop-data")
INFERENCE_BUCKET = os.environ.get("INFERENCE_BUCKET", "sagedrop-inference")
ENDPOINT_PREFIX = naming.endpoint_prefix(os.environ)
SAGEMAKER = "aws.sagemaker"
CREATED = "s3:ObjectCreated:*"


def _s3(event) -> tuple[str, str, str]:
    """Bucket, decoded key and ETag. S3 URL-encodes keys in events (a space arrives as '+')."""
    record = S3Event(event.to_dict()).record
    key = unquote_plus(record.s3.get_object.key)
    return record.s3.bucket.name, key, record.s3.get_object.etag or ""


def _detail(event) -> dict:
    return EventBridgeEvent(event.to_dict()).detail


def _sagemaker_event(event, stage: Stage, step):
    """An EventBridge event's detail to one flow step, with the event's delivery id."""
    return flow.handle(event.context, stage, step, _detail(event), delivery=delivery_of(event))


def delivery_of(event) -> str:
    """A digest of the event's payload: Lambda re-delivers an event unchanged, so its
    notices get the same ids again (``notify.notice_id``)."""
    payload = json.dumps(event.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _dataset(event):
    bucket, key, etag = _s3(event)
    return flow.handle(
        event.context, "dataset", flow.dataset_uploaded, bucket, key, etag,
        delivery=delivery_of(event), dataset=f"s3://{bucket}/{key}",
    )  # fmt: skip


@app.on_s3_event(bucket=DATA_BUCKET, events=[CREATED], prefix="datasets/", suffix=".zip")
def on_dataset_uploaded(event):
    return _dataset(event)


@app.on_s3_event(bucket=DATA_BUCKET, events=[CREATED], prefix="datasets/", suffix=".ZIP")
def on_upper_dataset_uploaded(event):
    return _dataset(event)


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker HyperParameter Tuning Job State Change"],
    "detail": {
        "HyperParameterTuningJobName": [{"prefix": naming.TUNING_PREFIX}],
        "HyperParameterTuningJobStatus": ["Completed", "Failed", "Stopped"],
    },
})  # fmt: skip
def on_tuning_finished(event):
    return _sagemaker_event(event, "tuning", flow.tuning_finished)


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker Training Job State Change"],
    "detail": {
        "TrainingJobName": [{"prefix": naming.DEBUG_PREFIX}],
        "TrainingJobStatus": ["Completed", "Failed", "Stopped"],
    },
})  # fmt: skip
def on_training_finished(event):
    return _sagemaker_event(event, "gate", flow.training_finished)


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker Endpoint State Change"],
    "detail": {
        "EndpointName": [{"prefix": f"{ENDPOINT_PREFIX}-"}],
        "EndpointStatus": ["InService", "IN_SERVICE", "Failed", "FAILED"],
    },
})  # fmt: skip
def on_endpoint_changed(event):
    return _sagemaker_event(event, "endpoint", flow.endpoint_changed)


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker Model Package State Change"],
    "detail": {
        "ModelPackageGroupName": [{"prefix": f"{ENDPOINT_PREFIX}-"}],
        "ModelApprovalStatus": ["Approved", "Rejected"],
    },
})  # fmt: skip
def on_model_package_changed(event):
    return _sagemaker_event(event, "deploy", flow.model_package_changed)


# One rule for everything under images/, the type decided in the handler
# (``predictions.content_type_of``): S3 matches a suffix case-sensitively, one per rule,
# so rules per suffix could never cover every spelling a camera or a person writes
# (IMG_1.JPG, x.Jpeg, scan.TIF). The answers the handler writes end in ``.json``, which it
# ignores at once: one extra, empty invocation per answer, and no loop.
@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix=naming.IMAGES_PREFIX)
def on_image_uploaded(event):
    bucket, key, _ = _s3(event)
    return flow.handle(
        event.context, "prediction", flow.image_uploaded, bucket, key,
        delivery=delivery_of(event), image=f"s3://{bucket}/{key}",
    )  # fmt: skip
