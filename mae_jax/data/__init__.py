"""Input: image sources, deterministic grain pipelines, augmentations."""
