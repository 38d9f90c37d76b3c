"""Shared fixtures: tiny shapes so the whole default suite runs in about a minute on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from saelab.sae import SAE_CLASSES, build_sae

FAMILIES = sorted(SAE_CLASSES)


def make_sae(architecture: str, d_in: int = 16, d_sae: int = 64, **kw):
    if "topk" in architecture:
        kw.setdefault("k", 4)
    return build_sae(architecture, d_in=d_in, d_sae=d_sae, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CONF_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"

# Small enough for seconds on a CPU, big enough that every family learns something.
TINY_RUN = [
    "data=synthetic",
    "data.d_in=16",
    "data.n_features=64",
    "data.mean_l0=3",
    "data.batch_size=256",
    "data.val_tokens=1024",
    "sae.expansion_factor=4",
    "sae.normalization_tokens=2048",
    "trainer=debug",
]


def compose_config(overrides: list[str], output_dir) -> DictConfig:  # noqa: F821
    """The real Hydra config, composed as train.py would, with output_dir pointed at a tmp dir."""
    from hydra import compose, initialize_config_dir

    from saelab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])
