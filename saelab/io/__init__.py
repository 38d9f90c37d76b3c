"""Export and import of SAE files: the SAELens folder layout and Gemma Scope params.npz."""

from .gemma_scope import load_gemma_scope_npz, save_gemma_scope_npz
from .saelens import load_saelens_folder, save_sae

__all__ = ["save_sae", "load_saelens_folder", "save_gemma_scope_npz", "load_gemma_scope_npz"]
