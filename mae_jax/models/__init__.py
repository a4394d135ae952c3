"""Flax linen models: MAE, ViT blocks, masking, position tables, named sizes."""
