"""``sae.token_norm_clip``: in training, tokens far above the batch's median norm are shortened
to the cap, in direction unchanged; validation and export see them as they are."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from saelab.lit.base import clip_token_norms
from saelab.runner import build
from tests.conftest import compose_config, fit_module


def test_rows_above_the_cap_are_shortened_to_it_and_keep_their_direction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(101, 8, generator=g)
    x[:3] *= 40  # three massive tokens
    clipped = clip_token_norms(x, 3.0)
    norms, new = x.norm(dim=-1), clipped.norm(dim=-1)
    cap = 3.0 * norms.median()
    above = norms > cap
    assert above[:3].all() and above.sum() == 3
    torch.testing.assert_close(new[above], cap.expand(3))
    torch.testing.assert_close(clipped[~above], x[~above], rtol=0, atol=0)
    cosine = torch.nn.functional.cosine_similarity(clipped[above], x[above])
    torch.testing.assert_close(cosine, torch.ones(3))


def _outlier_rows(n=2048, d=16, clip=None, seed=0) -> np.ndarray:
    """Rows of norm exactly 1, and one in 64 of norm 50: every batch's median norm is 1, so the
    cap is ``clip`` wherever a batch falls, and clipping the file beforehand is the same data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[::64] *= 50
    if clip is not None:
        x[::64] *= clip / 50
    return x


def _train(tmp_path, name, rows, clip, family="jumprelu"):
    path = tmp_path / f"{name}.npy"
    np.save(path, rows)
    overrides = _overrides(path, family)
    if clip is not None:
        overrides.append(f"sae.token_norm_clip={clip}")
    datamodule, module = build(compose_config(overrides, tmp_path / name))
    pl.seed_everything(0)
    fit_module(datamodule, module, steps=5)
    return module


def _overrides(path, family):
    overrides = [
        f"sae={family}",
        "data=files",
        f"data.path={path}",
        "data.batch_size=256",
        "data.val_tokens=256",
        "sae.expansion_factor=4",
        "sae.normalize_activations=false",
        "trainer=debug",
    ]
    if family == "jumprelu":
        overrides.append("sae.target_l0=4")
    return overrides


@pytest.mark.parametrize("family", ["jumprelu", "topk"])
def test_training_with_the_clip_is_training_on_clipped_tokens(tmp_path, family):
    with_clip = _train(tmp_path, "clip", _outlier_rows(), 3.0, family)
    on_clipped = _train(tmp_path, "pre", _outlier_rows(clip=3.0), None, family)
    without = _train(tmp_path, "plain", _outlier_rows(), None, family)
    for key, value in with_clip.sae.state_dict().items():
        torch.testing.assert_close(value, on_clipped.sae.state_dict()[key], msg=key)
    assert not torch.allclose(with_clip.sae.W_dec, without.sae.W_dec)


def test_validation_sees_tokens_unclipped(tmp_path):
    module = _train(tmp_path, "clip", _outlier_rows(), 3.0)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)

    def validate(clip):
        module.cfg.token_norm_clip = clip
        datamodule, _ = build(compose_config(_overrides(tmp_path / "clip.npy", "jumprelu"), "v"))
        return trainer.validate(module, datamodule=datamodule, verbose=False)[0]

    clipped_cap, off = validate(3.0), validate(None)
    # The held-out rows include massive tokens, so clipping them would change the error.
    assert clipped_cap["val/fvu"] == off["val/fvu"]
    assert clipped_cap.keys() == off.keys() and clipped_cap == off


def test_a_cap_below_the_median_is_refused(tmp_path):
    overrides = ["sae=topk", "data=synthetic", "trainer=debug", "sae.token_norm_clip=0.5"]
    with pytest.raises(ValueError, match=r"sae\.token_norm_clip=0\.5.*>= 1"):
        build(compose_config(overrides, tmp_path))


def test_a_batch_of_mostly_zero_rows_is_left_as_it_is():
    x = torch.zeros(10, 4)
    x[:3] = torch.randn(3, 4) * 100
    assert torch.equal(clip_token_norms(x, 2.0), x)
