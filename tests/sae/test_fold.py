"""The normalisation fold (docs/maths.md §0): an SAE trained on x / s, with s folded in, must give on raw
x exactly s times its outputs on x / s (same latents fire; activations and reconstructions scale)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES, make_sae, set_inference_threshold


def _perturb(sae):
    """Move every parameter away from its init so zero biases cannot hide a missed fold."""
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if hasattr(sae, "log_threshold"):
            sae.log_threshold.copy_(torch.log(torch.rand(sae.d_sae) * 0.5 + 0.05))


@pytest.mark.parametrize("arch", FAMILIES)
def test_fold_gives_identical_outputs_on_raw_activations(arch):
    scale = 7.3
    sae = make_sae(arch).eval()
    _perturb(sae)
    set_inference_threshold(sae, 0.4)
    raw = torch.randn(64, 16) * scale + 2.0
    f_norm = sae.encode(raw / scale)
    x_hat_norm = sae.decode(f_norm)
    assert (f_norm != 0).any() and (f_norm == 0).any(), "test needs some latents on and some off"
    sae.fold_activation_scale(scale)
    f_raw = sae.encode(raw)
    torch.testing.assert_close(f_raw != 0, f_norm != 0)
    torch.testing.assert_close(f_raw, scale * f_norm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(f_raw), scale * x_hat_norm, rtol=1e-4, atol=1e-4)
    if arch != "relu":  # the families that train with unit-norm decoder rows
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), rtol=0.2, atol=0.2)
