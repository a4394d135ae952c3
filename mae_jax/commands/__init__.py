"""One module per ``mae-jax`` command: absl flags + ``main(argv)``."""
