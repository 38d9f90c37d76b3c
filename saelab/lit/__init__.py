"""LightningModules (one per SAE family, on a shared base, and one training several at once),
callbacks, and what distributed training and resuming need."""

from .base import SAELitModule
from .callbacks import FeatureRecoveryCallback
from .checkpointing import AtomicCheckpointIO, RunState, resume_checkpoint
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
from .multi import MultiSAELit
from .preemption import StopOnSignal

__all__ = [
    "LIT_CLASSES",
    "AtomicCheckpointIO",
    "BatchTopKLit",
    "BatchTopKTrainConfig",
    "FeatureRecoveryCallback",
    "GatedLit",
    "GatedTrainConfig",
    "JumpReLULit",
    "JumpReLUTrainConfig",
    "MultiSAELit",
    "ReLULit",
    "ReLUTrainConfig",
    "RunState",
    "SAELitModule",
    "StopOnSignal",
    "TopKLit",
    "TopKTrainConfig",
    "TrainConfig",
    "lit_class_for",
    "resume_checkpoint",
]
