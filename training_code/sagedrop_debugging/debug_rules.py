"""SageMaker Debugger's built-in training rules, with its default parameters, on our trace.

Where Debugger's documentation leaves a choice open, the choice here is the one that
keeps a healthy run quiet; each class says what it decided. "Step" is the global training
step; a "validation step" is one validation pass (one per epoch).
"""

from __future__ import annotations

import math
import statistics

from sagedrop_debugging.rule_base import Rule, RuleConfigError, finite, is_finite

# Positions of the per-layer statistics in a ``tensors`` record.
GRAD_FIELDS = ("mean_abs", "norm", "max_abs", "nan", "inf")
WEIGHT_FIELDS = ("mean", "std", "norm", "nan", "inf")
RELU_FIELDS = ("mean", "var")
# Standard errors a loss change must clear to count (LossNotDecreasing).
EVIDENCE_Z = 3.29


class VanishingGradient(Rule):
    """Mean |gradient| of any recorded parameter below ``threshold`` at a saved step."""

    name = "VanishingGradient"
    defaults = {"threshold": 1e-7}
    advice = (
        "Gradients are vanishing: use ReLU-family activations, batch normalisation or "
        "residual connections, a better initialisation (Kaiming), or a larger learning rate."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.checked = 0

    def on_tensors(self, record: dict) -> None:
        self.checked += 1
        threshold = self.params["threshold"]
        for name, stats in record.get("grads", {}).items():
            mean_abs = finite(stats[0])
            if mean_abs < threshold:
                self.found(
                    record["step"],
                    f"gradient/{name}",
                    f"step {record['step']}: mean |gradient| of {name} is {mean_abs:.3g}, "
                    f"below the threshold {threshold:g}",
                )
                return

    def quiet_details(self) -> str:
        threshold = self.params["threshold"]
        return f"mean |gradient| stayed above {threshold:g} at {self.checked} saved steps"


class ExplodingTensor(Rule):
    """Any NaN (and, unless ``only_nan``, any infinity) in the loss, a gradient or a weight."""

    name = "ExplodingTensor"
    defaults = {"only_nan": False}
    advice = (
        "Values became NaN or infinite: lower the learning rate, clip gradients, check the "
        "input data for NaN, and keep the loss computation in float32."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.checked = 0

    def _bad(self, value) -> bool:
        value = finite(value)
        return math.isnan(value) or (not self.params["only_nan"] and math.isinf(value))

    def on_loss(self, record: dict) -> None:
        self.checked += 1
        if self._bad(record["loss"]):
            self.found(
                record["step"],
                "loss",
                f"step {record['step']}: the training loss is {record['loss']}",
            )

    def on_tensors(self, record: dict) -> None:
        for group, label in (("grads", "gradient"), ("weights", "weight")):
            for name, stats in record.get(group, {}).items():
                nan, inf = int(stats[3]), int(stats[4])
                if nan or (inf and not self.params["only_nan"]):
                    self.found(
                        record["step"],
                        f"{label}/{name}",
                        f"step {record['step']}: {label} {name} has {nan} NaN and {inf} "
                        "infinite values",
                    )
                    return

    def quiet_details(self) -> str:
        return f"all losses, gradients and weights were finite ({self.checked} steps)"


class Overfit(Rule):
    """(mean validation loss - mean training loss) / mean training loss > ``ratio_threshold``
    at ``patience`` validation passes in a row, from training step ``start_step`` on.

    The training mean is over the steps since the previous validation pass.
    """

    name = "Overfit"
    defaults = {"start_step": 0, "patience": 1, "ratio_threshold": 0.1}
    advice = (
        "The model fits the training set much better than the validation set: add "
        "augmentation or weight decay, freeze more of the backbone, train fewer epochs, or "
        "collect more data."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.strikes = 0
        self.checked = 0
        self.worst = -math.inf

    def on_eval(self, record: dict) -> None:
        if record["step"] < self.params["start_step"]:
            return
        train, valid = finite(record["train_loss"]), finite(record["valid_loss"])
        if not (math.isfinite(train) and math.isfinite(valid)) or train <= 0:
            return
        self.checked += 1
        ratio = (valid - train) / train
        self.worst = max(self.worst, ratio)
        self.strikes = self.strikes + 1 if ratio > self.params["ratio_threshold"] else 0
        if self.strikes >= self.params["patience"]:
            self.found(
                record["step"],
                "loss",
                f"epoch {record['epoch']} (step {record['step']}): validation loss {valid:.4g} "
                f"vs training loss {train:.4g}, ratio {ratio:.3g} > "
                f"{self.params['ratio_threshold']:g} for {self.strikes} validation pass(es)",
            )

    def quiet_details(self) -> str:
        if not self.checked:
            return "no validation pass to compare with"
        return (
            f"(validation - training) / training loss stayed at most {self.worst:.3g} "
            f"(threshold {self.params['ratio_threshold']:g}) over {self.checked} validation passes"
        )


class Overtraining(Rule):
    """Training went on after a loss stopped improving: the validation loss has not
    improved by ``delta`` for ``patience_validation`` validation passes, or the training
    loss (its per-epoch mean) has not for ``patience_train`` passes."""

    name = "Overtraining"
    defaults = {"patience_train": 5, "patience_validation": 10, "delta": 0.01}
    advice = (
        "Training continued after the loss stopped improving: train fewer epochs or stop "
        "early; the job already keeps the best validation epoch's weights."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.best = {"train": math.inf, "valid": math.inf}
        self.since = {"train": 0, "valid": 0}
        self.passes = 0

    def on_eval(self, record: dict) -> None:
        self.passes += 1
        patience = {
            "train": self.params["patience_train"],
            "valid": self.params["patience_validation"],
        }
        for series in ("valid", "train"):
            value = finite(record[f"{series}_loss"])
            if not math.isfinite(value):
                continue
            if value < self.best[series] - self.params["delta"]:
                self.best[series], self.since[series] = value, 0
            else:
                self.since[series] += 1
            if self.since[series] >= patience[series]:
                label = "validation" if series == "valid" else "training"
                self.found(
                    record["step"],
                    f"{series}_loss",
                    f"epoch {record['epoch']} (step {record['step']}): the {label} loss has not "
                    f"improved by {self.params['delta']:g} for {self.since[series]} validation "
                    f"passes (best {self.best[series]:.4g})",
                )
                return

    def quiet_details(self) -> str:
        return (
            f"both losses kept improving by {self.params['delta']:g} within their patience "
            f"({self.passes} validation passes)"
        )


class LossNotDecreasing(Rule):
    """The training loss, averaged over windows of ``num_steps`` steps, compared with the
    previous window: issues when it fell by less than ``diff_percent`` percent, or rose
    by more than ``increase_threshold_percent`` percent.

    Mini-batch losses are noisy, so a window only counts when the evidence says so: the
    decrease's upper bound must be below ``diff_percent`` (a stuck loss), or the
    increase's lower bound above ``increase_threshold_percent`` (a diverging one). The
    bounds are 3.29 standard errors wide (99.95% one-sided), so a converged, noisy run
    compared window after window does not fire by chance.
    ``mode`` EVAL compares validation passes instead of training windows.
    """

    name = "LossNotDecreasing"
    defaults = {
        "num_steps": 10,
        "diff_percent": 0.1,
        "increase_threshold_percent": 5.0,
        "mode": "TRAIN",
    }
    advice = (
        "The loss is not going down: check the learning rate (too small: stuck; too large: "
        "diverging), the labels, and that the right parameters are trainable."
    )

    def __init__(self, **params):
        super().__init__(**params)
        if self.params["mode"].upper() not in ("TRAIN", "EVAL"):
            raise RuleConfigError("LossNotDecreasing.mode must be TRAIN or EVAL")
        self.window: list[float] = []
        self.previous: tuple[float, float, int] | None = None  # mean, standard error, last step
        self.comparisons = 0

    def on_loss(self, record: dict) -> None:
        if self.params["mode"].upper() != "TRAIN":
            return
        value = finite(record["loss"])
        if not math.isfinite(value):
            return  # ExplodingTensor's business
        self.window.append(value)
        if len(self.window) >= self.params["num_steps"]:
            mean = statistics.fmean(self.window)
            spread = statistics.stdev(self.window) if len(self.window) > 1 else 0.0
            self._compare(mean, spread / math.sqrt(len(self.window)), record["step"], "training")
            self.window = []

    def on_eval(self, record: dict) -> None:
        if self.params["mode"].upper() == "EVAL" and is_finite(record["valid_loss"]):
            self._compare(finite(record["valid_loss"]), 0.0, record["step"], "validation")

    def _compare(self, mean: float, error: float, step: int, label: str) -> None:
        previous = self.previous
        self.previous = (mean, error, step)
        if previous is None or previous[0] <= 0:
            return
        self.comparisons += 1
        before, before_error, before_step = previous
        # The noisier window's standard error for both: one window's sample deviation
        # from ten losses can be small by chance, and must not make a fluke look certain.
        margin = EVIDENCE_Z * math.sqrt(2) * max(error, before_error)
        decrease_pct_high = (before - mean + margin) / before * 100
        increase_pct_low = (mean - before - margin) / before * 100
        where = f"{label} loss at step {step} vs step {before_step}"
        change = f"{before:.4g} -> {mean:.4g} ({(mean - before) / before * 100:+.1f}%)"
        if increase_pct_low > self.params["increase_threshold_percent"]:
            self.found(
                step,
                "loss",
                f"{where}: {change}, a rise beyond "
                f"{self.params['increase_threshold_percent']:g}% even allowing for noise",
            )
        elif decrease_pct_high < self.params["diff_percent"]:
            self.found(
                step,
                "loss",
                f"{where}: {change}, short of the {self.params['diff_percent']:g}% decrease "
                "expected, even allowing for noise",
            )

    def quiet_details(self) -> str:
        return f"the loss decreased or stayed within its noise in {self.comparisons} comparisons"


class PoorWeightInitialization(Rule):
    """Over the first ``steps`` steps: the variance of the ReLU inputs differs across
    layers by more than a factor ``threshold``; or the gradients' 5th-95th percentile
    range is below ``distribution_range`` while the loss has not decreased over the first
    ``patience`` steps (nothing is learning)."""

    name = "PoorWeightInitialization"
    defaults = {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10}
    advice = (
        "Activations or gradients are badly scaled from the start: use Kaiming/Xavier "
        "initialisation or pretrained weights, and normalise the inputs."
    )

    def __init__(self, **params):
        super().__init__(**params)
        self.losses: list[float] = []
        self.checked = 0
        self.worst_ratio = 0.0

    def on_loss(self, record: dict) -> None:
        if record["step"] < self.params["steps"] and is_finite(record["loss"]):
            self.losses.append(finite(record["loss"]))

    def on_tensors(self, record: dict) -> None:
        step = record["step"]
        if step >= self.params["steps"]:
            return
        variances = {
            name: finite(stats[1])
            for name, stats in record.get("relu", {}).items()
            if is_finite(stats[1])
        }
        if len(variances) >= 2:
            self.checked += 1
            low = min(variances, key=lambda name: variances[name])
            high = max(variances, key=lambda name: variances[name])
            ratio = variances[high] / max(variances[low], 1e-30)
            self.worst_ratio = max(self.worst_ratio, ratio)
            if ratio > self.params["threshold"]:
                self.found(
                    step,
                    f"relu_input/{low}",
                    f"step {step}: ReLU input variance ranges from {variances[low]:.3g} "
                    f"({low}) to {variances[high]:.3g} ({high}), a factor {ratio:.3g} > "
                    f"{self.params['threshold']:g}",
                )
                return
        spread = record.get("grad_spread")
        patience = self.params["patience"]
        if spread and len(self.losses) > patience:
            width = finite(spread[1]) - finite(spread[0])
            stuck = min(self.losses[1 : patience + 1]) >= self.losses[0]
            if width < self.params["distribution_range"] and stuck:
                self.found(
                    step,
                    "gradients",
                    f"step {step}: gradients' 5th-95th percentile range is {width:.3g} < "
                    f"{self.params['distribution_range']:g} and the loss has not decreased "
                    f"over the first {patience} steps",
                )

    def quiet_details(self) -> str:
        if not self.checked:
            return "no ReLU inputs were recorded in the first steps (nothing to compare)"
        return (
            f"ReLU input variances stayed within a factor {self.worst_ratio:.3g} of each "
            f"other (threshold {self.params['threshold']:g}) over {self.checked} early steps"
        )


DEBUG_RULES: tuple[type[Rule], ...] = (
    VanishingGradient,
    ExplodingTensor,
    Overfit,
    Overtraining,
    LossNotDecreasing,
    PoorWeightInitialization,
)
