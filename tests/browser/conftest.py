"""Fixtures for the feature-browser tests: the real tiny-gemma-2, SAEs with latents of known
behaviour, run folders written with the real exporter, and a headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from saelab.io import save_sae
from saelab.lm.load import load_model, load_tokenizer
from saelab.lm.sites import SitePoint, forward_until
from saelab.sae import JumpReLUSAE
from saelab.sae.jumprelu import JumpReLUConfig

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Offline and quiet: no sync, no component or network fetches, throwaway profile.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="session")
def lm():
    return load_model("tiny-gemma-2"), load_tokenizer("tiny-gemma-2")


def token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def token_direction(model, tokenizer, text: str, layer: int = 0) -> torch.Tensor:
    """The residual stream after block ``layer`` on the two-token input ``<bos> text``: at layer
    0 this is mostly the token's embedding, so it points the same way wherever the token occurs
    (measured on tiny-gemma-2: the token's projections > 11, every other token's < 8.2)."""
    point = SitePoint("resid", layer)
    ids = torch.tensor([[tokenizer.bos_token_id, token_id(tokenizer, text)]])
    return forward_until(model, ids, None, [point])[point][0, 1].float()


def detector_sae(
    model, tokenizer, words: list[str], d_sae: int = 40, layer: int = 0
) -> JumpReLUSAE:
    """Latent j < len(words) fires on words[j] only: its encoder column is that token's
    direction, its threshold 70% of the token's own projection. The other latents are random
    directions with thresholds spread so that some fire often (> 10%), some rarely, and the
    last one never (threshold 1e6)."""
    g = torch.Generator().manual_seed(0)
    sae = JumpReLUSAE(JumpReLUConfig(d_in=model.config.hidden_size, d_sae=d_sae))
    W = torch.randn(sae.d_in, d_sae, generator=g)
    W = W / W.norm(dim=0)
    theta = torch.linspace(0.5, 6.0, d_sae)
    for j, word in enumerate(words):
        a = token_direction(model, tokenizer, word, layer)
        W[:, j] = a / a.norm()
        theta[j] = 0.7 * a.norm()
    theta[-1] = 1e6
    with torch.no_grad():
        sae.W_enc.copy_(W)
        sae.W_dec.copy_(W.T)
        sae.b_enc.zero_()
        sae.log_threshold.copy_(theta.log())
    return sae.eval()


def make_run(
    folder: Path, sae, site: str = "resid", layer: int = 0, eval_numbers: dict | None = None
) -> Path:
    """A run folder as train.py leaves it: config.json (the data part browse.py reads), sae/ in
    the SAELens layout, and optionally eval.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "data": {
            "site": site,
            "layer": layer,
            "d_in": sae.d_in,
            "context_length": 64,
            "model": {"name_or_path": "tiny-gemma-2"},
        },
        "sae": {"architecture": "jumprelu"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_sae(sae, folder / "sae")
    if eval_numbers is not None:
        (folder / "eval.json").write_text(json.dumps(eval_numbers))
    return folder


def run_chromium(args: list[str], profile: Path, timeout: float = 60) -> str:
    """Run the system Chromium headless with ``args``; returns stdout. --virtual-time-budget lets
    the page's script-tag loads (data chunks) finish before the DOM is dumped or shot."""
    cmd = [
        str(CHROMIUM),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture
def chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(
            "/usr/bin/chromium is absent: install it with `apt-get install -y chromium` "
            "(.ci/run does) to run the real-browser tests"
        )
    profile = tmp_path / "chromium-profile"
    yield lambda args, timeout=60: run_chromium(args, profile, timeout)
    shutil.rmtree(profile, ignore_errors=True)
