from mae_jax.cli import main

main()
