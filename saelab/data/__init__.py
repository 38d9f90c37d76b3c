"""Activation sources for training: the LM activation cache, synthetic data with known
features, and activation files a user already has (``ActivationFiles``)."""

__all__ = ["ActivationFiles", "FilesDataConfig"]


def __getattr__(name: str):
    # Imported on first use, so ``import saelab.data.shards`` stays free of Lightning.
    if name in __all__:
        from saelab.data import files

        return getattr(files, name)
    raise AttributeError(f"module 'saelab.data' has no attribute {name!r}")
