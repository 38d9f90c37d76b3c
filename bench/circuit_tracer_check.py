"""A saelab transcoder set in the real circuit-tracer: its transcoders compute what saelab's do,
and it builds an attribution graph, offline on a CPU.

circuit-tracer 0.5 pins transformers <= 4.57.3 and needs nnsight 0.6 (0.8 removed a module it
imports), so it lives in its own virtual environment; this script runs in both:

    # saelab's venv: a transcoder for every layer of tiny-gemma-2, the set, the reference numbers
    python train.py -m site=transcoder 'layer=range(0,26)' trainer.max_steps=200 \
        data.train_tokens=65536 data.val_tokens=4096 eval_tokens=0 logger=none \
        hydra.sweep.dir=outputs/tc-sweep
    python export_transcoders.py outputs/tc-sweep --out outputs/tc-set
    python bench/circuit_tracer_check.py prepare outputs/tc-sweep --out outputs/tc-refs.safetensors

    # circuit-tracer's venv (python3 -m venv ct; pip install torch==2.13.0;
    #   pip install circuit-tracer==0.5.0 "nnsight>=0.6,<0.7")
    HF_HUB_OFFLINE=1 python bench/circuit_tracer_check.py check outputs/tc-set \
        --refs outputs/tc-refs.safetensors --graph outputs/tc-graph.pt

``prepare`` runs the LM once on the prompt and stores, per layer, circuit-tracer's input (the
activations at its input hook) and saelab's transcoder output on the MLP's real input; ``check``
feeds circuit-tracer's loaded transcoders those inputs, compares, and runs ``attribute``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a"


def prepare(args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import save_file

    from saelab.lm.load import load_lm
    from saelab.lm.sites import SitePoint, decoder_layers, forward_until
    from saelab.sae import load_sae
    from saelab.transcoder_interop import find_runs

    runs = find_runs([args.sweep])
    saes = {}
    for run in runs:
        sae = load_sae(run / "sae").eval()
        saes[int(sae.cfg.metadata.hook_layer)] = (sae, sae.cfg.metadata.model_name)
    (model_name,) = {name for _, name in saes.values()}
    from saelab.lm.config import ModelConfig

    model, tokenizer = load_lm(ModelConfig(name_or_path=model_name), "cpu")
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    layers = decoder_layers(model)
    points = [SitePoint("transcoder", layer) for layer in sorted(saes)]
    # Gemma 2: circuit-tracer reads ln2.hook_normalized, the MLP's input before the norm's gain.
    # Llama-style: it reads the MLP's input itself (mlp.hook_in), which is what saelab reads.
    normed = {}
    handles = [
        layers[i].pre_feedforward_layernorm.register_forward_hook(
            lambda m, a, o, i=i: normed.__setitem__(i, m._norm(a[0].float()))
        )
        for i in sorted(saes)
        if hasattr(layers[i], "pre_feedforward_layernorm")
    ]
    try:
        rows = forward_until(model, ids, None, points, stop_at=len(layers) - 1)
    finally:
        for handle in handles:
            handle.remove()
    tensors = {}
    with torch.no_grad():
        for point in points:
            sae = saes[point.layer][0]
            x, _ = sae.split(rows[point][0])
            read = normed[point.layer][0] if point.layer in normed else x
            tensors[f"input.{point.layer}"] = read.contiguous()
            tensors[f"expected.{point.layer}"] = sae.reconstruct(x).contiguous()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out))
    print(f"{len(points)} layers of {model_name}, {ids.shape[1]} positions -> {args.out}")


def check(args) -> None:
    import importlib.metadata as md

    import torch
    import yaml
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    from safetensors.torch import load_file

    versions = {p: md.version(p) for p in ("circuit-tracer", "nnsight", "transformers", "torch")}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    config = yaml.safe_load((args.set / "config.yaml").read_text())
    print(
        f"set: {args.set} ({config['model_name']}, {config['feature_input_hook']} -> "
        f"{config['feature_output_hook']})"
    )
    start = time.perf_counter()
    model = ReplacementModel.from_pretrained(
        config["model_name"],
        str(args.set.resolve()),
        backend="nnsight",
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    print(
        f"ReplacementModel.from_pretrained: {time.perf_counter() - start:.1f} s, "
        f"{len(model.transcoders)} transcoders"
    )
    # The transcoders as circuit-tracer loads a set (the same files, outside nnsight's wrapper).
    loaded = load_transcoder_from_hub(str(args.set.resolve()), device=torch.device("cpu"))
    transcoders = loaded[0] if isinstance(loaded, tuple) else loaded
    refs = load_file(str(args.refs))
    worst = 0.0
    print("| layer | max abs difference | max abs output |")
    print("|---|---|---|")
    with torch.no_grad():
        for layer in range(len(transcoders)):
            theirs = transcoders[layer](refs[f"input.{layer}"])
            want = refs[f"expected.{layer}"]
            diff = float((theirs - want).abs().max())
            worst = max(worst, diff / float(want.abs().max()))
            print(f"| {layer} | {diff:.2e} | {float(want.abs().max()):.3f} |")
    print(f"worst relative difference: {worst:.2e}")
    start = time.perf_counter()
    graph = attribute(PROMPT, model, max_n_logits=5, batch_size=64, max_feature_nodes=500)
    seconds = time.perf_counter() - start
    n_features = graph.active_features.shape[0]
    print(
        f"attribute(): {seconds:.1f} s; {n_features} active features, adjacency "
        f"{tuple(graph.adjacency_matrix.shape)}, {len(graph.logit_token_ids)} logit targets"
    )
    if args.graph:
        graph.to_pt(str(args.graph))
        print(f"graph -> {args.graph}")
    if worst > 1e-3:
        raise SystemExit(f"circuit-tracer's transcoders differ from saelab's by {worst:.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="saelab's venv: reference inputs and outputs")
    p.add_argument("sweep", type=Path)
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("check", help="circuit-tracer's venv: compare, then attribute")
    c.add_argument("set", type=Path)
    c.add_argument("--refs", type=Path, required=True)
    c.add_argument("--graph", type=Path)
    args = parser.parse_args(argv)
    {"prepare": prepare, "check": check}[args.command](args)


if __name__ == "__main__":
    main()
