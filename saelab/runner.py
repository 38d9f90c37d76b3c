"""One training run from a composed Hydra config: build data and module, fit (or continue a
checkpointed run), validate, export.

Kept apart from ``train.py`` so tests can run the exact same path on a config composed with
Hydra's compose API. Every rank of a distributed run executes all of it; only global rank 0
writes the exports, eval.json, metrics.json and config.json (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from saelab import run_config
from saelab.console import ConfigError, is_terminal, quiet_lightning
from saelab.data.lm_data import LMDataConfig
from saelab.evaluation import evaluate_on_validation
from saelab.fileio import finite_or_null, write_json
from saelab.io import save_sae
from saelab.launch import SameRunFolder, launch_scope
from saelab.lit import (
    AtomicCheckpointIO,
    FeatureRecoveryCallback,
    MultiSAELit,
    RunState,
    StopOnSignal,
    lit_class_for,
    resume_checkpoint,
)
from saelab.lit.checkpointing import CHECKPOINT, checkpoint_step
from saelab.lit.guards import NonFiniteGuard
from saelab.lit.progress import StepProgressBar
from saelab.lit.repetition import RepeatedDataWarning
from saelab.run_checks import check_run_folder, clear_run_folder
from saelab.summary import run_summary

# Epoch-level validation logs are torchmetrics results, already reduced over the ranks when
# computed: Lightning's advice to add sync_dist=True to them does not apply.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
# An SAE run is sized in steps, not epochs: Lightning's advice about an epoch shorter than the
# logging interval, and about the data loader's workers (the batches are slices of a memory-mapped
# cache or a stream, not per-item loading), does not apply.
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# Lightning's own use of a torch API torch has deprecated: nothing a user can change.
warnings.filterwarnings("ignore", message=r".*isinstance.treespec, LeafSpec.*")


def build(cfg: DictConfig):
    """(datamodule, LightningModule) from a composed config; every value is validated here,
    before any work starts. With ``multi.saes`` set, the module trains all of them at once."""
    run_config.check(cfg)
    data_cfg = _to_object(cfg, "data")
    if hasattr(data_cfg, "progress") and not is_terminal():
        data_cfg.progress = False  # a bar in a log file is carriage returns, not progress
    members = multi_configs(cfg)
    if members:
        module = MultiSAELit({name: _member(cfg.seed, c) for name, c in members.items()})
    else:
        sae_cfg = _to_object(cfg, "sae")
        module = lit_class_for(sae_cfg)(**dataclasses.asdict(sae_cfg))
    return data_cfg.build(), module


def _member(seed: int, config):
    # Each member starts from the initialisation it would get if trained alone with this seed,
    # whatever its position among the members (so it can be compared with a single run).
    pl.seed_everything(seed, workers=True, verbose=False)
    return lit_class_for(config)(**dataclasses.asdict(config))


def _to_object(cfg: DictConfig, group: str, node=None):
    """The group's dataclass; its range errors are reworded to name the key as users type it
    (``sae.k=...`` rather than ``TopKTrainConfig.k=...``)."""
    node = cfg[group] if node is None else node
    try:
        return OmegaConf.to_object(node)
    except ValueError as error:
        schema = OmegaConf.get_type(node).__name__
        raise ValueError(str(error).replace(f"{schema}.", f"{group}.")) from None


def multi_configs(cfg: DictConfig) -> dict:
    """``multi.saes``: name -> the member's family config. A member given as a family option
    (``+sae@multi.saes.<name>=topk``) is complete; one given as a few keys
    (``+multi.saes.<name>={l0_coefficient:1e-4}``) is those keys on top of ``sae``."""
    saes = OmegaConf.select(cfg, "multi.saes")
    members = {}
    for name in saes or {}:
        key, node = f"multi.saes.{name}", saes[name]
        try:
            if not dataclasses.is_dataclass(OmegaConf.get_type(node)):
                node = OmegaConf.merge(cfg.sae, node)
            elif OmegaConf.is_missing(node, "d_in"):  # a family option has no d_in of its own
                node = OmegaConf.merge(node, {"d_in": cfg.sae.d_in})
        except OmegaConfBaseException as error:
            raise ValueError(f"{key}: {error}".splitlines()[0]) from None
        members[name] = _to_object(cfg, key, node)
    return members


def _callbacks(
    cfg: DictConfig, output_dir: Path, logger, stopper: StopOnSignal
) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [
        # First, so a NaN stops the step before anything saves it (ModelCheckpoint runs last).
        NonFiniteGuard(output_dir / CHECKPOINT),
        ModelCheckpoint(
            dirpath=output_dir / CHECKPOINT.parent,
            every_n_train_steps=cfg.checkpoint_every_n_steps,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,  # always last.ckpt, even when resuming into the folder
        ),
        RunState(OmegaConf.to_container(cfg, resolve=True)),
        stopper,
        SameRunFolder(output_dir),
        FeatureRecoveryCallback(),
        RepeatedDataWarning(),
    ]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.trainer.get("enable_progress_bar") is not False:  # None: Lightning's default, on
        callbacks.append(StepProgressBar())  # steps of max_steps, not "Epoch 15/-2"
    return callbacks


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (or continue) one run; returns the final validation metrics (also written to
    metrics.json). A run stopped by SIGTERM/SIGINT returns ``{"interrupted": ..., "exit_code":
    ...}`` after checkpointing, without validating or exporting."""
    with launch_scope(cfg):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        datamodule, module = build(cfg)  # validates everything before touching the run folder
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if cfg.get("resume") and Path(cfg.resume).resolve() != output_dir.resolve():
        raise ConfigError(
            f"resume={cfg.resume} continues a run in its own folder, but this run writes to "
            f"{output_dir}. Drop hydra.run.dir/output_dir overrides; and do not combine resume= "
            "with -m: to resume a sweep, rerun it with the same hydra.sweep.dir (every job "
            "continues from the checkpoint in its own folder)"
        )
    if cfg.get("overwrite"):
        clear_run_folder(output_dir)
    ckpt_path = resume_checkpoint(output_dir, resolved, explicit=bool(cfg.get("resume")))
    finished = check_run_folder(
        output_dir,
        checkpoint_step(ckpt_path) if ckpt_path else None,
        cfg.trainer.max_steps,
        overwrite=bool(cfg.get("overwrite")),
    )
    if finished is not None:  # this very run is already complete: nothing is rewritten
        return finished
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    stopper = StopOnSignal(output_dir / CHECKPOINT)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        callbacks=_callbacks(cfg, output_dir, logger, stopper),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if stopper.stopped_at is not None:
        return {
            "interrupted": stopper.stopped_at,
            "exit_code": stopper.exit_code,
            "steps": trainer.global_step,
        }
    results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items()}
    metrics["steps"] = trainer.global_step
    # Tokens every rank trained on together (each of the world's ranks reads its own batches).
    metrics["train_tokens"] = (
        trainer.global_step
        * datamodule.batch_size
        * trainer.world_size
        * trainer.accumulate_grad_batches
    )
    # Rows the validation batches held together: trainer.limit_val_batches may read fewer than
    # data.val_tokens, a sample of them (the cache shuffles within a shard), not the first ones.
    metrics["val_tokens"] = (
        sum(trainer.num_val_batches) * datamodule.batch_size * trainer.world_size
    )
    saes = module.export_saes()  # every rank: gathers the shards under trainer=fsdp
    members = getattr(module, "members", {"": module})
    for name, member in members.items():
        metrics[_key(name, "activation_scale")] = float(member.activation_scale)
        if member.sae.transcoder:  # the input's scale above, the target's here
            metrics[_key(name, "target_scale")] = float(member.target_scale)
        metrics[_key(name, "family")] = member.family.name
    if trainer.is_global_zero:
        _write_outputs(cfg, output_dir, datamodule.cfg, saes, metrics, resolved)
        _log_evaluation(trainer, metrics)
        same_rows = eval_tokens(cfg, datamodule.cfg) == metrics["val_tokens"]
        summary = run_summary(output_dir, metrics, list(members), cfg.export, same_rows)
        print(summary, flush=True)
    return metrics


def _evaluate(sae, data_cfg, tokens: int, folder: Path) -> dict:
    terminal = is_terminal()
    if not terminal:
        print(f"evaluating on {tokens:,} held-out tokens, SAE spliced into the LM", flush=True)
    return evaluate_on_validation(sae, data_cfg, tokens, progress=terminal, output_dir=folder)


def _log_evaluation(trainer: pl.Trainer, metrics: dict) -> None:
    """The held-out evaluation's numbers as TensorBoard scalars at the last step, so the curves
    show the figures eval.json, the summary and report.py show."""
    evaluation = {k: v for k, v in metrics.items() if "eval/" in k}
    if not evaluation:
        return
    for logger in trainer.loggers:
        logger.log_metrics(evaluation, step=trainer.global_step)
        logger.finalize("success")  # the fit already closed it: flush what was added


def _finite(metrics: dict) -> dict:
    # Training's numbers were checked by NonFiniteGuard; what can still be undefined here is a
    # metric of the finished SAE (a ratio over a zero denominator): null, with the reason.
    return finite_or_null(metrics, "undefined on the validation data (e.g. a zero denominator)")


def _key(member: str, name: str) -> str:
    return f"{member}/{name}" if member else name


def _export_metadata(data_cfg) -> dict:
    """What the data source knows about where the SAE reads (model_name, hook_name, hook_layer),
    for the export's cfg.json: SAELens and SAEBench read it."""
    describe = getattr(data_cfg, "export_metadata", None)
    return describe() if describe is not None else {}


def eval_tokens(cfg: DictConfig, data_cfg) -> int:
    """Held-out tokens of the end-of-run evaluation; 0 where there is none (it needs LM data).
    ``eval_tokens=null`` reads the validation split's ``data.val_tokens`` rows, the ones the
    validation batches hold, so the summary's held-out and validation L0/FVU are computed on
    the same tokens (unless trainer.limit_val_batches validates only some of the batches)."""
    if not isinstance(data_cfg, LMDataConfig):
        return 0
    return data_cfg.val_tokens if cfg.eval_tokens is None else cfg.eval_tokens


def _write_outputs(
    cfg: DictConfig, output_dir: Path, data_cfg, saes: dict, metrics: dict, resolved
) -> None:
    """Rank 0 only: evaluation with the LM, the exported SAEs, metrics.json and config.json.
    A single SAE goes to ``sae/``; the members of a multi-SAE run to ``sae/<name>/``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tokens = eval_tokens(cfg, data_cfg)
    for name, sae in saes.items():
        if tokens > 0:
            # The paper's headline metric needs the LM: splice the raw-activation SAE back in.
            # Writes eval.json and the feature-density picture into the run (or member) folder.
            folder = output_dir / "eval" / name if name else output_dir
            evaluation = _evaluate(sae, data_cfg, tokens, folder)
            metrics.update(
                {
                    _key(name, f"eval/{k}"): float(v)
                    for k, v in evaluation.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
            )
    for name, sae in saes.items():
        if cfg.export:
            member_metrics = {
                k.removeprefix(f"{name}/"): v
                for k, v in metrics.items()
                if not name or k.startswith(f"{name}/") or k in ("steps", "train_tokens")
            }
            metadata = {"metrics": _finite(member_metrics), **_export_metadata(data_cfg)}
            save_sae(sae, output_dir / "sae" / name, metadata=metadata)
    write_json(output_dir / "metrics.json", _finite(metrics))
    write_json(output_dir / "config.json", resolved)
