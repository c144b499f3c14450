"""One pipeline per dataset: two datasets' models served side by side in one local cloud.

Each endpoint is ``sagedrop-<dataset>``; an image under ``images/<dataset>/`` is labelled
by that dataset's model, and one outside a serving dataset's folder gets an error that
lists the datasets that are serving.
"""

from __future__ import annotations

import json
from pathlib import Path

from sagedrop.local.cloud import DATA_BUCKET, INFERENCE_BUCKET, LocalCloud
from sagedrop.local.training import tar_gz
from tests.helpers import LETTERS, jpeg_bytes, relabelled

ROLE = "arn:aws:iam::000000000000:role/sagedrop-local"


def serve(cloud: LocalCloud, dataset: str, model_dir: Path) -> None:
    key = f"jobs/{dataset}/model.tar.gz"
    cloud.s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=tar_gz(model_dir))
    container = {"Image": "local", "ModelDataUrl": f"s3://{DATA_BUCKET}/{key}"}
    cloud.sagemaker.create_model(
        ModelName=f"m-{dataset}", PrimaryContainer=container, ExecutionRoleArn=ROLE
    )
    variant = {"VariantName": "AllTraffic", "ModelName": f"m-{dataset}"}
    variant.update(InitialInstanceCount=1, InstanceType="ml.m5.large")
    cloud.sagemaker.create_endpoint_config(
        EndpointConfigName=f"c-{dataset}", ProductionVariants=[variant]
    )
    cloud.sagemaker.create_endpoint(
        EndpointName=f"sagedrop-{dataset}", EndpointConfigName=f"c-{dataset}"
    )


def test_two_datasets_are_served_side_by_side(tmp_path, trained_job):
    digits_labels = [c["label"] for c in json.loads(
        (trained_job["model_dir"] / "classes.json").read_text()
    )]  # fmt: skip
    cloud = LocalCloud(tmp_path / "root", say=lambda _: None)
    cloud.start(watch=False)
    try:
        # the datasets' zips (not usable ones: no pipeline starts, the names are what count)
        for name in ("digits", "letters"):
            cloud.s3.put_object(Bucket=DATA_BUCKET, Key=f"datasets/{name}.zip", Body=b"x")
        serve(cloud, "digits", trained_job["model_dir"])
        letters = relabelled(trained_job["model_dir"], tmp_path / "letters", LETTERS)
        serve(cloud, "letters", letters)
        assert cloud.wait_until(
            lambda: all(
                cloud.state.get("endpoint", f"sagedrop-{n}")["EndpointStatus"] == "InService"
                for n in ("digits", "letters")
            ),
            120,
        )
        keys = ["images/digits/a.jpg", "images/letters/a.jpg", "images/cars/a.jpg", "images/b.jpg"]
        for key in keys:
            cloud.s3.put_object(Bucket=INFERENCE_BUCKET, Key=key, Body=jpeg_bytes((20, 80, 160)))
        bucket = cloud.root / "buckets" / INFERENCE_BUCKET
        answered = {k: (bucket / f"{k}.json", bucket / f"{k}.error.json") for k in keys}
        assert cloud.wait_until(
            lambda: all(ok.exists() or bad.exists() for ok, bad in answered.values()), 120
        )
    finally:
        cloud.stop()
    for dataset, labels in (("digits", digits_labels), ("letters", LETTERS)):
        result = json.loads((bucket / f"images/{dataset}/a.jpg.json").read_text())
        assert result["dataset"] == dataset and result["endpoint"] == f"sagedrop-{dataset}"
        assert {p["label"] for p in result["predictions"]} <= set(labels)
    serving = "serving: digits (images/digits/), letters (images/letters/)"
    cars = json.loads((bucket / "images/cars/a.jpg.error.json").read_text())
    assert cars["error"] == f"no dataset named 'cars' is serving; {serving}"
    loose = json.loads((bucket / "images/b.jpg.error.json").read_text())
    assert (
        loose["error"].startswith("images go under images/<dataset>/")
        and serving in (loose["error"])
    )
