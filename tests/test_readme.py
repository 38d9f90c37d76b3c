"""What the README promises a new user, checked against the code it describes."""

from __future__ import annotations

from pathlib import Path

from saelab.lm import prose

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readme_names_what_the_skipped_prose_test_needs():
    # tests/lm/test_pretrain_llama.py skips without these Debian packages; a user must be able
    # to read in the README which ones and how to install them.
    assert prose.INSTALL_HINT in README


def test_the_readme_quotes_the_real_error_of_its_example(tmp_path):
    # The README's example of a bad value must be the message the code really gives.
    import pytest

    from saelab.runner import build
    from tests.conftest import compose_config

    cfg = compose_config(["sae=topk", "sae.k=100000"], tmp_path)
    with pytest.raises(ValueError) as error:
        build(cfg)
    message = str(error.value)
    assert message.startswith("sae.k=100000 is invalid")
    assert f"`Error: {message}`" in README
