"""PyTorch interop: our parameters <-> the official MAE, timm and Hugging Face layouts.

In memory (NumPy only; no torch needed)::

    sd = to_torch_state_dict(params, config, "official")        # {name: np.ndarray}
    imported = from_torch_state_dict(sd, "official")            # .params, .config

Files::

    save(params, config, "official", "F.pth")       # F.pth + F.json
    imported = import_file("F.pth", "official")     # then checkpoint.write_workdir

This package only re-exports: the MAE's conversions live in ``mae_jax.export.mae``,
the classifier's in ``mae_jax.export.classifier``, the name map in
``mae_jax.export.names``, and one module per format (``official``, ``timm``,
``hf``, ``videomae``) reads and writes its files.
"""
from mae_jax.export.mae import (FORMATS, Imported, default_num_heads, from_torch_state_dict,
                                import_file, load_file, save, to_torch_state_dict,
                                torch_metadata, writes_directory)

__all__ = ["FORMATS", "Imported", "to_torch_state_dict", "from_torch_state_dict",
           "torch_metadata", "save", "load_file", "import_file", "default_num_heads",
           "writes_directory"]
