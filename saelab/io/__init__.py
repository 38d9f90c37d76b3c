"""Export and import of SAE files (SAELens folder layout; Gemma Scope npz comes later)."""

from .saelens import load_saelens_folder, save_sae

__all__ = ["save_sae", "load_saelens_folder"]
