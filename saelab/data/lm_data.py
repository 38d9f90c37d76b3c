"""What every source of LM activations shares: the site, the model, the corpus, the batching.

``data=activations`` (the disk cache, ``activations.py``) and ``data=stream`` (the LM run
alongside training, ``lm_stream.py``) extend ``LMDataConfig``; evaluation, the feature browser
and the end-of-run splicing need only these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saelab.lm.config import ModelConfig
from saelab.lm.corpus import CorpusConfig
from saelab.lm.shape import model_shape
from saelab.lm.sites import HF_MODULES, TRANSFORMER_LENS_HOOKS, check_site


@dataclass
class LMDataConfig:
    site: str = "resid"
    """resid | mlp | attn | transcoder (docs/maths.md §5, docs/transcoders.md); set through the
    ``site`` group: ``site=mlp``."""
    layer: int = 12
    """Decoder layer 0..n_layers-1; set through the top-level ``layer=``."""
    d_in: int = 128
    """The site's width: the yaml resolves it from the model's own config; checked again
    against the loaded model before any activation is used."""
    model: Any = None
    """The ``model`` group (interpolated): which LM to read."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    context_length: int | None = None
    """Tokens per LM context; None = the model's context_length."""
    batch_size: int = 4096
    val_tokens: int = 16_384
    lm_batch_size: int = 8
    """Contexts per LM forward."""
    device: str = "auto"
    """Where the LM runs: auto (the training device under a Trainer, else cuda if available),
    cpu, cuda, cuda:1, ..."""
    seed: int = 0
    prefetch_batches: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = ModelConfig()
        elif not isinstance(self.model, ModelConfig):
            self.model = ModelConfig(**self.model)
        if isinstance(self.corpus, dict):
            self.corpus = CorpusConfig(**self.corpus)
        check_site(self.site)
        model_shape(self.model).check_layer(self.layer)  # the real model's depth, no weights
        for key in self.positive_keys():
            if getattr(self, key) <= 0:
                raise ValueError(f"data.{key}={getattr(self, key)!r} is invalid: it must be > 0.")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(
                f"data.context_length={self.context_length} is invalid: it must be >= 2."
            )
        if self.val_tokens < self.batch_size:
            raise ValueError(
                f"data.val_tokens={self.val_tokens} is invalid: it must be >= "
                f"data.batch_size={self.batch_size} (one full batch)."
            )
        if self.prefetch_batches < 0:
            raise ValueError(
                f"data.prefetch_batches={self.prefetch_batches} is invalid: it must be >= 0."
            )

    def positive_keys(self) -> list[str]:
        return ["d_in", "val_tokens", "batch_size", "lm_batch_size"]

    @property
    def contexts(self) -> int:
        return self.context_length or self.model.context_length

    def export_metadata(self) -> dict:
        """Where an SAE trained on these activations reads, for its export's cfg.json (a
        transcoder: where it reads and where it writes, as SAELens names both)."""
        meta = {
            "model_name": self.model.name_or_path,
            "hook_name": TRANSFORMER_LENS_HOOKS[self.site].format(layer=self.layer),
            "hook_layer": self.layer,
            "site": self.site,
            "context_size": self.context_length or self.model.context_length,
            "prepend_bos": self.model.prepend_bos,
        }
        if self.site == "transcoder":
            meta.update(transcoder_hooks(self.model, self.layer))
        return meta


def check_validation_size(tokens: int, batch_size: int, corpus: CorpusConfig) -> None:
    """Validation needs one full batch; say so before any training data is computed."""
    if tokens < batch_size:
        raise ValueError(
            f"the validation split of corpus.source={corpus.source!r} holds only {tokens:,} "
            f"tokens, less than one batch (data.batch_size={batch_size}). Raise "
            f"data.corpus.val_fraction (now {corpus.val_fraction}), lower data.batch_size, or "
            "add more text."
        )


def transcoder_hooks(model, layer: int) -> dict:
    """A transcoder's input and output points: TransformerLens names (``hook_name``,
    ``hook_name_out``) and, where the layout is known, Hugging Face module outputs
    (``hf_hook_name``, ``hf_hook_name_out``), as SAELens's cfg.json metadata holds them."""
    from saelab.lm.shape import model_shape

    hooks = {
        "hook_name": TRANSFORMER_LENS_HOOKS["transcoder"].format(layer=layer),
        "hook_name_out": TRANSFORMER_LENS_HOOKS["mlp"].format(layer=layer),
    }
    shape_layout = model_shape(model).layout
    if shape_layout in HF_MODULES:
        read, write = HF_MODULES[shape_layout]
        hooks["hf_hook_name"] = f"model.layers.{layer}.{read}.output"
        hooks["hf_hook_name_out"] = f"model.layers.{layer}.{write}.output"
    return hooks
