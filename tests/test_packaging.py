"""The built wheel holds every module: what `pip install .` or a VM image gets."""
import os
import subprocess
import sys
import zipfile

from conftest import REPO


def test_every_module_imports_from_the_built_wheel(tmp_path):
  out = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(out), REPO], check=True, capture_output=True, text=True,
                 timeout=300)
  wheel, = out.glob("mae_jax-*.whl")
  site = tmp_path / "site"
  with zipfile.ZipFile(wheel) as z:
    z.extractall(site)
  in_wheel = sorted(n for n in z.namelist() if n.endswith(".py"))
  in_checkout = sorted(
      os.path.relpath(os.path.join(root, f), REPO)
      for root, _, files in os.walk(os.path.join(REPO, "mae_jax")) for f in files
      if f.endswith(".py"))
  assert in_wheel == in_checkout
  modules = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in in_wheel
             if not n.endswith("__main__.py")]  # importing it runs the command line
  # Command modules define their absl flags at import: one process each.
  commands = [m for m in modules if m.startswith("mae_jax.commands.")
              and m != "mae_jax.commands.common"]
  groups = [[m for m in modules if m not in commands]] + [[m] for m in commands]
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  for group in groups:
    script = ("import importlib\n"
              f"for m in {group!r}:\n"
              "  mod = importlib.import_module(m)\n"
              f"  assert mod.__file__.startswith({str(site)!r}), (m, mod.__file__)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (group, proc.stderr[-3000:])
