"""Learned position tables resize exactly as the official code's torch bicubic."""
import numpy as np
import pytest
import torch

from mae_jax.models.pos_embed import bicubic_matrix, resize_table


@pytest.mark.parametrize("old,new", [((14, 14), (16, 16)), ((14, 14), (7, 7)),
                                     ((4, 6), (9, 5)), ((7, 7), (24, 24))])
def test_resize_equals_torch_bicubic(old, new):
  rng = np.random.default_rng(0)
  dim = 12
  table = rng.normal(size=(1 + old[0] * old[1], dim)).astype(np.float32)
  ours = resize_table(table, new, num_prefix=1, old_grid=old)
  grid = torch.from_numpy(table[1:].reshape(1, old[0], old[1], dim)).permute(0, 3, 1, 2)
  theirs = torch.nn.functional.interpolate(grid, size=new, mode="bicubic",
                                           align_corners=False)
  theirs = theirs.permute(0, 2, 3, 1).reshape(-1, dim).numpy()
  np.testing.assert_array_equal(ours[0], table[0])            # the cls row is kept
  diff = float(np.abs(ours[1:] - theirs).max())
  print(f"{old} -> {new}: max |diff| vs torch {diff:.2e}")
  assert diff < 1e-5 * max(1.0, float(np.abs(theirs).max()))


def test_bicubic_weights_sum_to_one_and_identity_is_exact():
  for n_in, n_out in ((5, 9), (9, 5), (3, 3)):
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, atol=1e-12)
  np.testing.assert_allclose(bicubic_matrix(6, 6), np.eye(6), atol=1e-12)
