"""LightningModules (one per SAE family, on a shared base) and callbacks."""

from .base import SAELitModule
from .callbacks import FeatureRecoveryCallback
from .config import TrainConfig
from .families import (
    LIT_CLASSES,
    BatchTopKLit,
    BatchTopKTrainConfig,
    GatedLit,
    GatedTrainConfig,
    JumpReLULit,
    JumpReLUTrainConfig,
    ReLULit,
    ReLUTrainConfig,
    TopKLit,
    TopKTrainConfig,
    lit_class_for,
)

__all__ = [
    "SAELitModule", "FeatureRecoveryCallback", "TrainConfig", "LIT_CLASSES", "lit_class_for",
    "JumpReLULit", "GatedLit", "TopKLit", "BatchTopKLit", "ReLULit",
    "JumpReLUTrainConfig", "GatedTrainConfig", "TopKTrainConfig", "BatchTopKTrainConfig", "ReLUTrainConfig",
]
