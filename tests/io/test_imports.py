"""load_sae on SAEs written in each peer's own format (folders made here, as each package writes
them), checked against that package's encode and decode, written out independently below:

- SAELens: see tests/io/test_saelens.py (the encoders are imported from there).
- dictionary_learning 0.1 (dictionary.py, trainers/{top_k,batch_top_k,matryoshka_batch_top_k}.py):
  ``ae.pt`` is the module's state dict, ``config.json`` is ``{"trainer": {"dict_class": ...}}``;
  ``nn.Linear`` stores weights [out, in].
- sparsify 1.3 (sparse_coder.py, fused_encoder.py): ``sae.safetensors`` holds encoder.weight
  [M, n], encoder.bias, W_dec [M, n], b_dec; cfg.json the SparseCoderConfig fields and d_in.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from saelab.sae import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE, load_sae
from tests.io.test_saelens import saelens_decode, saelens_encode

N, M, K = 12, 48, 5


def rand(*shape, scale=0.3):
    return torch.randn(*shape) * scale


def x_batch():
    return torch.randn(64, N) * 2


def topk_dense(post: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = post.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(post).scatter(-1, indices, values)


# --- SAELens-written folders --------------------------------------------------------------------
def write_saelens(folder, cfg: dict, tensors: dict) -> None:
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    (folder / "cfg.json").write_text(json.dumps(cfg))


def saelens_tensors(arch: str) -> dict:
    t = {"W_enc": rand(N, M), "W_dec": rand(M, N), "b_dec": rand(N)}
    if arch == "gated":
        t.update(b_gate=rand(M, scale=0.5), b_mag=rand(M), r_mag=rand(M, scale=0.1))
    else:
        t["b_enc"] = rand(M, scale=0.2)
    if arch == "jumprelu":
        t["threshold"] = torch.rand(M) * 0.4 + 0.05
    return t


CASES = [  # (architecture, extra cfg, saelab class): SAELens's defaults and both bias placements
    ("standard", {"apply_b_dec_to_input": True}, ReLUSAE),
    ("standard", {}, ReLUSAE),  # no apply_b_dec_to_input: SAELens takes True
    ("jumprelu", {"apply_b_dec_to_input": True}, JumpReLUSAE),  # how SAELens saves BatchTopK
    ("jumprelu", {"apply_b_dec_to_input": False}, JumpReLUSAE),
    ("gated", {"apply_b_dec_to_input": True}, GatedSAE),
    ("gated", {"apply_b_dec_to_input": False}, GatedSAE),
    ("topk", {"k": K, "apply_b_dec_to_input": True}, TopKSAE),
    ("topk", {"k": K, "apply_b_dec_to_input": False}, TopKSAE),
    ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}, TopKSAE),
]


@pytest.mark.parametrize(("arch", "extra", "cls"), CASES)
def test_saelens_folders_load_and_match_saelens_maths(arch, extra, cls, tmp_path):
    cfg = {
        "architecture": arch,
        "d_in": N,
        "d_sae": M,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.4.hook_resid_post"},
        **extra,
    }
    t = saelens_tensors(arch)
    write_saelens(tmp_path / "sae", cfg, t)
    sae = load_sae(tmp_path / "sae")
    assert type(sae) is cls and sae.cfg.metadata.hook_name == "blocks.4.hook_resid_post"
    x = x_batch()
    f = saelens_encode(cfg, t, x)
    assert 0 < (f > 0).sum(-1).float().mean() < M
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(f), saelens_decode(cfg, t, f), atol=1e-5, rtol=1e-5)


def test_pre_6_saelens_layout_with_top_level_metadata_and_activation_kwargs(tmp_path):
    cfg = {
        "d_in": N,
        "d_sae": M,
        "dtype": "float32",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "architecture": "topk",
        "model_name": "gpt2-small",
        "hook_name": "blocks.8.hook_resid_pre",
        "normalize_activations": False,
    }
    t = saelens_tensors("topk")
    write_saelens(tmp_path / "sae", cfg, t)
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.k == K and sae.cfg.metadata.model_name == "gpt2-small"
    x = x_batch()
    torch.testing.assert_close(sae.encode(x), saelens_encode({**cfg, "k": K}, t, x))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "batchtopk"}, "TRAINING config"),
        ({"architecture": "abstopk"}, "not one saelab reads"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"d_sae": "48"}, "d_sae='48' is invalid"),
        ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input='yes'"),
        ({"k": None}, "a topk SAE needs k"),
        ({"d_in": None}, r"lacks the field\(s\) \['d_in'\]"),
    ],
)
def test_bad_saelens_cfg_names_the_field(change, message, tmp_path):
    cfg = {"architecture": "topk", "d_in": N, "d_sae": M, "dtype": "float32", "k": K}
    cfg.update(change)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    write_saelens(tmp_path / "sae", cfg, saelens_tensors("topk"))
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "sae")


def test_saelens_tensor_set_and_shapes_are_checked(tmp_path):
    t = saelens_tensors("jumprelu")
    cfg = {"architecture": "jumprelu", "d_in": N, "d_sae": M, "dtype": "float32"}
    write_saelens(tmp_path / "a", cfg, {k: v for k, v in t.items() if k != "threshold"})
    with pytest.raises(ValueError, match=r"missing \['threshold'\]"):
        load_sae(tmp_path / "a")
    write_saelens(tmp_path / "b", {**cfg, "d_sae": M + 1}, t)
    with pytest.raises(ValueError, match="W_enc has shape"):
        load_sae(tmp_path / "b")
    write_saelens(tmp_path / "c", cfg, {**t, "threshold": -t["threshold"]})
    with pytest.raises(ValueError, match="every threshold must be > 0"):
        load_sae(tmp_path / "c")


# --- dictionary_learning ------------------------------------------------------------------------
def write_dictionary_learning(folder, dict_class: str, state: dict, **trainer) -> None:
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    config = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": N,
            "dict_size": M,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "layer": 3,
            **trainer,
        },
        "buffer": {"d_submodule": N},
    }
    (folder / "config.json").write_text(json.dumps(config))


def linear(out_features: int, in_features: int) -> torch.Tensor:
    return rand(out_features, in_features)


def dl_case(dict_class: str):
    """(state dict, the class's encode, the class's decode) with random weights."""
    if dict_class == "AutoEncoder":
        s = {"bias": rand(N), "encoder.weight": linear(M, N), "encoder.bias": rand(M, scale=0.2)}
        s["decoder.weight"] = linear(N, M)
        # Its loader (from_pretrained, normalize_decoder=True) divides decoder columns by their
        # norms and multiplies the encoder rows and bias by them.
        norms = s["decoder.weight"].norm(dim=0)
        enc = lambda x: F.relu(  # noqa: E731
            F.linear(x - s["bias"], s["encoder.weight"] * norms[:, None], s["encoder.bias"] * norms)
        )
        dec = lambda f: F.linear(f, s["decoder.weight"] / norms) + s["bias"]  # noqa: E731
    elif dict_class == "AutoEncoderNew":
        s = {"encoder.weight": linear(M, N), "encoder.bias": rand(M, scale=0.2)}
        s.update({"decoder.weight": linear(N, M), "decoder.bias": rand(N)})
        enc = lambda x: F.relu(F.linear(x, s["encoder.weight"], s["encoder.bias"]))  # noqa: E731
        dec = lambda f: F.linear(f, s["decoder.weight"], s["decoder.bias"])  # noqa: E731
    elif dict_class == "GatedAutoEncoder":
        s = {"decoder_bias": rand(N), "encoder.weight": linear(M, N), "r_mag": rand(M, scale=0.1)}
        s.update({"gate_bias": rand(M), "mag_bias": rand(M), "decoder.weight": linear(N, M)})

        def enc(x):
            x_enc = F.linear(x - s["decoder_bias"], s["encoder.weight"])
            gate = (x_enc + s["gate_bias"] > 0).float()
            return gate * F.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])

        dec = lambda f: F.linear(f, s["decoder.weight"]) + s["decoder_bias"]  # noqa: E731
    elif dict_class == "JumpReluAutoEncoder":
        s = {
            "W_enc": rand(N, M),
            "b_enc": rand(M, scale=0.2),
            "W_dec": rand(M, N),
            "b_dec": rand(N),
        }
        s["threshold"] = torch.rand(M) * 0.4 + 0.05

        def enc(x):
            pre = x @ s["W_enc"] + s["b_enc"]
            return F.relu(pre * (pre > s["threshold"]))

        dec = lambda f: f @ s["W_dec"] + s["b_dec"]  # noqa: E731
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        s = {"encoder.weight": linear(M, N), "encoder.bias": rand(M, scale=0.2)}
        s.update({"decoder.weight": linear(N, M), "b_dec": rand(N)})
        s.update({"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.25)})

        def enc(x):
            post = F.relu(F.linear(x - s["b_dec"], s["encoder.weight"], s["encoder.bias"]))
            if dict_class == "AutoEncoderTopK":
                return topk_dense(post, K)  # encode's default ignores the threshold
            return post * (post > s["threshold"])

        dec = lambda f: F.linear(f, s["decoder.weight"]) + s["b_dec"]  # noqa: E731
    else:  # MatryoshkaBatchTopKSAE
        s = {
            "W_enc": rand(N, M),
            "b_enc": rand(M, scale=0.2),
            "W_dec": rand(M, N),
            "b_dec": rand(N),
        }
        s.update({"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.25)})
        s["group_sizes"] = torch.tensor([8, 16, 24])

        def enc(x):
            post = F.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
            return post * (post > s["threshold"])

        dec = lambda f: f @ s["W_dec"] + s["b_dec"]  # noqa: E731
    return s, enc, dec


DL_CLASSES = {
    "AutoEncoder": ReLUSAE,
    "AutoEncoderNew": ReLUSAE,
    "GatedAutoEncoder": GatedSAE,
    "JumpReluAutoEncoder": JumpReLUSAE,
    "AutoEncoderTopK": TopKSAE,
    "BatchTopKSAE": JumpReLUSAE,
    "MatryoshkaBatchTopKSAE": JumpReLUSAE,
}


@pytest.mark.parametrize("dict_class", list(DL_CLASSES))
def test_dictionary_learning_folders_load_and_match_its_maths(dict_class, tmp_path):
    state, enc, dec = dl_case(dict_class)
    extra = {"k": K} if "k" in state else {}
    write_dictionary_learning(tmp_path / "trainer_0", dict_class, state, **extra)
    for path in (tmp_path / "trainer_0", tmp_path / "trainer_0" / "ae.pt"):
        sae = load_sae(path)
        assert type(sae) is DL_CLASSES[dict_class]
        assert sae.cfg.metadata.model_name == "EleutherAI/pythia-70m-deduped"
        assert sae.cfg.metadata.hook_layer == 3
        x = x_batch()
        f = enc(x)
        assert 0 < (f > 0).sum(-1).float().mean() < M
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(f), dec(f), atol=1e-5, rtol=1e-5)


def test_dictionary_learning_errors_name_the_problem(tmp_path):
    state, _, _ = dl_case("BatchTopKSAE")
    write_dictionary_learning(
        tmp_path / "untrained", "BatchTopKSAE", {**state, "threshold": torch.tensor(-1.0)}
    )
    with pytest.raises(ValueError, match="stores -1 until training"):
        load_sae(tmp_path / "untrained")
    write_dictionary_learning(tmp_path / "unknown", "IdentityDict", state)
    with pytest.raises(ValueError, match="dict_class='IdentityDict' is not one saelab reads"):
        load_sae(tmp_path / "unknown")
    write_dictionary_learning(tmp_path / "wrongk", "AutoEncoderTopK", state, k=K + 1)
    with pytest.raises(ValueError, match="trainer.k=6 but ae.pt stores k=5"):
        load_sae(tmp_path / "wrongk")
    bad = {k: v for k, v in state.items() if k != "b_dec"}
    write_dictionary_learning(tmp_path / "missing", "AutoEncoderTopK", bad, k=K)
    with pytest.raises(ValueError, match=r"missing \['b_dec'\]"):
        load_sae(tmp_path / "missing")
    (tmp_path / "noconfig").mkdir()
    torch.save(state, tmp_path / "noconfig" / "ae.pt")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_sae(tmp_path / "noconfig")


def test_dictionary_learning_weights_are_loaded_without_unpickling_code(tmp_path):
    state, _, _ = dl_case("AutoEncoderTopK")
    write_dictionary_learning(tmp_path / "evil", "AutoEncoderTopK", state, k=K)
    torch.save({**state, "extra": TopKSAE}, tmp_path / "evil" / "ae.pt")  # a pickled class
    with pytest.raises(ValueError, match="not a weights-only torch state dict"):
        load_sae(tmp_path / "evil")


# --- sparsify -----------------------------------------------------------------------------------
def write_sparsify(folder, tensors: dict, **cfg) -> None:
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae.safetensors"))
    fields = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": M,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": N,
        **cfg,
    }
    (folder / "cfg.json").write_text(json.dumps(fields))


def sparsify_tensors() -> dict:
    return {
        "encoder.weight": linear(M, N),
        "encoder.bias": rand(M, scale=0.2),
        "W_dec": F.normalize(rand(M, N), dim=1),
        "b_dec": rand(N),
    }


def test_sparsify_folders_load_and_match_its_maths(tmp_path):
    t = sparsify_tensors()
    write_sparsify(tmp_path / "layers.3", t)
    sae = load_sae(tmp_path / "layers.3")
    assert type(sae) is TopKSAE and sae.cfg.k == K and sae.cfg.metadata.hookpoint == "layers.3"
    x = x_batch()
    # sparsify: ReLU(linear(x - b_dec)), the top k kept as (values, indices); decode sums rows.
    post = F.relu(F.linear(x - t["b_dec"], t["encoder.weight"], t["encoder.bias"]))
    values, indices = post.topk(K, dim=-1, sorted=False)
    x_hat = (values[..., None] * t["W_dec"][indices]).sum(-2) + t["b_dec"]
    f = torch.zeros_like(post).scatter(-1, indices, values)
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat, atol=1e-5, rtol=1e-5)


def test_sparsify_errors_name_the_problem(tmp_path):
    t = sparsify_tensors()
    write_sparsify(tmp_path / "run" / "layers.0", t)
    write_sparsify(tmp_path / "run" / "layers.1", t)
    with pytest.raises(ValueError, match=r"several hookpoints \(layers.0, layers.1\)"):
        load_sae(tmp_path / "run")
    write_sparsify(tmp_path / "skip", {**t, "W_skip": rand(N, N)}, skip_connection=True)
    with pytest.raises(ValueError, match="skip_connection=true on an autoencoder"):
        load_sae(tmp_path / "skip")
    write_sparsify(tmp_path / "group", t, activation="groupmax")
    with pytest.raises(ValueError, match="activation='groupmax'"):
        load_sae(tmp_path / "group")
    write_sparsify(tmp_path / "noskip", t, transcode=True, skip_connection=True)
    with pytest.raises(ValueError, match=r"missing \['W_skip'\]"):
        load_sae(tmp_path / "noskip")


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoders_load_and_match_its_maths(skip, tmp_path):
    """sparsify with transcode=true: ReLU(linear(x)) (no b_dec subtracted), top k, decode, plus
    x @ W_skip.T with a skip connection."""
    t = sparsify_tensors()
    if skip:
        t["W_skip"] = rand(N, N)
    write_sparsify(tmp_path / "layers.3.mlp", t, transcode=True, skip_connection=skip)
    sae = load_sae(tmp_path / "layers.3.mlp")
    assert type(sae) is TopKSAE and sae.transcoder and (sae.W_skip is not None) == skip
    x = x_batch()
    post = F.relu(F.linear(x, t["encoder.weight"], t["encoder.bias"]))
    values, indices = post.topk(K, dim=-1, sorted=False)
    out = (values[..., None] * t["W_dec"][indices]).sum(-2) + t["b_dec"]
    if skip:
        out = out + x @ t["W_skip"].T
    torch.testing.assert_close(sae.reconstruct(x), out, atol=1e-5, rtol=1e-5)
