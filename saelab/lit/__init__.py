"""LightningModules (one per SAE family, on a shared base, and one training several at once),
callbacks, and what distributed training and resuming need."""

from .base import SAELitModule
from .callbacks import FeatureRecoveryCallback
from .checkpointing import AtomicCheckpointIO, RunState, resume_checkpoint
from .families import (
    LIT_CLASSES,
    BatchTopKLit,
    GatedLit,
    JumpReLULit,
    MatryoshkaJumpReLULit,
    MatryoshkaLit,
    ReLULit,
    TopKLit,
    lit_class_for,
)
from .multi import MultiSAELit
from .preemption import StopOnSignal

__all__ = [
    "LIT_CLASSES",
    "AtomicCheckpointIO",
    "BatchTopKLit",
    "FeatureRecoveryCallback",
    "GatedLit",
    "JumpReLULit",
    "MatryoshkaJumpReLULit",
    "MatryoshkaLit",
    "MultiSAELit",
    "ReLULit",
    "RunState",
    "SAELitModule",
    "StopOnSignal",
    "TopKLit",
    "lit_class_for",
    "resume_checkpoint",
]
