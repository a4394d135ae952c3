"""PyTorch interop: our parameters <-> the official MAE, timm and Hugging Face layouts.

This package only re-exports: the MAE's conversions (``to_torch_state_dict``,
``from_torch_state_dict``, ``save``, ``import_file``; their use is in that module's
docstring) live in ``mae_jax.export.mae``, the classifier's in
``mae_jax.export.classifier``, the name map in ``mae_jax.export.names``, and one
module per format (``official``, ``timm``, ``hf``, ``videomae``) reads and writes
its files.
"""
from mae_jax.export.mae import (FORMATS, Imported, default_num_heads, from_torch_state_dict,
                                import_file, load_file, save, to_torch_state_dict,
                                torch_metadata, writes_directory)

__all__ = ["FORMATS", "Imported", "to_torch_state_dict", "from_torch_state_dict",
           "torch_metadata", "save", "load_file", "import_file", "default_num_heads",
           "writes_directory"]
