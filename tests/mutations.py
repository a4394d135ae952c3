"""Planted bugs: proof that the test suite catches them.

Each entry of ``MUTATIONS`` is a realistic one-line bug: a snippet of ``mae_jax``
source, its replacement, and the tests expected to catch it. The script builds a
pristine copy of the repository in a temporary directory (the working tree, or a
git revision with ``--rev``), runs the selected tests there once unmutated (they
must pass: a failing test proves nothing), then plants each bug in turn, runs its
tests and restores the file. The real working tree is never touched.

    python tests/mutations.py [--rev REV] [--only NAME,...] [--out FILE.json]
                              [--markdown FILE.md] [--before FILE.json]
                              [--before-label TEXT]
                              [--allow-missing-tests] [--list]

The snippet is searched in every ``mae_jax/**/*.py`` of the copy and must occur
exactly once, so a line that moved to another module is still found; 0 or several
matches stop the script naming the mutation. The tests run with the copy first on
``PYTHONPATH`` (it wins over an editable install) and ``JAX_PLATFORMS=cpu``.

Output: a JSON list (name, description, file, tests run, tests that failed, caught,
seconds) and a Markdown table (bug | where | test that catches it | caught);
``--before`` adds a column from the JSON of an earlier run (e.g. at another
revision). Exit status 1 when a bug was not caught, 2 when the run could not be
made (a snippet not found, an unmutated test failing, a test id unknown; with
``--allow-missing-tests`` a mutation whose tests the revision lacks is reported
as n/a instead).

Not a test module: pytest does not collect it (no ``test_*`` name).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mae_jax"
PYTEST_TIMEOUT = 900     # seconds per test (pytest-timeout)
RUN_TIMEOUT = 3600       # seconds per pytest process


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  description: str
  find: str                 # one line (or part of one) of mae_jax source, unique
  replace: str              # what it becomes: a one-line bug
  tests: tuple[str, ...]    # pytest node ids expected to catch it


MUTATIONS = (
    # ----------------------------------------------------------------- model
    Mutation(
        "mask-keeps-last",
        "random masking keeps the patches ranked last (ids from the end of the shuffle) "
        "instead of the first int(L * (1 - ratio))",
        "ids_keep = ids_shuffle[:, :keep]",
        "ids_keep = ids_shuffle[:, -keep:]",
        ("tests/test_masking.py::test_noise_reproduces_argsort_ranking",)),
    Mutation(
        "mask-argsort-descending",
        "patches ranked by descending noise (the official code sorts ascending)",
        "ids_shuffle = jnp.argsort(noise, axis=1)",
        "ids_shuffle = jnp.argsort(-noise, axis=1)",
        ("tests/test_masking.py::test_noise_reproduces_argsort_ranking",)),
    Mutation(
        "patchify-col-row",
        "patchify orders the pixels of a patch (col, row, channel) instead of (row, col, "
        "channel)",
        "return x.reshape(b, gh * gw, p * p * c)",
        "return x.swapaxes(3, 4).reshape(b, gh * gw, p * p * c)",
        ("tests/test_masking.py::test_patch_pixel_order_is_row_col_channel",)),
    Mutation(
        "pos-embed-h-first",
        "2-D sin-cos table with the h half first (official: w coordinate first)",
        "table = np.concatenate([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], axis=1)",
        "table = np.concatenate([sincos_1d(dim // 2, hh), sincos_1d(dim // 2, ww)], axis=1)",
        ("tests/test_masking.py::test_sincos_table_matches_official",)),
    Mutation(
        "norm-pix-biased-var",
        "norm-pix target with the biased variance (ddof=0; torch.var is unbiased)",
        "var = target.var(axis=-1, keepdims=True, ddof=1)",
        "var = target.var(axis=-1, keepdims=True, ddof=0)",
        ("tests/test_model.py::test_norm_pix_target_uses_unbiased_variance",)),
    Mutation(
        "norm-pix-wrong-axis",
        "norm-pix mean taken over the patches of an image instead of the pixels of a patch",
        "mean = target.mean(axis=-1, keepdims=True)",
        "mean = target.mean(axis=1, keepdims=True)",
        ("tests/test_model.py::test_norm_pix_target_uses_unbiased_variance",)),
    Mutation(
        "loss-over-all-patches",
        "reconstruction loss averaged over all patches instead of the removed ones",
        "return jnp.sum(per_patch * mask) / jnp.sum(mask)",
        "return jnp.mean(per_patch)",
        ("tests/test_model.py::test_loss_ignores_predictions_of_visible_patches",)),
    Mutation(
        "unshuffle-with-ids-shuffle",
        "decoder puts the tokens back with ids_shuffle (argsort of ids_restore) instead of "
        "ids_restore",
        "tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)",
        "tokens = jnp.take_along_axis(tokens, jnp.argsort(ids_restore, axis=1)[:, :, None], "
        "axis=1)",
        ("tests/test_export.py::test_official_parity[rgb32-False]",)),
    Mutation(
        "layernorm-eps-1e-5",
        "LayerNorm eps 1e-5 (PyTorch's default) instead of MAE's 1e-6",
        "epsilon: float = LN_EPS):",
        "epsilon: float = 1e-5):",
        ("tests/test_export.py::test_official_parity[rgb32-False]",)),
    # ----------------------------------------------------------------- optimizer
    Mutation(
        "lr-peak-ignores-accum",
        "peak lr scaled by the micro-batch instead of the effective batch "
        "(batch_size * grad_accum_steps)",
        "return optim_config.base_lr * batch_size * accumulation_steps(optim_config) / 256",
        "return optim_config.base_lr * batch_size / 256",
        ("tests/test_loop.py::test_applied_lr_equals_the_official_schedule_at_every_update[2]",)),
    Mutation(
        "cosine-ignores-min-lr",
        "warmup + cosine schedule decays to 0 instead of optim.min_lr",
        "end_value=optim_config.min_lr)",
        "end_value=0.0)",
        ("tests/test_optim.py::test_schedule_matches_official_at_key_points",)),
    Mutation(
        "weight-decay-on-norms",
        "weight decay on every parameter but biases: LayerNorm scales decayed too",
        "return unstacked_ndim(path, leaf) > 1 and name != \"bias\"",
        "return name != \"bias\"",
        ("tests/test_optim.py::test_decay_mask_excludes_biases_and_norms",)),
    Mutation(
        "no-grad-clipping",
        "optim.clip_grad_norm ignored: gradients never clipped",
        "return [optax.clip_by_global_norm(clip)] if clip and clip > 0 else []",
        "return []",
        ("tests/test_optim.py::test_clipping_bounds_the_gradient_adam_sees",)),
    # ----------------------------------------------------------------- data
    Mutation(
        "uint8-stats-reversed",
        "on-device uint8 normalisation with the mean/std channels reversed (BGR order)",
        "mean, std = (jnp.asarray(v, jnp.float32) * 255.0 for v in pixel_stats)",
        "mean, std = (jnp.asarray(v, jnp.float32)[::-1] * 255.0 for v in pixel_stats)",
        ("tests/test_uint8_input.py::test_to_model_input_is_the_host_normalisation",)),
    Mutation(
        "mixup-labels-unmixed",
        "mixup/cutmix mixes the pixels but not the labels (lambda not applied to targets)",
        "return out, y * target_lam + y[::-1] * (1.0 - target_lam)",
        "return out, y",
        ("tests/test_finetune_augment.py::test_on_device_mixing_equals_the_numpy_reference[0]",)),
    Mutation(
        "corrupt-skipped-by-default",
        "data.skip_corrupt defaults to True: an undecodable image is silently skipped",
        "num_threads=8, skip_corrupt=False,",
        "num_threads=8, skip_corrupt=True,",
        ("tests/test_image_folders.py::"
         "test_corrupt_file_stops_with_its_name_or_is_skipped_and_counted",)),
    Mutation(
        "labels-from-own-folders",
        "validation labels numbered from the split's own class folders: a split missing "
        "a class shifts every later label",
        "self.class_to_idx = {c: i for i, c in enumerate(self.classes)}",
        "self.class_to_idx = {c: i for i, c in enumerate(own_classes)}",
        ("tests/test_image_folders.py::test_val_labels_follow_the_training_classes",)),
    Mutation(
        "video-stride-ignored",
        "clips take consecutive frames whatever data.video.stride",
        "return np.minimum(start + stride * np.arange(num_frames), num_available - 1)",
        "return np.minimum(start + np.arange(num_frames), num_available - 1)",
        ("tests/test_video_tfds.py::test_clip_indices_against_brute_force",)),
    # ----------------------------------------------------------------- parallelism
    Mutation(
        "embed-on-model-axis",
        "sharding rule maps the logical 'embed' axis to the 'model' mesh axis instead of "
        "'fsdp'",
        "(\"embed\", \"fsdp\"),",
        "(\"embed\", \"model\"),",
        ("tests/test_parallel.py::test_indivisible_parameter_is_a_config_error",)),
    # ----------------------------------------------------------------- export
    Mutation(
        "hf-query-reads-keys",
        "Hugging Face name map: attention.query.weight takes our k slice (q and k mixed up)",
        "(\"attn/qkv/kernel\", \"attention.attention.query.weight\", QKV_PART, 0),",
        "(\"attn/qkv/kernel\", \"attention.attention.query.weight\", QKV_PART, 1),",
        ("tests/test_export.py::test_hf_parity[rgb32-False]",)),
    Mutation(
        "qkv-heads-major",
        "fused qkv weight exported as (heads, q/k/v, head_dim) rows instead of (q/k/v, "
        "heads, head_dim)",
        "y = x.reshape(x.shape[0], -1).T",
        "y = x.transpose(0, 2, 1, 3).reshape(x.shape[0], -1).T",
        ("tests/test_export.py::test_in_memory_round_trip_and_transforms",)),
    # ----------------------------------------------------------------- runs and workdirs
    Mutation(
        "resume-one-batch-off",
        "a resumed run skips one batch: the data iterator is one batch past the checkpoint",
        "state, start_step = ckpt.restore_latest(state, data_iter)",
        "state, start_step = ckpt.restore_latest(state, data_iter); start_step and "
        "next(data_iter)",
        ("tests/test_pretrain.py::test_resume_reproduces_uninterrupted_trajectory",)),
    Mutation(
        "metrics-rows-duplicated",
        "a resumed run keeps the metrics row of the step after its checkpoint: that step "
        "is logged twice",
        "for line, row in _parsed_rows(path) if row[\"step\"] <= step]",
        "for line, row in _parsed_rows(path) if row[\"step\"] <= step + 1]",
        ("tests/test_loop.py::test_metrics_hold_each_step_once_after_a_resume",)),
    Mutation(
        "keep-one-more-checkpoint",
        "checkpoint.keep off by one: keep + 1 checkpoints kept",
        "LatestN(n=int(keep))",
        "LatestN(n=int(keep) + 1)",
        ("tests/test_loop.py::test_finetune_keeps_its_best_checkpoint_besides_the_latest",)),
    Mutation(
        "lock-never-released",
        "the workdir lock is never released: the next run on the workdir is refused",
        "fileio.remove(self.path)  # already gone is fine",
        "pass  # already gone is fine",
        ("tests/test_gcs.py::"
         "test_workdir_lock_on_gcs_excludes_a_second_run_and_takes_over_a_dead_ones",)),
    Mutation(
        "preempted-step-off-by-one",
        "Ctrl-C reports the step after the one it saved (the run resumes from another step "
        "than it says)",
        "return {\"preempted_at\": step,",
        "return {\"preempted_at\": step + 1,",
        ("tests/test_reliability.py::test_ctrl_c_reports_the_step_it_saved",)),
)


# ----------------------------------------------------------------- the copy


def die(message: str):
  """Stops the run: it could not be made (exit status 2)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _run(cmd, **kw):
  return subprocess.run(cmd, check=True, **kw)


def build_copy(dest: str, rev: str | None) -> None:
  """``dest`` <- the repository at ``rev``, or its working tree (tracked and untracked,
  not ignored files)."""
  if rev:
    archive = subprocess.Popen(["git", "-C", REPO, "archive", rev], stdout=subprocess.PIPE)
    _run(["tar", "-x", "-C", dest], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() != 0:
      die(f"git archive {rev} failed")
    return
  listed = _run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"],
                capture_output=True).stdout.decode()
  for rel in sorted(set(filter(None, listed.split("\0")))):
    src = os.path.join(REPO, rel)
    if not os.path.lexists(src):  # deleted in the working tree, not yet in git
      continue
    target = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(src):
      os.symlink(os.readlink(src), target)
    elif os.path.isfile(src):
      shutil.copy2(src, target)


def package_files(root: str) -> list[str]:
  out = []
  for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
    out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
  return sorted(out)


def locate(root: str, mutation: Mutation) -> tuple[str, int]:
  """``(file, line number)`` of the one occurrence of the mutation's snippet."""
  if "\n" in mutation.find or "\n" in mutation.replace:
    die(f"mutation {mutation.name}: snippet and replacement must be one line")
  hits = []
  for path in package_files(root):
    with open(path, encoding="utf-8") as f:
      text = f.read()
    start = text.find(mutation.find)
    while start >= 0:
      hits.append((path, text.count("\n", 0, start) + 1))
      start = text.find(mutation.find, start + 1)
  if len(hits) != 1:
    where = ", ".join(f"{os.path.relpath(p, root)}:{n}" for p, n in hits) or "nowhere"
    die(f"mutation {mutation.name}: its snippet {mutation.find!r} must occur "
        f"exactly once in {PACKAGE}/**/*.py, found {len(hits)} ({where}).")
  return hits[0]


# ----------------------------------------------------------------- running tests


def _env(root: str) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale .pyc of a mutated file
  return env


def check_import(root: str) -> str:
  """Where the tests will import the package from: must be the copy."""
  out = _run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
             cwd=root, env=_env(root), capture_output=True, text=True).stdout.strip()
  if not os.path.realpath(out).startswith(os.path.realpath(root) + os.sep):
    die(f"{PACKAGE} is imported from {out}, not from the copy {root}")
  return out


def _node_id(case: ET.Element) -> str:
  classname, name = case.get("classname", ""), case.get("name", "")
  parts = classname.split(".")
  # "tests.test_x" (+ ".TestClass") -> tests/test_x.py(::TestClass)
  for i in range(len(parts), 0, -1):
    if parts[i - 1].startswith("test_") or i == 1:
      module = "/".join(parts[:i]) + ".py"
      rest = parts[i:]
      break
  return "::".join([module, *rest, name]) if classname else name


def run_tests(root: str, tests, stop_first: bool = True) -> dict:
  """Runs pytest on ``tests`` in ``root``: ``{"rc", "passed", "failed", "output"}``."""
  with tempfile.NamedTemporaryFile(suffix=".xml", delete=False) as f:
    junit = f.name
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--timeout={PYTEST_TIMEOUT}", f"--junitxml={junit}", *(["-x"] if stop_first else []),
         *tests]
  try:
    proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    rc, output = proc.returncode, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, output = "timeout", f"pytest ran past {RUN_TIMEOUT} s\n{e.stdout or ''}"
  passed, failed, messages = [], [], []
  try:
    for case in ET.parse(junit).getroot().iter("testcase"):
      bad = [child for child in case if child.tag in ("failure", "error")]
      skipped = any(child.tag == "skipped" for child in case)
      if bad:
        failed.append(_node_id(case))
        messages.append(" ".join((bad[0].get("message") or "").split())[:300])
      elif not skipped:
        passed.append(_node_id(case))
  except (ET.ParseError, FileNotFoundError):
    pass
  finally:
    if os.path.exists(junit):
      os.remove(junit)
  return {"rc": rc, "passed": passed, "failed": failed, "messages": messages,
          "output": output}


def missing_tests(root: str, tests) -> set[str]:
  """The test ids of ``tests`` that pytest does not collect in ``root``."""
  files = sorted({t.split("::")[0] for t in tests})
  proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                         "no:cacheprovider", *files], cwd=root, env=_env(root),
                        capture_output=True, text=True, timeout=RUN_TIMEOUT)
  collected = {line.strip() for line in proc.stdout.splitlines() if "::" in line}

  def present(test: str) -> bool:
    if "::" not in test:
      return os.path.exists(os.path.join(root, test))
    return test in collected or any(c.startswith((test + "[", test + "::")) for c in collected)
  return {t for t in tests if not present(t)}


def not_run(root: str, mutation: Mutation, missing) -> dict:
  path, line = locate(root, mutation)
  return {"name": mutation.name, "description": mutation.description,
          "file": os.path.relpath(path, root), "line": line, "find": mutation.find,
          "replace": mutation.replace, "tests": list(mutation.tests), "failed": [],
          "caught": None, "seconds": 0.0,
          "note": f"not in this revision: {', '.join(sorted(missing))}"}


def mutate_and_test(root: str, mutation: Mutation) -> dict:
  path, line = locate(root, mutation)
  with open(path, encoding="utf-8") as f:
    original = f.read()
  mutated = original.replace(mutation.find, mutation.replace, 1)
  t0 = time.time()
  try:
    with open(path, "w", encoding="utf-8") as f:
      f.write(mutated)
    result = run_tests(root, mutation.tests)
  finally:
    with open(path, "w", encoding="utf-8") as f:
      f.write(original)
  seconds = time.time() - t0
  if result["rc"] in (4, 5):  # usage error (unknown test id) or nothing collected
    die(f"mutation {mutation.name}: pytest could not run its tests "
                     f"(exit {result['rc']}):\n{result['output'][-3000:]}")
  caught = result["rc"] != 0 and (bool(result["failed"]) or result["rc"] == "timeout")
  return {"name": mutation.name, "description": mutation.description,
          "file": os.path.relpath(path, root), "line": line, "find": mutation.find,
          "replace": mutation.replace, "tests": list(mutation.tests),
          "failed": result["failed"], "message": " | ".join(result["messages"]),
          "caught": caught, "seconds": round(seconds, 1),
          "pytest_exit": result["rc"]}


# ----------------------------------------------------------------- report


def _short(node_id: str) -> str:
  return node_id.replace("tests/", "", 1)


def _caught(row: dict | None, missing: str) -> str:
  if row is None or row["caught"] is None:
    return missing
  return "yes" if row["caught"] else "**no**"


def markdown(rows: list[dict], before: dict | None = None, before_label: str = "") -> str:
  head = ["bug", "where", "test that catches it"]
  if before is not None:
    head.append(f"caught before{f' ({before_label})' if before_label else ''}")
    head.append("caught now")
  else:
    head.append("caught")
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in rows:
    tests = r["failed"] or r["tests"]
    cells = [f"`{r['name']}`: {r['description']}", f"`{r['file']}:{r['line']}`",
             "<br>".join(f"`{_short(t)}`" for t in tests)]
    if before is not None:
      cells.append(_caught(before.get(r["name"]), "n/a (test added)"))
    cells.append(_caught(r, "n/a (test not here)"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rev", help="git revision to copy (default: the working tree)")
  parser.add_argument("--only", help="comma-separated mutation names")
  parser.add_argument("--out", help="write the results as JSON here")
  parser.add_argument("--markdown", help="write the results as a Markdown table here")
  parser.add_argument("--before", help="JSON of an earlier run: adds a 'caught before' "
                      "column to the Markdown table")
  parser.add_argument("--before-label", default="",
                      help="what the earlier run was, for the column's title (e.g. its "
                      "revision)")
  parser.add_argument("--allow-missing-tests", action="store_true",
                      help="report a mutation whose tests this revision lacks as n/a "
                      "instead of stopping (for a revision older than a test)")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  args = parser.parse_args(argv)

  selected = list(MUTATIONS)
  names = [m.name for m in MUTATIONS]
  assert len(set(names)) == len(names), "mutation names must be unique"
  if args.list:
    for m in MUTATIONS:
      print(f"{m.name}: {m.description}\n    {' '.join(m.tests)}")
    return 0
  if args.only:
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      die(f"unknown mutation(s): {', '.join(unknown)}; see --list")
    selected = [m for m in MUTATIONS if m.name in wanted]

  t_start = time.time()
  with tempfile.TemporaryDirectory(prefix="mae_mutations_") as root:
    build_copy(root, args.rev)
    where = f"revision {args.rev}" if args.rev else "the working tree"
    print(f"copy of {where}; {PACKAGE} imported from {check_import(root)}", flush=True)
    for m in selected:  # every snippet found once before any test runs
      locate(root, m)
    skipped = {}
    if args.allow_missing_tests:
      missing = missing_tests(root, [t for m in selected for t in m.tests])
      skipped = {m.name: set(m.tests) & missing for m in selected if set(m.tests) & missing}
      for name, gone in skipped.items():
        print(f"n/a  {name}: {', '.join(sorted(gone))} not in this revision", flush=True)
    tests = list(dict.fromkeys(t for m in selected if m.name not in skipped for t in m.tests))
    t0 = time.time()
    baseline = run_tests(root, tests, stop_first=False)
    print(f"unmutated: {len(baseline['passed'])} passed, {len(baseline['failed'])} failed "
          f"({time.time() - t0:.0f} s)", flush=True)
    if baseline["rc"] != 0 or baseline["failed"]:
      print(baseline["output"][-5000:], file=sys.stderr)
      die(f"the unmutated tests do not pass in {where} "
                       f"(pytest exit {baseline['rc']}; failed: {baseline['failed']}): "
                       "a failing test proves nothing.")
    baseline_seconds = time.time() - t0
    rows = []
    for m in selected:
      if m.name in skipped:
        rows.append(not_run(root, m, skipped[m.name]))
        continue
      row = mutate_and_test(root, m)
      rows.append(row)
      print(f"{'caught' if row['caught'] else 'NOT CAUGHT'}  {m.name}  ({row['file']}:"
            f"{row['line']}; {', '.join(map(_short, row['failed'] or row['tests']))}; "
            f"{row['seconds']:.0f} s)", flush=True)
  total = time.time() - t_start
  ran = [r for r in rows if r["caught"] is not None]
  caught = sum(r["caught"] for r in ran)
  na = f" ({len(rows) - len(ran)} n/a)" if len(ran) < len(rows) else ""
  print(f"{caught} of {len(ran)} planted bugs caught{na}; unmutated run "
        f"{baseline_seconds:.0f} s, total {total:.0f} s", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
      f.write("\n")
  if args.markdown:
    before = None
    label = args.before_label
    if args.before:
      with open(args.before) as f:
        before = {r["name"]: r for r in json.load(f)}
    with open(args.markdown, "w") as f:
      f.write(markdown(rows, before, label))
      f.write(f"\n{caught} of {len(ran)} caught; {total / 60:.1f} minutes in all "
              f"({baseline_seconds / 60:.1f} of them for the unmutated run)"
              f"{f' at {args.rev}' if args.rev else ''}.\n")
  return 0 if caught == len(ran) else 1


if __name__ == "__main__":
  sys.exit(main())
