"""The one training loop: periodic decisions, gradient accumulation as the official
recipe defines it, the best checkpoint, and the non-finite policy for every task."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config, tiny_classifier, tiny_overrides, training_rows
from mae_jax import config_lib
from mae_jax.errors import ConfigError, NonFiniteLossError
from mae_jax.train import classifier, loop, optim


def official_lr(it, per_epoch, epochs, warmup_epochs, peak, min_lr):
  """facebookresearch/mae util/lr_sched.adjust_learning_rate at data_iter_step ``it``."""
  epoch = it / per_epoch
  if epoch < warmup_epochs:
    return peak * epoch / warmup_epochs
  return min_lr + (peak - min_lr) * 0.5 * (
      1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def test_itstime():
  assert [s for s in range(1, 11) if loop.itstime(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 11) if loop.itstime(s, 0, 10)] == [10]
  assert [s for s in range(1, 11) if loop.itstime(s, 4, 10, end=False)] == [4, 8]


@pytest.mark.parametrize("accum", [1, 2, 4])
def test_applied_lr_equals_the_official_schedule_at_every_update(accum):
  """AdamW fed a constant gradient moves each weight by exactly the lr it applies
  (m_hat / sqrt(v_hat) = 1): read the applied lr off the parameters."""
  per_epoch, epochs, warmup_epochs, batch = 8, 5, 2, 64
  c = config_lib.pretrain_defaults("tiny/4").optim
  c.update(base_lr=1e-3, min_lr=1e-5, warmup_epochs=warmup_epochs, warmup_steps=0,
           weight_decay=0.0, grad_accum_steps=accum)
  total = per_epoch * epochs
  schedule = optim.learning_rate_schedule(c, batch, total, per_epoch)
  lr_fn = optim.applied_lr(schedule, c)
  tx = optim.adamw(c, schedule)
  params = {"w": {"kernel": jnp.zeros((2, 2))}}
  state = tx.init(params)
  grads = {"w": {"kernel": jnp.ones((2, 2))}}
  peak = 1e-3 * batch * accum / 256
  update = jax.jit(lambda p, s: tx.update(grads, s, p))
  for it in range(total):
    updates, state = update(params, state)
    before = float(params["w"]["kernel"][0, 0])
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    moved = before - float(params["w"]["kernel"][0, 0])
    window_start = it - it % accum  # the official loop sets the lr at the window's start
    want = official_lr(window_start, per_epoch, epochs, warmup_epochs, peak, 1e-5)
    assert float(lr_fn(it)) == pytest.approx(want, rel=1e-5, abs=1e-12)
    if (it + 1) % accum:
      assert moved == 0.0, f"updated inside an accumulation window at micro-batch {it}"
    else:
      assert moved == pytest.approx(want, rel=1e-4, abs=1e-10), it


def test_run_lengths_grad_accum_does_not_divide_are_refused(fmnist_available):
  config = tiny_classifier("finetune", steps=5)
  config.optim.grad_accum_steps = 2
  with pytest.raises(ConfigError, match="grad_accum_steps=2 does not divide"):
    loop.total_steps(config)
  config.num_train_steps = 0
  config.num_epochs = 1
  config.batch_size = 384  # 60000 // 384 = 156 micro-batches per epoch
  config.optim.grad_accum_steps = 5
  with pytest.raises(ConfigError, match="an epoch has 156 micro-batches"):
    loop.total_steps(config)
  config.optim.grad_accum_steps = 4
  assert loop.total_steps(config) == (156, 156)


def _final_params(workdir, step=None):
  from mae_jax import checkpoint_io
  params, _ = checkpoint_io.restore_params(workdir, step,
                                      jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  return traverse_util.flatten_dict(params, sep="/")


@pytest.mark.slow
def test_k_micro_batches_of_b_equal_one_batch_of_kb(tmp_path, fmnist_available):
  """Fine-tuning (LLRD AdamW, warmup + cosine) with 2 x 16 images per update gives
  the parameters of 32 images per update, and logs the lr it applies."""
  def config(batch, accum, steps):
    c = tiny_classifier("finetune", steps=steps, batch=batch)
    c.model.drop_path = 0.0
    c.data.augment.update(mixup=0.0, cutmix=0.0)
    c.optim.update(grad_accum_steps=accum, warmup_steps=steps // 2)
    c.eval_every_steps = steps
    return c
  classifier.train_and_evaluate(config(16, 2, 8), str(tmp_path / "accum"))
  classifier.train_and_evaluate(config(32, 1, 4), str(tmp_path / "plain"))
  a, b = _final_params(tmp_path / "accum"), _final_params(tmp_path / "plain")
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=name)
  lr_a = [r["lr"] for r in training_rows(tmp_path / "accum")]
  lr_b = [r["lr"] for r in training_rows(tmp_path / "plain")]
  assert len(lr_a) == 8 and len(lr_b) == 4
  np.testing.assert_allclose(lr_a[0::2], lr_b, rtol=1e-6)
  np.testing.assert_allclose(lr_a[1::2], lr_b, rtol=1e-6)
  assert lr_b[2] == pytest.approx(4e-3 * 32 / 256)  # the peak uses the effective batch


def test_finetune_keeps_its_best_checkpoint_besides_the_latest(tmp_path, fmnist_available):
  config = tiny_classifier("finetune", steps=8)
  config.eval_every_steps = 2
  config.checkpoint.update(every_steps=8, keep=1)
  result = classifier.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "eval.json") as f:
    saved = json.load(f)
  history = {h["step"]: h["top1"] for h in saved["history"]}
  assert sorted(history) == [2, 4, 6, 8]
  best_step = max(history, key=lambda s: (history[s], -s))
  assert saved["best_top1"] == history[best_step] == result["best_top1"]
  assert saved["best_step"] == best_step
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept == sorted({best_step, 8})
  assert saved["best_checkpoint"].endswith(f"checkpoints/{best_step}")


@pytest.mark.parametrize("task", ["finetune", "linprobe"])
def test_non_finite_loss_stops_every_task_before_a_checkpoint(task, tmp_path,
                                                              fmnist_available):
  config = tiny_classifier(task, steps=6)
  config.checkpoint.every_steps = 2
  config.optim.update(base_lr=1e38, min_lr=1e38 * 32 / 256 if task == "finetune" else 0.0,
                      warmup_steps=0)
  with pytest.raises(NonFiniteLossError, match="non-finite loss/gradient at step"):
    classifier.train_and_evaluate(config, str(tmp_path))
  steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  for step in steps:
    params = _final_params(str(tmp_path), step)
    assert all(np.isfinite(v).all() for v in params.values()), step


@pytest.mark.slow
def test_metrics_hold_each_step_once_after_a_resume(tmp_path, fmnist_available):
  from mae_jax.train import pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=6)
  pretrain.train_and_evaluate(config, str(tmp_path))
  # pretend the run went on past its last checkpoint (step 6) and was killed
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 7, "loss": 1.0}) + "\n" + '{"step": 8, "lo')
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=10)
  pretrain.train_and_evaluate(config, str(tmp_path))
  steps = [r["step"] for r in training_rows(tmp_path)]
  assert steps == list(range(1, 11))


def _parse(path):
  import ast
  with open(path) as f:
    return ast.parse(f.read(), path)


def test_configs_import_only_config_lib():
  import ast
  from conftest import REPO
  for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if not name.endswith(".py"):
      continue
    for node in ast.walk(_parse(os.path.join(REPO, "configs", name))):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mae_jax"):
        assert node.module in ("mae_jax", "mae_jax.config_lib", "mae_jax.errors"), (
            name, node.module)
        if node.module == "mae_jax":
          assert [a.name for a in node.names] == ["config_lib"], name
      if isinstance(node, ast.Import):
        assert not any(a.name.startswith("mae_jax.") for a in node.names), name


def _int_leaves(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _int_leaves(value, f"{prefix}{key}.")
    elif isinstance(value, int) and not isinstance(value, bool):
      yield prefix + key


def test_no_shipped_config_field_is_an_alias_of_another():
  """ml_collections: assigning to a field that holds ``get_ref(x)`` sets ``x``, so an
  override of one (``--config.eval_every_steps=2``) would silently change the other
  (the run's length). A field derived from another may follow it, never the reverse."""
  from conftest import REPO
  names = sorted(n[:-3] for n in os.listdir(os.path.join(REPO, "configs")) if n.endswith(".py"))
  assert "finetune_fmnist" in names
  for name in names:
    leaves = list(_int_leaves(load_config(name)))
    changes = {}
    for leaf in leaves:
      config = load_config(name)
      before = {k: _get(config, k) for k in leaves}
      _set(config, leaf, before[leaf] + 7)
      changes[leaf] = {k for k in leaves if k != leaf and _get(config, k) != before[k]}
    for leaf, followers in changes.items():
      for other in followers:
        assert leaf not in changes[other], (name, leaf, other)


def _get(config, dotted):
  for key in dotted.split("."):
    config = config[key]
  return config


def _set(config, dotted, value):
  *parents, last = dotted.split(".")
  for key in parents:
    config = config[key]
  config[last] = value


def test_no_module_uses_another_modules_private_names():
  """``from mae_jax.x import _y`` or ``x._y`` on an imported mae_jax module."""
  import ast
  from conftest import REPO
  offences = []
  for root, _, files in os.walk(os.path.join(REPO, "mae_jax")):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      tree = _parse(path)
      modules = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mae_jax"):
          offences += [f"{path}: {node.module}.{a.name}" for a in node.names
                       if a.name.startswith("_") and a.name != "__version__"]
          modules |= {a.asname or a.name for a in node.names}
        if isinstance(node, ast.Import):
          modules |= {a.asname or a.name.split(".")[0] for a in node.names
                      if a.name.startswith("mae_jax")}
      for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
            and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
            and node.value.id in modules):
          offences.append(f"{path}: {node.value.id}.{node.attr}")
  assert not offences, offences


def _mae_jax_imports(path: str) -> set[str]:
  """The mae_jax modules ``path`` imports, at the top or inside a function:
  ``from mae_jax.a import b`` gives ``mae_jax.a`` and ``mae_jax.a.b``, relative
  imports are resolved against the file's package."""
  import ast
  from conftest import REPO
  package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
  found = set()
  for node in ast.walk(_parse(path)):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "mae_jax"}
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([module] if module else []))
      if module.split(".")[0] == "mae_jax":
        found |= {module} | {f"{module}.{a.name}" for a in node.names}
  return found


# (files, mae_jax modules they must not import): the floors of the package
LAYERS = (
    (("models", "data", "parallel"),
     ("mae_jax.train", "mae_jax.export", "mae_jax.commands", "mae_jax.cli",
      "mae_jax.analysis", "mae_jax.loading")),
    (("workdir.py", "checkpoint_io.py", "stacking.py", "fileio.py", "errors.py",
      "compile_cache.py"),
     ("mae_jax.models", "mae_jax.train", "mae_jax.export", "mae_jax.commands",
      "mae_jax.cli", "mae_jax.analysis", "mae_jax.loading", "mae_jax.data",
      "mae_jax.parallel")),
)


def _under(forbidden: str, module: str) -> bool:
  return module == forbidden or module.startswith(forbidden + ".")


def test_lower_floors_import_nothing_from_the_floors_above():
  """Models, data and parallelism never reach up into training, export or the
  commands; the workdir and checkpoint-I/O modules sit below the models and the
  trainers (``mae_jax.models.load`` reads checkpoints through them). Imports inside
  functions count."""
  from conftest import REPO
  offences = []
  for names, forbidden in LAYERS:
    paths = []
    for name in names:
      path = os.path.join(REPO, "mae_jax", name)
      assert os.path.exists(path), path
      paths += ([path] if name.endswith(".py") else
                [os.path.join(root, f) for root, _, files in os.walk(path)
                 for f in files if f.endswith(".py")])
    for path in paths:
      offences += [f"{os.path.relpath(path, REPO)} imports {module}"
                   for module in sorted(_mae_jax_imports(path))
                   if any(_under(f, module) for f in forbidden)]
  assert not offences, offences


def test_resume_with_another_model_names_the_difference_and_writes_nothing(
    tmp_path, fmnist_available):
  from mae_jax.errors import CheckpointError
  from mae_jax.train import pretrain
  pretrain.train_and_evaluate(tiny_overrides(load_config("pretrain_fmnist"), steps=4),
                              str(tmp_path))
  before = {name: (tmp_path / name).read_bytes() for name in ("config.json",
                                                                "metrics.jsonl")}
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=8)
  config.model.embed_dim = 64
  with pytest.raises(CheckpointError, match="holds another model") as error:
    pretrain.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert ("params/blocks_0/attn/qkv/kernel: checkpoint [32, 3, 2, 16] float32, run "
          "[64, 3, 2, 32] float32") in message
  assert "intact" in message and "corrupt" not in message and "Delete" not in message
  after = {name: (tmp_path / name).read_bytes() for name in before}
  assert after == before  # the failed run wrote nothing into the good workdir


def test_profile_window_writes_a_trace_and_changes_no_result(tmp_path, fmnist_available):
  import glob
  from mae_jax.train import pretrain
  for name, start in (("plain", 0), ("profiled", 2)):
    config = tiny_overrides(load_config("pretrain_fmnist"), steps=4)
    config.profile.update(start_step=start, num_steps=1)
    pretrain.train_and_evaluate(config, str(tmp_path / name))
  traces = glob.glob(str(tmp_path / "profiled" / "profile" / "plugins" / "profile" / "*" /
                         "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  assert not os.path.exists(tmp_path / "plain" / "profile")
  def measured(name):  # the rows but their timings
    return [{k: v for k, v in row.items() if k != "img_per_s" and not k.startswith("time/")}
            for row in training_rows(tmp_path / name)]
  assert measured("plain") == measured("profiled")


def test_classifier_commands_refuse_the_other_task_config(tmp_path):
  from conftest import run_cli
  proc = run_cli("finetune", "--config=configs/linprobe_fmnist.py", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "a linprobe config, not a finetune config" in lines[0]
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name", ["finetune_imagenet", "linprobe_imagenet"])
def test_imagenet_classifier_configs_run_locally(name, tmp_path, fmnist_available):
  """The official recipes' own files, shrunk by `runlocal`, train two steps on a CPU."""
  config = load_config(name, "variant=B/16,runlocal")
  result = classifier.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["num_examples"] == 16


def test_progress_is_a_bar_on_the_terminal_of_today_and_lines_elsewhere(monkeypatch):
  """The stream is the stdout in effect when the run starts (not at import), and a
  terminal gets the one-line bar."""
  import io
  from mae_jax.train import metrics

  class Terminal(io.StringIO):
    def isatty(self):
      return True
  for stream, tty in ((Terminal(), True), (io.StringIO(), False)):
    monkeypatch.setattr("sys.stdout", stream)
    progress = metrics.Progress(4, 0)
    progress.update(4, {"loss": 1.5})
    assert progress.tty is tty and progress.stream is stream
    text = stream.getvalue()
    assert text.startswith("\r[" if tty else "step 4/4 loss=1.5") and text.endswith("\n")
