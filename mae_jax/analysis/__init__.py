"""Measurements of the claims of "How to Understand Masked Autoencoders" (Cao, Xu
and Clifton, 2022) on a trained MAE; ``mae-jax analyze`` writes them as a report.

One module per claim, each a set of pure functions plus an ``analyze`` entry:

* ``attention_kernel``: attention as an integral kernel over patch displacement;
* ``stability``: layer-to-layer change and per-block Lipschitz estimates;
* ``low_rank``: singular spectra of patch matrices, rank-k linear completion;
* ``interpolation``: Jacobian influence of visible on masked patches versus
  distance, and the model against local inpainting baselines.

``hooks`` runs the model with its intermediates captured; ``measure`` runs every
measure on a model, the data or workdirs (``analyze_workdirs`` is ``mae-jax
analyze``); ``report`` writes ``report.md``, ``analysis.json`` and the plots. This
package only re-exports ``measure``'s public names. See ``docs/analysis.md``.
"""
from mae_jax.analysis.measure import (Settings, analyze_data, analyze_model, analyze_workdirs,
                                      make_random_workdir, random_params)

__all__ = ["Settings", "analyze_model", "analyze_data", "random_params",
           "make_random_workdir", "analyze_workdirs"]
