"""A ``CreateHyperParameterTuningJob`` request, run with Optuna.

The request decides everything: ``ParameterRanges`` with their scaling become Optuna
distributions; ``Strategy`` picks the sampler (Bayesian → TPE, Random, Grid over the
categorical values, Hyperband → TPE with Optuna's Hyperband pruner); ``Auto`` early
stopping is the median rule on the per-epoch objective (Optuna's ``MedianPruner``, which
stops the trial's process); ``ResourceLimits`` bound the trials and how many run at once.
Each trial's outcome is kept with its training job in the local cloud's SQLite state, so
a restart rebuilds the study from them: finished trials are kept (never run again), trials
that were running are marked failed, and the remaining ones are run.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
_REVERSE = "__reverse_log__"


def distributions(ranges: dict) -> dict[str, optuna.distributions.BaseDistribution]:
    """SageMaker's ParameterRanges → Optuna distributions (reverse-log via 1 - x)."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for spec in ranges.get("ContinuousParameterRanges", []):
        low, high = float(spec["MinValue"]), float(spec["MaxValue"])
        scaling = spec.get("ScalingType", "Auto")
        if scaling == "ReverseLogarithmic":
            out[_REVERSE + spec["Name"]] = optuna.distributions.FloatDistribution(
                1 - high, 1 - low, log=True
            )
        else:
            out[spec["Name"]] = optuna.distributions.FloatDistribution(
                low, high, log=scaling == "Logarithmic"
            )
    for spec in ranges.get("IntegerParameterRanges", []):
        out[spec["Name"]] = optuna.distributions.IntDistribution(
            int(spec["MinValue"]),
            int(spec["MaxValue"]),
            log=spec.get("ScalingType") == "Logarithmic",
        )
    for spec in ranges.get("CategoricalParameterRanges", []):
        out[spec["Name"]] = optuna.distributions.CategoricalDistribution(list(spec["Values"]))
    return out


def hyperparameters_of(params: dict) -> dict[str, str]:
    """Optuna's sampled values → SageMaker's string hyperparameters."""
    out = {}
    for name, value in params.items():
        if name.startswith(_REVERSE):
            out[name[len(_REVERSE) :]] = repr(1 - value)
        elif isinstance(value, float):
            out[name] = repr(value)
        else:
            out[name] = str(value)
    return out


def grid_size(ranges: dict) -> int:
    return math.prod(len(s["Values"]) for s in ranges.get("CategoricalParameterRanges", []))


def make_study(config: dict, seed: int) -> optuna.Study:
    """In memory: the tuning job's own records are the durable copy (see ``replay``)."""
    strategy = config.get("Strategy", "Bayesian")
    ranges = config["ParameterRanges"]
    if strategy == "Grid":
        space = {s["Name"]: list(s["Values"]) for s in ranges["CategoricalParameterRanges"]}
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(space, seed=seed)
    elif strategy == "Random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
    if strategy == "Hyperband":
        hyperband = config.get("StrategyConfig", {}).get("HyperbandStrategyConfig", {})
        pruner: optuna.pruners.BasePruner = optuna.pruners.HyperbandPruner(
            min_resource=hyperband.get("MinResource", 1),
            max_resource=hyperband.get("MaxResource", "auto"),
        )
    elif config.get("TrainingJobEarlyStoppingType", "Off") == "Auto":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    else:
        pruner = optuna.pruners.NopPruner()
    direction = config["HyperParameterTuningJobObjective"]["Type"].lower()
    return optuna.create_study(sampler=sampler, pruner=pruner, direction=direction)


def replay(study: optuna.Study, dists: dict, finished: list[dict]) -> None:
    """Give a resumed study the trials that finished before the restart.

    Each item: ``params`` (Optuna's), ``state`` (COMPLETE, PRUNED or FAIL), ``value`` and
    ``intermediate`` ({step: value}).
    """
    for item in finished:
        state = optuna.trial.TrialState[item["state"]]
        study.add_trial(
            optuna.trial.create_trial(
                params=item["params"],
                distributions={k: dists[k] for k in item["params"]},
                value=item.get("value") if state == optuna.trial.TrialState.COMPLETE else None,
                intermediate_values={int(k): v for k, v in item.get("intermediate", {}).items()},
                state=state,
            )
        )


def trial_job_name(tuning_job: str, number: int) -> str:
    """SageMaker names its trials ``<tuning job>-<NNN>-<8 hex>``."""
    return f"{tuning_job}-{number:03d}-{secrets.token_hex(4)}"


class TrialReporter:
    """Feeds a trial's per-epoch objective to Optuna; asks to stop the job when pruned."""

    def __init__(self, trial: optuna.Trial, objective: str, stop: Callable[[], None]):
        self.trial = trial
        self.objective = objective
        self.stop = stop
        self.pruned = False
        self.intermediate: dict[int, float] = {}

    def __call__(self, metrics: dict[str, float]) -> None:
        if self.objective not in metrics or "epoch" not in metrics or self.pruned:
            return
        step = int(metrics["epoch"])
        self.intermediate[step] = metrics[self.objective]
        self.trial.report(metrics[self.objective], step)
        if self.trial.should_prune():
            self.pruned = True
            self.stop()
