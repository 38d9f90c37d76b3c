"""Every family's classes are ordinary, importable Python classes: what the docs tell users to
import exists under that name, and its source can be read (and grepped)."""

from __future__ import annotations

import inspect

import pytest

import saelab.lit
import saelab.sae
from saelab.sae.registry import FAMILIES


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_has_a_lightning_module_class_with_source(name):
    cls = saelab.lit.LIT_CLASSES[name]
    assert cls.__name__ in saelab.lit.__all__
    assert getattr(saelab.lit, cls.__name__) is cls
    assert cls.family is FAMILIES[name]
    source = inspect.getsource(cls)  # a class made at run time has none to show
    assert source.startswith(f"class {cls.__name__}(SAELitModule):")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_familys_sae_and_configs_import_from_saelab_sae(name):
    family = FAMILIES[name]
    for cls in (family.sae, family.sae.config_class, family.train_config):
        assert cls.__name__ in saelab.sae.__all__
        assert getattr(saelab.sae, cls.__name__) is cls
