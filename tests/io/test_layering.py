"""saelab.io is plain formats: it never imports saelab.sae (records in, records out, SAEs
duck-typed), and importing saelab.sae does not load the formats (load_sae imports them)."""

import subprocess
import sys


def _modules_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m for m in sys.modules if m.startswith('saelab'))))"
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    return result.stdout.split()


def test_io_never_imports_the_sae_package():
    loaded = _modules_after("import saelab.io")
    assert "saelab.io.saelens" in loaded
    assert not [m for m in loaded if m.startswith("saelab.sae")], loaded


def test_sae_package_loads_the_formats_only_when_loading():
    assert not [m for m in _modules_after("import saelab.sae") if m.startswith("saelab.io")]
