"""SageMaker on one machine, split by lifecycle (``service`` says which part owns what)."""

from sagedrop.local.sagemaker.service import LocalSageMaker

__all__ = ["LocalSageMaker"]
