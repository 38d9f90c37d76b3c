"""circuit-tracer's transcoder-set folder, written out here as circuit-tracer 0.5's source
states it (utils/hf_utils.py load_transcoders, transcoder/single_layer_transcoder.py), so CI
checks it offline without the package (bench/circuit_tracer_check.py runs the real one):

- config.yaml: model_kind transcoder_set, model_name, feature_input_hook, feature_output_hook;
- layer_{i}.safetensors for every layer from 0, loaded strictly: W_enc [d_sae, d_in], b_enc,
  W_dec [d_sae, d_in], b_dec, activation_function.threshold (JumpReLU), W_skip (a skip);
- the map: pre = x @ W_enc.T + b_enc; f = pre * (pre > threshold) (ReLU without a threshold);
  out = f @ W_dec + b_dec + x @ W_skip.T.

For Gemma 2 circuit-tracer's input hook is ``ln2.hook_normalized``, the MLP's input BEFORE
the norm's gain; saelab trains on the MLP's real input, so the export folds the gain in. The
test feeds circuit-tracer's formula the pre-gain activations of a real Gemma 2 forward and
saelab's transcoder the real MLP input of the same forward: the outputs must agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from saelab.io import save_sae
from saelab.transcoder_interop import export_transcoder_set
from tests.conftest import make_sae


def ct_forward(t: dict, x: torch.Tensor) -> torch.Tensor:
    pre = F.linear(x, t["W_enc"], t["b_enc"])
    if "activation_function.threshold" in t:
        f = pre * (pre > t["activation_function.threshold"])
    else:
        f = F.relu(pre)
    out = f @ t["W_dec"] + t["b_dec"]
    return out + x @ t["W_skip"].T if "W_skip" in t else out


def _runs(root, model_dir, families, d_in=32, skip=True, layers=None):
    runs = []
    for layer, family in zip(layers or range(len(families)), families):
        sae = make_sae(family, d_in=d_in, transcoder=True, skip_connection=skip).eval()
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.05 * torch.randn_like(p))
            sae.b_enc.add_(0.2)
        meta = {"model_name": str(model_dir), "hook_layer": layer}
        save_sae(sae, root / f"run{layer}" / "sae", metadata=meta)
        runs.append(sae)
    return runs


@pytest.mark.parametrize("family", ["jumprelu", "relu"])
def test_a_gemma2_set_gives_circuit_tracers_map_on_the_pre_gain_input(gemma2_dir, family, tmp_path):
    folder, model = gemma2_dir
    saes = _runs(tmp_path / "sweep", folder, [family, family])
    out = export_transcoder_set([tmp_path / "sweep"], tmp_path / "set")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set" and config["model_name"] == str(folder)
    assert (config["feature_input_hook"], config["feature_output_hook"]) == (
        "ln2.hook_normalized",
        "hook_mlp_out",
    )
    ids = torch.randint(0, 64, (2, 12))
    for layer, sae in enumerate(saes):
        t = load_file(str(out / f"layer_{layer}.safetensors"))
        assert ("activation_function.threshold" in t) == (family == "jumprelu")
        assert t["W_enc"].shape == (sae.d_sae, 32) and t["W_skip"].shape == (32, 32)
        norm = model.model.layers[layer].pre_feedforward_layernorm
        seen: dict = {}
        handle = norm.register_forward_hook(lambda m, a, o, seen=seen: seen.update(resid=a[0], x=o))
        with torch.no_grad():
            model(ids)
        handle.remove()
        x_hat = norm._norm(seen["resid"].float())  # ln2.hook_normalized: before the gain
        with torch.no_grad():
            ours = sae.reconstruct(seen["x"])
        assert not torch.allclose(x_hat, seen["x"]), "the gain must matter for the test to"
        torch.testing.assert_close(ct_forward(t, x_hat), ours, rtol=1e-4, atol=1e-4)


def test_a_llama_set_reads_the_mlp_input_with_its_gain(llama_dir, tmp_path):
    saes = _runs(tmp_path / "sweep", llama_dir, ["jumprelu"] * 3, skip=False)
    out = export_transcoder_set([tmp_path / "sweep"], tmp_path / "set")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["feature_input_hook"] == "mlp.hook_in"
    assert config["feature_output_hook"] == "mlp.hook_out"
    x = torch.randn(8, 32)
    for layer, sae in enumerate(saes):
        t = load_file(str(out / f"layer_{layer}.safetensors"))
        assert "W_skip" not in t
        with torch.no_grad():
            torch.testing.assert_close(ct_forward(t, x), sae.reconstruct(x))


def test_a_set_refuses_what_circuit_tracer_cannot_read(llama_dir, tmp_path):
    _runs(tmp_path / "missing", llama_dir, ["jumprelu", "jumprelu"])
    with pytest.raises(ValueError, match=r"no transcoder for layers \[2\]"):
        export_transcoder_set([tmp_path / "missing"], tmp_path / "set")
    _runs(tmp_path / "topk", llama_dir, ["jumprelu", "topk", "jumprelu"], skip=False)
    with pytest.raises(ValueError, match="TopK and Gated"):
        export_transcoder_set([tmp_path / "topk"], tmp_path / "set")
    _runs(tmp_path / "twice", llama_dir, ["jumprelu"] * 2, layers=[0, 0])
    with pytest.raises(ValueError, match="layer 0 has two transcoders"):
        export_transcoder_set([tmp_path / "twice" / "run0"] * 2, tmp_path / "set")
    assert not (tmp_path / "set").exists(), "nothing half-written"
