"""The local SageMaker client: boto3's method names, answered by the part that owns them.

``LocalSageMaker`` is what ``LocalCloud.client("sagemaker")`` hands the flow in place of
``boto3.client("sagemaker")``. It holds no logic of its own: each operation belongs to
one part, split by lifecycle as moto splits a service:

| part | operations |
| --- | --- |
| ``training_jobs.TrainingJobs`` | Create/Describe/StopTrainingJob |
| ``tuning_jobs.TuningJobs`` | Create/Describe/StopHyperParameterTuningJob, ListTrainingJobsFor... |
| ``hosting.Hosting`` | Create/Describe/Delete Model, EndpointConfig, Endpoint; UpdateEndpoint |
| ``model_registry.LocalModelRegistry`` | model package groups and versions |

Every request is validated against botocore's service model first, so a request that
AWS would refuse is refused here too. Records live in the SQLite state in the shape
``Describe…`` returns; the parts only the local cloud needs sit under ``_local``. Every
status change emits the EventBridge event SageMaker would send.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sagedrop.local.aws_shapes import metadata, validate
from sagedrop.local.s3 import LocalS3
from sagedrop.local.sagemaker.common import TAGS, Context, Emit
from sagedrop.local.sagemaker.hosting import Hosting
from sagedrop.local.sagemaker.model_registry import LocalModelRegistry
from sagedrop.local.sagemaker.training_jobs import TrainingJobs
from sagedrop.local.sagemaker.tuning_jobs import TuningJobs
from sagedrop.local.state import State

OPERATIONS = {
    "training": (
        "create_training_job",
        "describe_training_job",
        "stop_training_job",
    ),
    "tuning": (
        "create_hyper_parameter_tuning_job",
        "describe_hyper_parameter_tuning_job",
        "list_training_jobs_for_hyper_parameter_tuning_job",
        "stop_hyper_parameter_tuning_job",
    ),
    "hosting": (
        "create_model",
        "describe_model",
        "delete_model",
        "create_endpoint_config",
        "describe_endpoint_config",
        "delete_endpoint_config",
        "create_endpoint",
        "update_endpoint",
        "describe_endpoint",
        "delete_endpoint",
    ),
    "registry": (
        "create_model_package_group",
        "describe_model_package_group",
        "list_model_package_groups",
        "create_model_package",
        "describe_model_package",
        "list_model_packages",
        "update_model_package",
    ),
}
OWNER = {name: part for part, names in OPERATIONS.items() for name in names}


class LocalSageMaker:
    def __init__(
        self,
        root: Path,
        state: State,
        s3: LocalS3,
        emit: Emit,
        say: Callable[[str], None],
        cpus: int | None = None,
    ):
        self.context = Context(Path(root), state, s3, emit, say, cpus or os.cpu_count() or 1)
        self.state = state
        self.training = TrainingJobs(self.context)
        self.tuning = TuningJobs(self.context, self.training)
        self.hosting = Hosting(self.context)
        self.registry = LocalModelRegistry(state, emit)

    def __getattr__(self, name: str):
        """Each boto3 operation is its part's method (one client, as boto3's)."""
        part = OWNER.get(name)
        if part is None:
            raise AttributeError(name)
        return getattr(getattr(self, part), name)

    def __dir__(self):
        return [*super().__dir__(), *OWNER]

    def list_tags(self, **params) -> dict:
        validate("sagemaker", "list_tags", params)
        tags = self.state.get(TAGS, params["ResourceArn"]) or {"Tags": []}
        return {**metadata(), "Tags": tags["Tags"]}

    # what the local cloud asks of it -----------------------------------------------------------
    @property
    def max_training_jobs(self) -> int:
        return self.training.max_training_jobs

    @property
    def servers(self):
        return self.hosting.servers

    def endpoint_port(self, name: str) -> int | None:
        return self.hosting.endpoint_port(name)

    def invocation_slot(self, name: str):
        return self.hosting.invocation_slot(name)

    def resume(self) -> None:
        """After a restart: finish what was running, exactly once.

        Standalone jobs run again from the start; a tuning job re-runs its interrupted
        trials under their own names (its budget is not spent twice); endpoints that were
        serving start serving again without announcing themselves a second time, and one
        caught creating or updating is finished to the config it was deploying, before
        the bus delivers any event (``Hosting.resume``). Terminal
        state-change events are queued again under their deterministic ids, so one lost
        to a crash between the state change and its event is sent, and one already sent
        is not.
        """
        self.training.resume()
        self.tuning.resume()
        self.registry.resume()
        self.hosting.resume()

    def shutdown(self) -> None:
        self.context.stopping.set()
        self.training.shutdown()
        self.context.join(timeout=30)
        self.hosting.shutdown()
