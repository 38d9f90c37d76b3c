"""The import layers (docs/architecture.md): each layer pulls in only the layers below it.

    entry points (runner, launch, config, evaluation, report, targets, browser)
    lit     LightningModules                  -> sae, metrics, fileio
    data    activation sources and the cache  -> lm, fileio
    lm      language models, sites, text      -> fileio
    sae     the SAE families                  -> io's formats only when loading, never at import
    io      SAE file formats                  -> fileio
    metrics, fileio                           -> nothing of saelab

Each import runs in a fresh interpreter, so what one test imported cannot hide another's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ALLOWED = {
    "saelab.fileio": set(),
    "saelab.io": {"io", "fileio"},
    "saelab.metrics": set(),
    "saelab.sae": {"sae"},
    "saelab.lm": {"lm", "fileio"},
    "saelab.data": {"data", "lm", "fileio"},
    "saelab.lit": {"lit", "sae", "metrics", "fileio"},
}


pytestmark = pytest.mark.slow  # a fresh interpreter per layer: torch and Lightning load each time


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """For each layer, the saelab subpackages/modules ``import <layer>`` loads (by top-level
    name), each in its own interpreter, all started at once."""
    code = (
        "import sys, json; import {}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('saelab.'))))"
    )
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-c", code.format(module)], stdout=subprocess.PIPE, text=True
        )
        for module in ALLOWED
    }
    out = {}
    for module, proc in procs.items():
        stdout, _ = proc.communicate()
        assert proc.returncode == 0, f"import {module} failed"
        out[module] = {name.split(".")[1] for name in json.loads(stdout)}
    return out


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(module, loaded):
    layers = loaded[module]
    own = module.split(".")[1]
    assert own in layers
    assert layers <= ALLOWED[module] | {own}, (
        f"{module} pulls in {sorted(layers - ALLOWED[module])}"
    )


def test_the_sae_layer_needs_neither_lightning_nor_hydra():
    """An exported SAE runs anywhere: saelab.sae (and the formats) import without them."""
    code = (
        "import sys, saelab.sae, saelab.io; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'omegaconf')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
