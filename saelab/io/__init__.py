"""SAE files in and out, as plain formats: the SAELens folder layout (saelab's exports),
dictionary_learning's ae.pt + config.json, sparsify's sae.safetensors + cfg.json and Gemma
Scope's params.npz. Readers return an ``SAEFile`` record in saelab's names and orientation;
writers take an SAE duck-typed. This package never imports saelab.sae:
``saelab.sae.load_sae`` detects the format and builds the SAE (docs/interop.md)."""

from .dictionary_learning import read_dictionary_learning_folder
from .gemma_scope import load_gemma_scope_npz, save_gemma_scope_npz
from .record import SAEFile
from .saelens import load_saelens_folder, read_saelens_folder, save_sae
from .sparsify import read_sparsify_folder

__all__ = [
    "SAEFile",
    "load_gemma_scope_npz",
    "load_saelens_folder",
    "read_dictionary_learning_folder",
    "read_saelens_folder",
    "read_sparsify_folder",
    "save_gemma_scope_npz",
    "save_sae",
]
