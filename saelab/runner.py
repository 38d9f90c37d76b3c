"""One training run from a composed Hydra config: build data and module, fit, validate, export.

Kept apart from ``train.py`` so tests can run the exact same path on a config composed with
Hydra's compose API.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from saelab.data.activations import ActivationsDataConfig
from saelab.evaluation import evaluate_on_validation
from saelab.io import save_sae
from saelab.lit import FeatureRecoveryCallback, lit_class_for


def build(cfg: DictConfig):
    """(datamodule, LightningModule) from a composed config; every value is validated here,
    before any work starts."""
    data_cfg, sae_cfg = _to_object(cfg, "data"), _to_object(cfg, "sae")
    return data_cfg.build(), lit_class_for(sae_cfg)(**dataclasses.asdict(sae_cfg))


def _to_object(cfg: DictConfig, group: str):
    """The group's dataclass; its range errors are reworded to name the key as users type it
    (``sae.k=...`` rather than ``TopKTrainConfig.k=...``)."""
    try:
        return OmegaConf.to_object(cfg[group])
    except ValueError as error:
        schema = OmegaConf.get_type(cfg[group]).__name__
        raise ValueError(str(error).replace(f"{schema}.", f"{group}.")) from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one SAE; returns the final validation metrics (also written to metrics.json)."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg)
    output_dir = Path(cfg.output_dir)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=output_dir / "checkpoints",
            every_n_train_steps=cfg.checkpoint_every_n_steps,
            save_top_k=0,
            save_last=True,
        ),
        FeatureRecoveryCallback(),
    ]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule)
    results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items()}
    metrics["activation_scale"] = float(module.activation_scale)
    metrics["steps"] = trainer.global_step
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        data_cfg = datamodule.cfg
        if cfg.eval_tokens > 0 and isinstance(data_cfg, ActivationsDataConfig):
            # The paper's headline metric needs the LM: splice the raw-activation SAE back in.
            # Writes eval.json and the feature-density picture into the run folder.
            evaluation = evaluate_on_validation(module.export_sae(), data_cfg, cfg.eval_tokens, output_dir=output_dir)
            metrics.update({f"eval/{k}": v for k, v in evaluation.items() if isinstance(v, float)})
        if cfg.export:
            save_sae(module.export_sae(), output_dir / "sae", metadata={"metrics": metrics})
        _write_json(output_dir / "metrics.json", metrics)
        _write_json(output_dir / "config.json", OmegaConf.to_container(cfg, resolve=True))
    return metrics


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
