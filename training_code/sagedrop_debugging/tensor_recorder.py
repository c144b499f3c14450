"""Per-layer gradient, weight and ReLU-input statistics at the saved steps of a debug job.

Statistics are reduced on the device and fetched with one host transfer per group, and
only at saved steps (every step of the first ``dense_steps``, which
PoorWeightInitialization judges, then every ``save_interval``), so the recorder costs
little between them. A non-finite norm is the cheap sign of NaN or infinity; only then
are the bad values counted.
"""

from __future__ import annotations

import torch
from torch import nn

GRAD_SAMPLE_PER_TENSOR = 256


class TensorRecorder:
    def __init__(self, model: nn.Module, save_interval: int, dense_steps: int):
        self.save_interval = max(1, save_interval)
        self.dense_steps = max(0, dense_steps)
        self.parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.capturing = False
        self._relu: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._hooks = [
            module.register_forward_pre_hook(self._relu_hook(name))
            for name, module in model.named_modules()
            if isinstance(module, nn.ReLU)
        ]

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.parameters]

    def saves(self, step: int) -> bool:
        return step < self.dense_steps or step % self.save_interval == 0

    def begin_step(self, step: int) -> None:
        self.capturing = self.saves(step)
        self._relu, self._calls = {}, {}

    def _relu_hook(self, name: str):
        def hook(_module, inputs):
            # Runs before an in-place ReLU overwrites its input. torchvision's blocks call
            # one ReLU module twice, so each call gets its own name.
            if not self.capturing or not torch.is_grad_enabled():
                return
            count = self._calls.get(name, 0)
            self._calls[name] = count + 1
            label = name if count == 0 else f"{name}#{count + 1}"
            with torch.no_grad():
                variance, mean = torch.var_mean(inputs[0].detach().float())
                self._relu[label] = torch.stack([mean, variance])

        return hook

    def collect(self, step: int) -> dict:
        """The ``tensors`` record for this step; call after backward, before the optimizer."""
        self.capturing = False
        with torch.no_grad():
            record = {"kind": "tensors", "step": step}
            record["grads"], record["grad_spread"] = self._gradient_stats()
            record["weights"] = self._weight_stats()
            if self._relu:
                values = torch.stack(list(self._relu.values())).tolist()
                record["relu"] = dict(zip(self._relu, values, strict=True))
            else:
                record["relu"] = {}
        return record

    def _gradient_stats(self) -> tuple[dict, list[float] | None]:
        named = [(n, p.grad.detach()) for n, p in self.parameters if p.grad is not None]
        if not named:
            return {}, None
        grads = [g.float() for _, g in named]
        # Multi-tensor reductions for the norms; the peak from one min/max pass per tensor
        # (an infinity-norm or abs() would read or copy every value once more).
        l1, l2 = (torch.stack(torch._foreach_norm(grads, order)) for order in (1, 2))
        extremes = torch.stack([torch.stack(torch.aminmax(g)) for g in grads])
        peak = extremes.abs().amax(dim=1)
        sizes = torch.tensor([g.numel() for g in grads], device=l1.device, dtype=l1.dtype)
        table = torch.stack([l1 / sizes, l2, peak], dim=1).tolist()
        stats = {}
        for (name, grad), (mean_abs, norm, max_abs) in zip(named, table, strict=True):
            nan, inf = _bad_counts(grad, norm)
            stats[name] = [mean_abs, norm, max_abs, nan, inf]
        return stats, self._spread(grads)

    @staticmethod
    def _spread(grads: list[torch.Tensor]) -> list[float] | None:
        """5th and 95th percentile of a strided sample of every gradient value."""
        samples = []
        for grad in grads:
            flat = grad.reshape(-1)
            stride = max(1, flat.numel() // GRAD_SAMPLE_PER_TENSOR)
            samples.append(flat[::stride][:GRAD_SAMPLE_PER_TENSOR])
        pooled = torch.cat(samples)
        pooled = pooled[torch.isfinite(pooled)]
        if not pooled.numel():
            return None
        return torch.quantile(pooled, torch.tensor([0.05, 0.95], device=pooled.device)).tolist()

    def _weight_stats(self) -> dict:
        if not self.parameters:
            return {}
        weights = [p.detach().float() for _, p in self.parameters]
        norms = torch.stack(torch._foreach_norm(weights, 2))
        means = torch.stack([w.mean() for w in weights])
        sizes = torch.tensor([w.numel() for w in weights], device=norms.device, dtype=norms.dtype)
        # std from the norm and the mean: sum(w^2) = norm^2, no second pass over the values
        variance = (norms**2 - sizes * means**2) / (sizes - 1).clamp(min=1)
        table = torch.stack([means, variance.clamp(min=0).sqrt(), norms], dim=1).tolist()
        stats = {}
        for (name, p), (mean, std, norm) in zip(self.parameters, table, strict=True):
            nan, inf = _bad_counts(p.detach(), norm)
            stats[name] = [mean, std, norm, nan, inf]
        return stats

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _bad_counts(tensor: torch.Tensor, norm: float) -> tuple[int, int]:
    if norm == norm and norm != float("inf"):
        return 0, 0
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
