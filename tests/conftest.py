"""Shared fixtures: tiny shapes, so each test takes seconds on 2 CPU cores (the whole suite
takes minutes: run the files you touch, or `-m "not slow"`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from pathlib import Path

import pytest
import torch

from saelab.sae import SAE_CLASSES, Step, build_sae, build_training

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: one torch thread each, and the same for the processes a test
    # starts (train.py subprocesses, DDP ranks), which inherit the environment.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


FAMILIES = sorted(SAE_CLASSES)
TINY = "tiny-gemma-2"


def _small_k(architecture: str, kw: dict) -> dict:
    # Families that keep k latents per token (TopK, BatchTopK, Matryoshka): a k that fits 64.
    if "k" in {f.name for f in dataclasses.fields(SAE_CLASSES[architecture].config_class)}:
        kw.setdefault("k", 4)
    return kw


def make_sae(architecture: str, d_in: int = 16, d_sae: int = 64, **kw):
    """An inference SAE (shape keys, and k for the TopK families)."""
    return build_sae(architecture, d_in=d_in, d_sae=d_sae, **_small_k(architecture, kw))


def make_training(architecture: str, d_in: int = 16, d_sae: int = 64, **kw):
    """(SAE, objective) from ``sae.*`` keys, the family's defaults for the rest. JumpReLU's
    research options may be given by name too (``kernel="triangle"``): they go to
    ``experimental``, where the config keeps them."""
    if architecture in ("jumprelu", "matryoshka_jumprelu"):
        from saelab.sae.jumprelu import JumpReLUExperimental

        names = {f.name for f in dataclasses.fields(JumpReLUExperimental)}
        experimental = {k: kw.pop(k) for k in list(kw) if k in names}
        kw["experimental"] = {**kw.get("experimental", {}), **experimental}
    return build_training(architecture, d_in=d_in, d_sae=d_sae, **_small_k(architecture, kw))


def exported_architecture(family: str) -> str:
    """What a family's export is: the BatchTopK families (one global threshold at inference)
    and Matryoshka JumpReLU are saved as the JumpReLU SAE they equal."""
    from saelab.sae import BatchTopKSAE, JumpReLUSAE

    return "jumprelu" if issubclass(SAE_CLASSES[family], (BatchTopKSAE, JumpReLUSAE)) else family


def set_inference_threshold(sae, value: float) -> None:
    """Families that use one global threshold at inference (BatchTopK's, estimated in
    training) get ``value``; the others need nothing."""
    from saelab.sae import BatchTopKSAE

    if isinstance(sae, BatchTopKSAE):
        sae.threshold.fill_(value)


def trained_like(architecture: str, **kw):
    """An inference SAE (16 -> 64) with every parameter moved off its initialisation, JumpReLU
    thresholds spread over [0.05, 0.35] and BatchTopK's threshold set: what a trained one
    looks like to an exporter. ``kw``: config keys (e.g. ``transcoder=True``)."""
    sae = make_sae(architecture, **kw).eval()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if hasattr(sae, "log_threshold"):  # the JumpReLU families
            sae.log_threshold.copy_(torch.log(torch.rand(64) * 0.3 + 0.05))
    set_inference_threshold(sae, 0.3)
    return sae


def train_loss(sae, objective, x, **step):
    """The family's training loss on x, as the trainer computes it (``Step`` fields as keywords)."""
    return sae(x, objective=objective, step=Step(**step))


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


def run_script(script: str, *args: str) -> int:
    """``python <script> *args`` as the entry point's own ``__main__`` in this process: the
    tool's whole work, its messages on this process's stdout/stderr (capsys reads them), its
    exit code returned, without paying for another interpreter. Each CLI keeps at least one
    test that runs it as a real program."""
    import runpy
    import sys
    from unittest import mock

    with mock.patch.object(sys, "argv", [script, *args]):
        try:
            runpy.run_path(str(CONF_DIR.parent / script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
            if code is None or isinstance(code, int):
                return code or 0
            print(code, file=sys.stderr)  # what the interpreter prints for SystemExit("...")
            return 1
    return 0


def compose_config(overrides: list[str], output_dir) -> DictConfig:  # noqa: F821
    """The real Hydra config, composed as train.py would, with output_dir pointed at a tmp dir.
    Many tests compose the same overrides: each set is composed once (Hydra's compose is the
    slow part), and every caller gets its own copy with its own output_dir."""
    import copy

    composed = _compose(tuple(overrides))
    if isinstance(composed, Exception):
        raise composed
    cfg = copy.deepcopy(composed)
    cfg.output_dir = str(output_dir)
    return cfg


@functools.cache
def _compose(overrides: tuple[str, ...]):
    from hydra import compose, initialize_config_dir

    from saelab.config import register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # A placeholder output_dir: compose_config sets each caller's own.
            return compose(config_name="config", overrides=[*overrides, "output_dir=unset"])
    except Exception as error:  # the same error for every caller of these overrides
        return error


def fit_module(datamodule, module, steps: int = 6, callbacks=()):
    """A real Trainer fitted for ``steps`` steps, quietly: no logger, checkpoints or validation.
    Returns the trainer (its callback_metrics hold the last step's logs)."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        log_every_n_steps=1,  # train/* is logged on the steps Lightning writes: every one here
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


@pytest.fixture(scope="session")
def tiny_lm():
    """The embedded tiny-gemma-2 and its tokenizer."""
    from saelab.lm.load import load_model, load_tokenizer

    return load_model(TINY), load_tokenizer(TINY)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A randomly initialised 3-layer LlamaForCausalLM with the embedded tokenizer, saved."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    from transformers import LlamaConfig, LlamaForCausalLM

    from saelab.lm.load import EMBEDDED, load_tokenizer

    tok = load_tokenizer(TINY)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED[TINY] / name, folder / name)
    return folder


def lm_run_overrides(model_dir, site: str, cache_dir) -> list[str]:
    """A tiny data=activations run on ``model_dir`` (no shape key anywhere): 20 steps, 128
    held-out tokens evaluated with the SAE spliced in."""
    return [
        f"model.name_or_path={model_dir}",
        f"site={site}",
        "layer=2",
        "data.context_length=64",
        "data.train_tokens=4096",
        "data.val_tokens=1024",
        "data.batch_size=512",
        "data.shard_tokens=2048",
        "data.device=cpu",
        f"data.cache_dir={cache_dir}",
        "sae.expansion_factor=4",
        "sae.normalization_tokens=2048",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",  # 2 x 512 = every validation row (data.val_tokens)
    ]


@pytest.fixture(scope="session")
def llama_run(tmp_path_factory, llama_dir):
    """``python train.py`` as a user runs it (a real subprocess, stdout not a terminal) on the
    3-layer llama folder, with TensorBoard: (run folder, completed process). Shared by the
    tests that read what one real LM run printed and wrote."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("llama-run")
    run = root / "run"
    args = [*lm_run_overrides(llama_dir, "resid", root / "cache"), f"hydra.run.dir={run}"]
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=CONF_DIR.parent, capture_output=True, timeout=300
    )
    # Decoded by hand: text mode would turn the carriage returns a progress bar writes into
    # newlines, hiding what a log file of the console holds.
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run, result
