"""`mae-jax export` / `mae-jax import` end to end, and torch staying optional."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

import mae_jax
from mae_jax import config_lib
from mae_jax.models import registry
from mae_jax.train import checkpoint

from conftest import REPO, run_cli


def tiny_config():
  c = config_lib.pretrain_defaults("tiny/4")
  c.model.update(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                 decoder_num_heads=2, norm_pix_loss=False)
  c.data.update(image_size=28, channels=1)
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  config = tiny_config()
  model = registry.build_mae(config)
  params = nn.unbox(jax.jit(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)},
      jnp.zeros((1, 28, 28, 1))))()["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params)
  path = tmp_path_factory.mktemp("cli") / "run"
  checkpoint.write_workdir(str(path), config, params)
  return path, params


def flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
  return out


def test_export_then_import_round_trip(workdir, tmp_path):
  path, params = workdir
  out = tmp_path / "mae_tiny.pth"
  run_cli("export", f"--workdir={path}", "--format=official", f"--out={out}", check=True)
  kwargs = json.loads(out.with_suffix(".json").read_text())
  assert kwargs["img_size"] == 28 and kwargs["in_chans"] == 1 and kwargs["num_heads"] == 2
  new = tmp_path / "imported"
  proc = run_cli("import", f"--in={out}", "--format=official", f"--workdir={new}", check=True)
  assert "imported decoder" in proc.stdout
  loaded = mae_jax.load(str(new))
  assert loaded.step == 0
  assert loaded.config.model.num_heads == 2 and loaded.config.model.norm_pix_loss is False
  a, b = flat(params), flat(loaded.params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # an existing workdir is not overwritten
  again = run_cli("import", f"--in={out}", "--format=official", f"--workdir={new}")
  assert again.returncode == 2 and "already holds a workdir" in again.stderr


def test_import_refuses_pickled_code_in_one_line(tmp_path):
  import torch

  class Payload:
    def __reduce__(self):
      return (print, ("code ran",))
  path = tmp_path / "evil.pth"
  torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, "x": Payload()}, path)
  proc = run_cli("import", f"--in={path}", "--format=official", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2
  assert "code ran" not in proc.stdout
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "pickled Python object" in lines[-1], proc.stderr
  assert not (tmp_path / "w").exists()


def test_export_package_works_without_torch(tmp_path):
  """torch/timm/transformers are an optional extra: export to hf needs none of them."""
  code = f"""
import sys
for name in ("torch", "timm", "transformers"):
  sys.modules[name] = None  # any import of them now fails
import jax, jax.numpy as jnp, flax.linen as nn
import mae_jax.export, mae_jax.export.official, mae_jax.export.timm, mae_jax.export.hf
import mae_jax.commands.export
from mae_jax import config_lib, export
from mae_jax.errors import UserError
from mae_jax.models import registry
c = config_lib.pretrain_defaults("tiny/4")
c.model.update(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
               decoder_num_heads=2)
c.data.update(image_size=16, channels=1)
m = registry.build_mae(c)
p = nn.unbox(jax.jit(lambda: m.init({{"params": jax.random.key(0), "masking": jax.random.key(0)}},
                                    jnp.zeros((1, 16, 16, 1))))()["params"])
export.save(p, c, "hf", {str(tmp_path / "hf")!r})
back = export.import_file({str(tmp_path / "hf")!r}, "hf")
assert back.has_decoder
try:
  export.save(p, c, "official", {str(tmp_path / "x.pth")!r})
except UserError as e:
  print("USER_ERROR", e)
print("OK")
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK" in proc.stdout
  assert "USER_ERROR reading or writing .pth files needs PyTorch" in proc.stdout
