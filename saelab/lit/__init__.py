"""LightningModules (one per SAE family, on a shared base, and one training several at once),
callbacks, and what distributed training and resuming need."""

from .base import SAELitModule
from .callbacks import FeatureRecoveryCallback
from .checkpointing import AtomicCheckpointIO, RunState, resume_checkpoint
from .families import LIT_CLASSES, lit_class_for
from .multi import MultiSAELit
from .preemption import StopOnSignal


def __getattr__(name: str):
    # JumpReLULit, TopKLit, ...: made per registered family (families.py).
    from . import families

    return getattr(families, name)


__all__ = [
    "LIT_CLASSES",
    "AtomicCheckpointIO",
    "FeatureRecoveryCallback",
    "MultiSAELit",
    "RunState",
    "SAELitModule",
    "StopOnSignal",
    "lit_class_for",
    "resume_checkpoint",
]
