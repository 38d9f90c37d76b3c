"""Structured-config schemas registered with Hydra's ConfigStore, so a typo or a wrong type in
any ``sae.*`` or ``data.*`` key fails when the config is composed, naming the key; value ranges
are checked by each dataclass's ``__post_init__`` when the config is turned into objects."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from saelab.data.activations import ActivationsDataConfig
from saelab.data.files import FilesDataConfig, data_width
from saelab.data.lm_stream import StreamDataConfig
from saelab.data.synthetic import SyntheticDataConfig
from saelab.data.synthsaebench import SynthSAEBenchDataConfig
from saelab.lm.config import ModelConfig
from saelab.lm.shape import model_shape
from saelab.lm.sites import SiteConfig
from saelab.run_config import RunConfig, TrainerConfig
from saelab.sae import FAMILIES

SCHEMAS = {
    "sae": {f"{name}_schema": family.train_config for name, family in FAMILIES.items()},
    "data": {
        "synthetic_schema": SyntheticDataConfig,
        "activations_schema": ActivationsDataConfig,
        "files_schema": FilesDataConfig,
        "stream_schema": StreamDataConfig,
        "synthsaebench_schema": SynthSAEBenchDataConfig,
    },
    "model": {"schema": ModelConfig},
    "site": {"schema": SiteConfig},
    "trainer": {"schema": TrainerConfig},
}


def site_width(model, site: str) -> int:
    """``${saelab.site_width:${model},${site.name}}``: the site's width, read from the model's
    own config when the config is composed (memoised; no weights are loaded)."""
    return model_shape(model).width(site)


def sae_width(data_width: int, site: str) -> int:
    """``${saelab.sae_width:${data.d_in},${site.name}}``: the width the SAE reads. A transcoder's
    rows are [input | target], so it reads half of each row (docs/transcoders.md)."""
    if site != "transcoder":
        return data_width
    if data_width % 2:
        raise ValueError(
            f"site=transcoder reads rows [input | target] of two equal halves, but the data is "
            f"{data_width} wide (odd): give it activations written as [x | y] pairs."
        )
    return data_width // 2


def register_configs() -> None:
    OmegaConf.register_new_resolver("saelab.site_width", site_width, replace=True)
    OmegaConf.register_new_resolver("saelab.sae_width", sae_width, replace=True)
    OmegaConf.register_new_resolver(
        "saelab.is_transcoder", lambda site: site == "transcoder", replace=True
    )
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)  # the root keys (conf/config.yaml)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=group, name=name, node=node)
    # data=files reads d_in from the files' headers, so ${data.d_in} (and sae.d_in) resolve
    # before the config becomes objects, with nothing for the user to restate.
    OmegaConf.register_new_resolver("saelab.data_width", data_width, replace=True)
