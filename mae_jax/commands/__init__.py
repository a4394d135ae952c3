"""One module per ``mae-jax`` command: ``define_flags(fv, argv)`` + ``run(fv, args)``
(driven by ``mae_jax.cli``)."""
