#!/usr/bin/env bash
# SynthSAEBench-16k's full protocol on a CUDA GPU: 200M samples per SAE, width 4,096, batch
# 1,024, L0 25 and 20, seeds 0 and 1, saelab's five families beside SAELens's BatchTopK,
# JumpReLU (quadratic) and Matryoshka, every SAE scored by SAELens's metric on SAELens's loader
# (bench/synthsaebench.py). The benchmark model is built on the GPU (seconds) if the cache does
# not hold it. Output: bench/gpu_synthsaebench_output.txt (and the rows in
# bench/synthsaebench_results.jsonl).
#
#   pip install -e ".[synth]"
#   bash bench/gpu_synthsaebench.sh                         # the protocol (hours on one H100)
#   SAMPLES=2e7 bash bench/gpu_synthsaebench.sh --l0 25      # a shorter pass; extra args go to
#                                                            # bench/synthsaebench.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SAMPLES=${SAMPLES:-2e8}
OUT=bench/gpu_synthsaebench_output.txt

if ! "$PYTHON" -c 'import sae_lens.synthetic, saelab' 2>/dev/null; then
    echo "gpu_synthsaebench.sh: '$PYTHON' cannot import sae_lens and saelab: install saelab with" \
         'pip install -e ".[synth]" (README, Set up) or set PYTHON=/path/to/its/python' >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_synthsaebench.sh needs a CUDA GPU (torch.cuda.is_available() is False). On a CPU:" \
         "python bench/synthsaebench.py --samples 2e6" >&2
    exit 2
fi
{
    "$PYTHON" -c 'import torch, sae_lens; p = torch.cuda.get_device_properties(0); print(f"# GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}; sae-lens {sae_lens.__version__}")'
    echo "# $PYTHON bench/synthsaebench.py --device cuda --samples $SAMPLES --eval-samples 5e5 $*"
    "$PYTHON" bench/synthsaebench.py --device cuda --samples "$SAMPLES" --eval-samples 5e5 "$@"
} 2>&1 | grep --line-buffered -v -E '^(Training SAE|training steps|Orthogonalizing)' | tee "$OUT"
