"""Train a sparse autoencoder.

    python train.py                                  # JumpReLU on the default data
    python train.py sae=topk sae.k=16                # another family / knob
    python train.py -m sae=jumprelu,gated,topk,relu  # a Hydra multirun sweep
"""

import hydra
from omegaconf import DictConfig

from saelab.config import register_configs
from saelab.runner import train

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics.get("val/fvu", float("nan"))


if __name__ == "__main__":
    main()
