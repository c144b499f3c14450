"""Hosting: models, endpoint configurations and endpoints, and the servers behind them.

An endpoint is a local HTTP server (``sagedrop.local.endpoints``) around SageMaker's own
inference handler service; deploying loads the config's model artifact into a worker and
swaps it in, so an update serves the old model until the new one is ready, as on AWS.
Requests to the server itself go through ``sagedrop.local.runtime`` (InvokeEndpoint).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from urllib.parse import urlparse

from chalicelib import aws_limits
from sagedrop.local.aws_shapes import arn, event_detail, metadata, public, stamp, validate
from sagedrop.local.endpoints import EndpointServer, ModelWorker, shutdown_all, unpack_model
from sagedrop.local.sagemaker import errors
from sagedrop.local.sagemaker.common import CONFIG, ENDPOINT, ENDPOINT_EVENT, MODEL, Context

WHAT = {MODEL: "model", CONFIG: "endpoint configuration", ENDPOINT: "endpoint"}
SERVING = ("InService", "Updating")


class Hosting:
    def __init__(self, context: Context):
        self.context = context
        self.state = context.state
        self.servers: dict[str, EndpointServer] = {}
        self._lock = threading.Lock()
        # A serverless endpoint takes at most MaxConcurrency invocations at once.
        self._invocation_limits: dict[str, threading.BoundedSemaphore] = {}

    # models ------------------------------------------------------------------------------
    def create_model(self, **params) -> dict:
        validate("sagemaker", "create_model", params)
        name = params["ModelName"]
        model_arn = arn("model", name)
        record = {
            "ModelName": name,
            "ModelArn": model_arn,
            "PrimaryContainer": params.get("PrimaryContainer", {}),
            "ExecutionRoleArn": params.get("ExecutionRoleArn", ""),
            "CreationTime": stamp(),
            "EnableNetworkIsolation": params.get("EnableNetworkIsolation", False),
        }
        if not self.state.insert(MODEL, name, record):
            raise errors.already_existing("CreateModel", "model", model_arn)
        self.context.tag(model_arn, params.get("Tags", []))
        return {**metadata(), "ModelArn": model_arn}

    def describe_model(self, **params) -> dict:
        validate("sagemaker", "describe_model", params)
        return public(self._get(MODEL, params["ModelName"], "DescribeModel"))

    def delete_model(self, **params) -> dict:
        validate("sagemaker", "delete_model", params)
        self._get(MODEL, params["ModelName"], "DeleteModel")
        self.state.delete(MODEL, params["ModelName"])
        return metadata()

    # endpoint configurations -----------------------------------------------------------------
    def create_endpoint_config(self, **params) -> dict:
        validate("sagemaker", "create_endpoint_config", params)
        name = params["EndpointConfigName"]
        for variant in params["ProductionVariants"]:
            self._get(MODEL, variant["ModelName"], "CreateEndpointConfig")
            problem = _capacity_problem(variant)
            if problem:
                raise errors.validation("CreateEndpointConfig", problem)
        config_arn = arn("endpoint-config", name)
        record = {
            "EndpointConfigName": name,
            "EndpointConfigArn": config_arn,
            "ProductionVariants": params["ProductionVariants"],
            "CreationTime": stamp(),
        }
        if not self.state.insert(CONFIG, name, record):
            raise errors.already_existing(
                "CreateEndpointConfig", "endpoint configuration", config_arn
            )
        self.context.tag(config_arn, params.get("Tags", []))
        return {**metadata(), "EndpointConfigArn": config_arn}

    def describe_endpoint_config(self, **params) -> dict:
        validate("sagemaker", "describe_endpoint_config", params)
        return public(self._get(CONFIG, params["EndpointConfigName"], "DescribeEndpointConfig"))

    def delete_endpoint_config(self, **params) -> dict:
        validate("sagemaker", "delete_endpoint_config", params)
        name = params["EndpointConfigName"]
        self._get(CONFIG, name, "DeleteEndpointConfig")
        self.state.delete(CONFIG, name)
        return metadata()

    # endpoints ---------------------------------------------------------------------------------
    def create_endpoint(self, **params) -> dict:
        validate("sagemaker", "create_endpoint", params)
        name, config = params["EndpointName"], params["EndpointConfigName"]
        self._get(CONFIG, config, "CreateEndpoint")
        endpoint_arn = arn("endpoint", name)
        record = {
            "EndpointName": name,
            "EndpointArn": endpoint_arn,
            "EndpointConfigName": config,
            "EndpointStatus": "Creating",
            "CreationTime": stamp(),
            "LastModifiedTime": stamp(),
            # The config being deployed, and which change this is: a restart finishes
            # this very change, and its events carry ids made from it (sent once).
            "_desired_config": config,
            "_change": uuid.uuid4().hex,
        }
        if not self.state.insert(ENDPOINT, name, record):
            raise errors.already_existing("CreateEndpoint", "endpoint", endpoint_arn)
        self.context.tag(endpoint_arn, params.get("Tags", []))
        self.emit(record, "CREATING")
        self.context.background(self.deploy, name, config)
        return {**metadata(), "EndpointArn": endpoint_arn}

    def update_endpoint(self, **params) -> dict:
        validate("sagemaker", "update_endpoint", params)
        name, config = params["EndpointName"], params["EndpointConfigName"]
        record = self._get(ENDPOINT, name, "UpdateEndpoint")
        self._get(CONFIG, config, "UpdateEndpoint")
        if record["EndpointStatus"] not in ("InService", "Failed"):
            raise errors.validation(
                "UpdateEndpoint", f'Cannot update in-progress endpoint "{record["EndpointArn"]}".'
            )
        record = self.state.update(
            ENDPOINT,
            name,
            EndpointStatus="Updating",
            LastModifiedTime=stamp(),
            _desired_config=config,
            _change=uuid.uuid4().hex,
        )
        self.emit(record, "UPDATING")
        self.context.background(self.deploy, name, config)
        return {**metadata(), "EndpointArn": record["EndpointArn"]}

    def describe_endpoint(self, **params) -> dict:
        validate("sagemaker", "describe_endpoint", params)
        return public(self._get(ENDPOINT, params["EndpointName"], "DescribeEndpoint"))

    def delete_endpoint(self, **params) -> dict:
        validate("sagemaker", "delete_endpoint", params)
        name = params["EndpointName"]
        self._get(ENDPOINT, name, "DeleteEndpoint")
        server = self.servers.pop(name, None)
        if server:
            server.close()
        self.state.delete(ENDPOINT, name)
        return metadata()

    # serving -----------------------------------------------------------------------------------
    def endpoint_port(self, name: str) -> int | None:
        """The port of an endpoint that is serving (in service, or updating), else None."""
        server = self.servers.get(name)
        record = self.state.get(ENDPOINT, name)
        if server is None or record is None or record["EndpointStatus"] not in SERVING:
            return None
        return server.port

    @contextlib.contextmanager
    def invocation_slot(self, name: str):
        """One of a serverless endpoint's MaxConcurrency places, for one invocation; none
        free → ``ThrottlingException``, as SageMaker answers."""
        limit = self._invocation_limits.get(name)
        if limit is None:
            yield
            return
        if not limit.acquire(blocking=False):
            raise errors.throttling("InvokeEndpoint")
        try:
            yield
        finally:
            limit.release()

    def resume(self) -> None:
        """After a restart, before the bus delivers a single event: every endpoint serves
        what the state says it should, so no image meets an endpoint that is not back yet.

        In service: serves again, announced only if its "in service" event was never
        queued (a crash between the two). Creating or Updating: the change the crash
        interrupted is finished now, to the config it was deploying (not the one it was
        replacing, which a rollback may just have Rejected), and announced; an update that
        cannot finish leaves the previous config serving, as on AWS.
        """
        for endpoint in self.state.all(ENDPOINT):
            name, current = endpoint["EndpointName"], endpoint["EndpointConfigName"]
            status = endpoint["EndpointStatus"]
            if status == "InService":
                announced = endpoint.get("_announced") == endpoint.get("_change")
                self.deploy(name, current, announce=not announced)
            elif status in ("Creating", "Updating"):
                desired = endpoint.get("_desired_config") or current
                self.deploy(name, desired)
                failed = self.state.record(ENDPOINT, name)["EndpointStatus"] == "Failed"
                if failed and status == "Updating" and desired != current:
                    self.deploy(name, current, announce=False)

    def shutdown(self) -> None:
        shutdown_all(self.servers)

    def deploy(self, name: str, config_name: str, announce: bool = True) -> None:
        """Load the config's model and serve it; ``announce=False`` (a restart bringing
        back an endpoint that was already in service) sends no state-change event, so no
        second "endpoint ready" notice."""
        with self._lock:
            try:
                config = self.state.record(CONFIG, config_name)
                variant = config["ProductionVariants"][0]
                model = self.state.record(MODEL, variant["ModelName"])
                container = model["PrimaryContainer"]
                parsed = urlparse(container["ModelDataUrl"])
                body = self.context.s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
                folder = self.context.root / "endpoints" / name / config_name
                unpack_model(body["Body"].read(), folder)
                worker = ModelWorker(folder, container.get("Environment", {}))
            except Exception as exc:
                self._failed(name, f"Failed to start the model of {config_name}: {exc}")
                return
            server = self.servers.get(name)
            if server is None:
                server = self.servers[name] = EndpointServer(name)
            server.swap(worker)
            serverless = variant.get("ServerlessConfig")
            if serverless:
                limit = threading.BoundedSemaphore(serverless["MaxConcurrency"])
                self._invocation_limits[name] = limit
            else:
                self._invocation_limits.pop(name, None)
            record = self.state.update(
                ENDPOINT,
                name,
                EndpointStatus="InService",
                EndpointConfigName=config_name,
                ProductionVariants=[_variant_summary(variant)],
                LastModifiedTime=stamp(),
                _desired_config=None,
                _local={"port": server.port, "model_dir": str(folder)},
            )
            self.context.say(
                f"[endpoint] {name} in service on 127.0.0.1:{server.port} ({config_name})"
            )
            if announce:
                self.emit(record, "IN_SERVICE")
                self.state.update(ENDPOINT, name, _announced=record.get("_change"))

    def _failed(self, name: str, reason: str) -> None:
        """An update that failed leaves the old model serving (InService), as on AWS."""
        record = self.state.record(ENDPOINT, name)
        serving = name in self.servers and record["EndpointStatus"] == "Updating"
        record = self.state.update(
            ENDPOINT,
            name,
            EndpointStatus="InService" if serving else "Failed",
            FailureReason=reason,
            LastModifiedTime=stamp(),
        )
        self.emit(record, "FAILED")

    def emit(self, record: dict, status: str) -> None:
        detail = {
            "EndpointName": record["EndpointName"],
            "EndpointArn": record["EndpointArn"],
            "EndpointConfigName": record["EndpointConfigName"],
            "EndpointStatus": status,
            "CreationTime": record["CreationTime"],
            "LastModifiedTime": record["LastModifiedTime"],
        }
        if status == "FAILED" and record.get("FailureReason"):
            detail["FailureReason"] = record["FailureReason"]
        # One event per change and status, whoever sends it (a restart finishing the
        # change sends the same id, which the outbox keeps once).
        change = record.get("_change") or uuid.uuid4().hex
        event_id = f"endpoint:{record['EndpointName']}:{change}:{status}"
        self.context.emit(ENDPOINT_EVENT, event_detail(detail), [record["EndpointArn"]], event_id)

    def _get(self, kind: str, name: str, operation: str) -> dict:
        record = self.state.get(kind, name)
        if record is None:
            raise errors.could_not_find(operation, WHAT[kind], name, kind)
        return record


def _variant_summary(variant: dict) -> dict:
    """``ProductionVariantSummary`` of a variant just deployed."""
    summary = {
        "VariantName": variant["VariantName"],
        "CurrentWeight": variant.get("InitialVariantWeight", 1.0),
        "DesiredWeight": variant.get("InitialVariantWeight", 1.0),
    }
    serverless = variant.get("ServerlessConfig")
    if serverless:
        summary["CurrentServerlessConfig"] = serverless
        summary["DesiredServerlessConfig"] = serverless
    else:
        summary["CurrentInstanceCount"] = variant.get("InitialInstanceCount", 1)
        summary["DesiredInstanceCount"] = variant.get("InitialInstanceCount", 1)
    return summary


def _capacity_problem(variant: dict) -> str | None:
    """A variant is served by instances or serverless, never both; a serverless one
    within the API's limits."""
    serverless = variant.get("ServerlessConfig")
    if serverless is None:
        if not variant.get("InstanceType"):
            return f"variant {variant['VariantName']} needs an InstanceType or a ServerlessConfig"
        return None
    if variant.get("InstanceType") or variant.get("InitialInstanceCount"):
        return (
            f"variant {variant['VariantName']}: ServerlessConfig cannot be combined with "
            "InstanceType or InitialInstanceCount"
        )
    return aws_limits.serverless_problem(serverless)
