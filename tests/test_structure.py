"""The structure the package keeps: no import cycle among ``mae_jax`` modules,
package ``__init__`` files that only re-export, and the loop's ``Task`` /
``Evaluator`` contracts (``mae_jax.train.tasks``) met by every task and evaluator."""
import ast
import inspect
import os

import pytest

from conftest import REPO, load_config, tiny_classifier, tiny_overrides


def _parse(path):
  with open(path) as f:
    return ast.parse(f.read(), path)


def module_files(root: str) -> dict[str, str]:
  """``{module name: path}`` of the ``mae_jax`` package under ``root``."""
  out = {}
  for folder, _, files in os.walk(os.path.join(root, "mae_jax")):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      parts = os.path.relpath(path, root)[:-len(".py")].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _imports(path: str, name: str, files) -> list[tuple[str, str | None]]:
  """``(module, imported name or None)`` of every import in the file, at any depth
  (function-level imports count): the module is the deepest ``mae_jax`` module the
  statement names."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = []
  for node in ast.walk(_parse(path)):
    if isinstance(node, ast.Import):
      out += [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      out += [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in files else (base, a.name)
              for a in node.names]
  return [(m, n) for m, n in out if m == "mae_jax" or m.startswith("mae_jax.")]


def import_graph(root: str) -> dict[str, set[str]]:
  """``{module: the mae_jax modules it imports}``. A package's ``__init__`` is an edge
  only where a module names the package itself (``from mae_jax import export``)."""
  files = module_files(root)
  graph = {}
  for name, path in files.items():
    edges = set()
    for target, _ in _imports(path, name, files):
      while target not in files:
        target = target.rpartition(".")[0]
      if target != name:
        edges.add(target)
    graph[name] = edges
  return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle ``[a, b, ..., a]`` per strongly connected component of ``graph`` with
  more than one module (Tarjan's algorithm, iterative)."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []
  for start in sorted(graph):
    if start in index:
      continue
    work = [(start, iter(sorted(graph[start])))]
    index[start] = low[start] = len(index)
    stack.append(start)
    on_stack.add(start)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = set()
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.add(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(component)
  return [_cycle_through(graph, c) for c in components]


def _cycle_through(graph, component: set[str]) -> list[str]:
  """A shortest cycle inside ``component`` from its first module (breadth-first)."""
  start = min(component)
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    following = []
    for node in frontier:
      for child in sorted(graph[node] & component):
        if child == start:
          return paths[node] + [start]
        if child not in paths:
          paths[child] = paths[node] + [child]
          following.append(child)
    frontier = following
  raise AssertionError(f"no cycle in {component}")


def test_no_import_cycle_among_mae_jax_modules():
  cycles = import_cycles(import_graph(REPO))
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _write(root, relative: str, text: str):
  path = os.path.join(root, relative)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path):
  root = str(tmp_path)
  _write(root, "mae_jax/__init__.py", "")
  _write(root, "mae_jax/data/__init__.py", "")
  _write(root, "mae_jax/data/a.py", "from mae_jax.data.b import g\n")
  _write(root, "mae_jax/data/b.py", "def g():\n  from mae_jax.data import c\n")
  _write(root, "mae_jax/data/c.py", "from . import a\n")
  _write(root, "mae_jax/data/d.py", "from mae_jax.data import a, b\n")
  graph = import_graph(root)
  assert graph["mae_jax.data.b"] == {"mae_jax.data.c"}
  assert graph["mae_jax.data.c"] == {"mae_jax.data.a"}
  assert import_cycles(graph) == [["mae_jax.data.a", "mae_jax.data.b", "mae_jax.data.c",
                                   "mae_jax.data.a"]]


def test_package_inits_only_re_export_and_siblings_import_the_named_module():
  """Logic lives in a module whose name says its job; ``mae_jax.export`` and
  ``mae_jax.analysis`` re-export their public names for users, and a module of a
  package imports those names from the module that defines them, not back from the
  package."""
  files = module_files(REPO)
  offences = []
  for name, path in files.items():
    if path.endswith("__init__.py") and name != "mae_jax":
      for node in _parse(path).body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        exports = (isinstance(node, ast.Assign)
                   and [getattr(t, "id", None) for t in node.targets] == ["__all__"])
        if not (docstring or exports or isinstance(node, (ast.Import, ast.ImportFrom))):
          offences.append(f"{path}:{node.lineno}: {type(node).__name__} in a package __init__")
    for module, imported in _imports(path, name, files):
      if imported and module != "mae_jax" and name.startswith(module + "."):
        offences.append(f"{name} imports {imported} from its own package {module}")
  assert not offences, offences


# --------------------------------------------------------------------- contracts


def _parameters(function) -> list[tuple[str, object]]:
  """Names, kinds and defaults of ``function``'s parameters (annotations aside)."""
  return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def check_contract(obj, protocol) -> None:
  """``obj`` is an instance of the runtime-checkable ``protocol`` and each of the
  protocol's methods has the protocol's parameters (a renamed parameter fails)."""
  assert isinstance(obj, protocol), (type(obj).__name__, protocol.__name__)
  for name, member in vars(protocol).items():
    if name.startswith("_") or not inspect.isfunction(member):
      continue
    assert _parameters(getattr(type(obj), name)) == _parameters(member), (
        f"{type(obj).__name__}.{name}{inspect.signature(getattr(type(obj), name))} "
        f"does not match {protocol.__name__}.{name}{inspect.signature(member)}")


def test_the_contract_check_refuses_a_renamed_method_or_parameter():
  from mae_jax.train.tasks import Evaluator

  class Good:
    name, every = "good", 0

    def run(self, state, step: int) -> dict:
      return {}

    def scalars(self, result: dict) -> dict:
      return {}

    def has_result(self, eval_log) -> bool:
      return False

  class RenamedMethod(Good):
    has_result = None

    def has_results(self, eval_log) -> bool:
      return False

  class RenamedParameter(Good):
    def run(self, state, at_step: int) -> dict:
      return {}

  check_contract(Good(), Evaluator)
  for bad in (RenamedMethod(), RenamedParameter()):
    with pytest.raises(AssertionError):
      check_contract(bad, Evaluator)


def _tiny_tasks():
  from mae_jax.train import classifier, pretrain
  config = tiny_overrides(load_config("pretrain_fmnist"), steps=2, batch=8)
  config.monitor.update(every_steps=1, bank_size=16, query_size=8, k=2)
  config.probe.update(enabled=True, max_train=16, max_test=8)
  yield pretrain.PretrainTask(config)
  for name in ("finetune", "linprobe"):
    yield classifier.ClassifierTask(tiny_classifier(name, batch=8), check_data=False)


def test_every_task_and_evaluator_meets_the_loops_contract(tmp_path, fmnist_available):
  from mae_jax.parallel import mesh as mesh_lib
  from mae_jax.train import evaluators
  from mae_jax.train.tasks import Evaluator, Task
  seen = set()
  for task in _tiny_tasks():
    check_contract(task, Task)
    mesh = mesh_lib.make_mesh(task.config.mesh)
    made = task.evaluators(mesh, str(tmp_path / task.name), None)
    assert len({e.name for e in made}) == len(made), [e.name for e in made]
    for evaluator in made:
      check_contract(evaluator, Evaluator)
      seen.add(type(evaluator))
  defined = {cls for _, cls in inspect.getmembers(evaluators, inspect.isclass)
             if cls.__module__ == evaluators.__name__ and hasattr(cls, "has_result")}
  assert seen == defined, sorted(c.__name__ for c in defined ^ seen)


def test_abstract_batch_needs_no_build(fmnist_available):
  """A fresh task gives its batch's shapes from the shardings alone, the same ones
  the step built by ``build`` is compiled for."""
  import jax
  import numpy as np
  from mae_jax.parallel import mesh as mesh_lib
  constant = lambda count: 0.0
  for task in _tiny_tasks():
    mesh = mesh_lib.make_mesh(task.config.mesh)
    fresh = task.abstract_batch(task.batch_shardings(mesh))
    built = task.build(mesh, constant, constant, abstract=True)
    assert jax.tree.structure(built.batch_shardings) == jax.tree.structure(
        task.batch_shardings(mesh))
    assert fresh == task.abstract_batch(built.batch_shardings)
    leaves = jax.tree.leaves(fresh)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    images = fresh if isinstance(fresh, jax.ShapeDtypeStruct) else fresh["image"]
    size = task.config.data.image_size
    assert images.shape == (task.config.batch_size, size, size, 1), task.name
    assert images.dtype == np.uint8
    if task.name == "finetune":
      assert set(fresh) == {"image", "label", "mix", "erase"}
    elif task.name == "linprobe":
      assert set(fresh) == {"image", "label"}
