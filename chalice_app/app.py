"""Chalice handlers: decode the event, call one function of ``chalicelib.flow``.

The event sources declared here (buckets, prefixes, suffixes, EventBridge patterns) are
what ``chalice deploy`` creates on AWS and what the local cloud routes by.
"""

from __future__ import annotations

import os
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, S3Event
from chalice import Chalice

from chalicelib import flow, naming

app = Chalice(app_name="sagedrop")

DATA_BUCKET = os.environ.get("DATA_BUCKET", "sagedrop-data")
INFERENCE_BUCKET = os.environ.get("INFERENCE_BUCKET", "sagedrop-inference")
ENDPOINT_PREFIX = os.environ.get("ENDPOINT_PREFIX", "sagedrop")
SAGEMAKER = "aws.sagemaker"
CREATED = "s3:ObjectCreated:*"


def _s3(event) -> tuple[str, str, str]:
    """Bucket, decoded key and ETag. S3 URL-encodes keys in events (a space arrives as '+')."""
    record = S3Event(event.to_dict()).record
    key = unquote_plus(record.s3.get_object.key)
    return record.s3.bucket.name, key, record.s3.get_object.etag or ""


def _detail(event) -> dict:
    return EventBridgeEvent(event.to_dict()).detail


def _dataset(event):
    bucket, key, etag = _s3(event)
    return flow.handle(
        event.context, "dataset", flow.dataset_uploaded, bucket, key, etag,
        dataset=f"s3://{bucket}/{key}",
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
    return flow.handle(event.context, "tuning", flow.tuning_finished, _detail(event))


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker Training Job State Change"],
    "detail": {
        "TrainingJobName": [{"prefix": naming.DEBUG_PREFIX}],
        "TrainingJobStatus": ["Completed", "Failed", "Stopped"],
    },
})  # fmt: skip
def on_training_finished(event):
    return flow.handle(event.context, "gate", flow.training_finished, _detail(event))


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker Endpoint State Change"],
    "detail": {
        "EndpointName": [{"prefix": f"{ENDPOINT_PREFIX}-"}],
        "EndpointStatus": ["InService", "IN_SERVICE", "Failed", "FAILED"],
    },
})  # fmt: skip
def on_endpoint_changed(event):
    return flow.handle(event.context, "endpoint", flow.endpoint_changed, _detail(event))


@app.on_cw_event({
    "source": [SAGEMAKER],
    "detail-type": ["SageMaker Model Package State Change"],
    "detail": {
        "ModelPackageGroupName": [{"prefix": f"{ENDPOINT_PREFIX}-"}],
        "ModelApprovalStatus": ["Approved", "Rejected"],
    },
})  # fmt: skip
def on_model_package_changed(event):
    return flow.handle(event.context, "deploy", flow.model_package_changed, _detail(event))


# S3 (and so Chalice) allows one suffix per notification rule, matched case-sensitively:
# one handler per image type and spelling (cameras write IMG_0001.JPG).
def _predict(event):
    bucket, key, _ = _s3(event)
    return flow.handle(
        event.context, "prediction", flow.image_uploaded, bucket, key,
        image=f"s3://{bucket}/{key}",
    )  # fmt: skip


@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix="images/", suffix=".jpg")
def on_jpg_uploaded(event):
    return _predict(event)


@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix="images/", suffix=".jpeg")
def on_jpeg_uploaded(event):
    return _predict(event)


@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix="images/", suffix=".png")
def on_png_uploaded(event):
    return _predict(event)


@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix="images/", suffix=".JPG")
def on_upper_jpg_uploaded(event):
    return _predict(event)


@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix="images/", suffix=".JPEG")
def on_upper_jpeg_uploaded(event):
    return _predict(event)


@app.on_s3_event(bucket=INFERENCE_BUCKET, events=[CREATED], prefix="images/", suffix=".PNG")
def on_upper_png_uploaded(event):
    return _predict(event)
