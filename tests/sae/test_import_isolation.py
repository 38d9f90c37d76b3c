"""saelab.sae must import without Lightning or Hydra, so an exported SAE runs anywhere."""

import subprocess
import sys


def test_sae_package_imports_without_lightning_or_hydra():
    code = (
        "import sys, saelab.sae, saelab.io\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'omegaconf'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, f"saelab.sae pulled in: {result.stdout} {result.stderr}"
