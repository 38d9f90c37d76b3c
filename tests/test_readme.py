"""What the README promises a new user, checked against the code it describes."""

from __future__ import annotations

from pathlib import Path

from saelab.lm import prose

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readme_names_what_the_skipped_prose_test_needs():
    # tests/lm/test_pretrain_llama.py skips without these Debian packages; a user must be able
    # to read in the README which ones and how to install them.
    assert prose.INSTALL_HINT in README


def test_the_readme_quotes_the_real_error_of_its_example():
    # The README's example of a bad value is the default TopK run's: d_sae = 128 x 8.
    assert "sae.k=100000 is invalid: it must be an integer in [1, d_sae=1024]." in README
