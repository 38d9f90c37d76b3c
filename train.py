"""Train a sparse autoencoder.

python train.py                                  # JumpReLU on the default data
python train.py sae=topk sae.k=16                # another family / knob
python train.py -m sae=jumprelu,gated,topk,relu  # a Hydra multirun sweep
python train.py trainer=ddp trainer.devices=4    # DDP (docs/scaling.md)
python train.py resume=outputs/<date>/<time>     # continue a stopped run exactly
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from saelab.config import register_configs
from saelab.console import ConfigError, exit_on_config_error
from saelab.launch import compose_job, launched_job
from saelab.runner import train

register_configs()
# hydra.run.dir: the folder of the run named by resume=, else a new timestamped folder.
OmegaConf.register_new_resolver("saelab.run_dir", lambda resume, new: resume or new, replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except ConfigError as error:  # one line, and no run folder for a run that never started
        exit_on_config_error(error, Path(cfg.output_dir))
    if "interrupted" in metrics:  # SIGTERM/SIGINT: checkpointed; tell the scheduler/shell
        raise SystemExit(metrics["exit_code"])
    return metrics.get("val/fvu", float("nan"))


if __name__ == "__main__":
    job = launched_job()
    if job is not None:  # a DDP rank started by Lightning: run rank 0's job, not argv (launch.py)
        train(compose_job(job))
    else:
        main()
