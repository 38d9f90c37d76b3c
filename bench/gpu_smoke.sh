#!/usr/bin/env bash
# The first run on a machine with a CUDA GPU: bench/real_shapes.py at Gemma 2 2B's real shapes
# (random bf16 weights, nothing downloaded) on the GPU, in under 5 minutes, printing the same
# table as the CPU run: caching vs the bare truncated forward, data=stream and cache training
# of 16k- and 65k-wide JumpReLU SAEs (tokens/s, peak GPU memory against its target), and the
# Gemma 2 9B / 131k memory arithmetic.
#
#   bash bench/gpu_smoke.sh                       # writes bench/gpu_smoke_output.txt
#   PYTHON=/path/to/venv/bin/python bash bench/gpu_smoke.sh --layer 6
#
# Extra arguments go to bench/real_shapes.py. Without a GPU it stops at once, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
LIMIT=${SMOKE_SECONDS:-300}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_smoke.sh: no Python interpreter '$PYTHON' (set PYTHON=...)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import torch, saelab' 2>/dev/null; then
    echo "gpu_smoke.sh: '$PYTHON' cannot import torch and saelab: activate saelab's environment" \
         "or set PYTHON=/path/to/its/python (README, Set up)" >&2
    exit 2
fi
DEVICE=cuda
if [ "${SAELAB_SMOKE_ON_CPU:-0}" = 1 ]; then
    # For saelab's own tests: the same steps and budgets on the CPU (with --shape toy).
    DEVICE=cpu
elif ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "none")
    echo "gpu_smoke.sh needs a CUDA GPU: torch.cuda.is_available() is False here (torch" \
         "$torch_version). This script is for the first run on a GPU machine; on a CPU run" \
         "OMP_NUM_THREADS=1 python bench/real_shapes.py (about 40 minutes)." >&2
    exit 2
fi
if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB")'
fi

# GPU-sized budgets: 131k tokens cached, 4k-token batches, 20 steps per SAE.
set +e
timeout --signal=INT "$LIMIT" "$PYTHON" bench/real_shapes.py \
    --device "$DEVICE" \
    --lm-batch-size 8 \
    --train-tokens 131072 \
    --val-tokens 8192 \
    --batch-size 4096 \
    --steps 20 \
    --widths 16384,65536 \
    --stream-widths 16384,65536 \
    --out bench/gpu_smoke_output.txt \
    "$@"
code=$?
if [ "$code" = 124 ]; then
    echo "gpu_smoke.sh: stopped after ${LIMIT} s, over its budget (SMOKE_SECONDS=...)" >&2
fi
exit "$code"
