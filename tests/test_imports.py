"""The pn_tf package has no import cycle.

Every module of pn_tf is read with ``ast`` (nothing is imported): its imports at module
level and inside functions, relative imports resolved, make edges of a module graph.
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg`` (its ``__init__``). A strongly connected component of more than one module
is a cycle; the test names it.
"""

import ast
import pathlib

import pn_tf

PACKAGE = "pn_tf"


def package_modules(root, package=PACKAGE):
    """``{module name: path}`` for every .py file under the package directory ``root``."""
    root = pathlib.Path(root)
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package] + parts)] = path
    return modules


def _is_package(name, modules):
    path = modules.get(name)
    return path is not None and path.name == "__init__.py"


def _resolve_relative(module, level, target, modules):
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    base = module.split(".")
    if not _is_package(module, modules):
        base = base[:-1]  # a plain module's level 1 is its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module, source, modules):
    """The pn_tf modules that ``module`` (its text ``source``) imports, anywhere in it."""
    edges = set()

    def add(name):
        # The longest prefix of ``name`` that is a module of the package.
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in modules:
                edges.add(candidate)
                return
            parts.pop()

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, node.level, node.module, modules)
            else:
                base = node.module or ""
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base)
    edges.discard(module)
    return edges


def import_graph(modules):
    return {name: imports_of(name, path.read_text(encoding="utf-8"), modules)
            for name, path in modules.items()}


def cycles(graph):
    """The strongly connected components of more than one node, each sorted (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(root):
        # Iterative Tarjan: the package graph is small, but recursion depth is not ours to spend.
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter[0]
                    counter[0] += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _describe(component, graph):
    members = set(component)
    lines = [" <-> ".join(component)]
    for name in component:
        inside = sorted(graph[name] & members)
        lines.append(f"  {name} imports {', '.join(inside)}")
    return "\n".join(lines)


def test_pn_tf_has_no_import_cycle():
    modules = package_modules(pathlib.Path(pn_tf.__file__).parent)
    assert "pn_tf.graph.rules" in modules  # the walk found the package
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "import cycles in pn_tf:\n" + "\n".join(_describe(c, graph) for c in found)


def test_cycle_finder_on_a_tiny_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set(), "f": {"f"}}
    assert cycles(graph) == [["a", "b", "c"]]  # a self-import is no cycle of modules
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert cycles({"x": {"y"}, "y": {"x"}, "p": {"q"}, "q": {"p", "x"}}) == [["p", "q"], ["x", "y"]]


def test_import_edges_in_a_temp_package(tmp_path):
    """Module- and function-level imports, relative ones, and ``from pkg import name``."""
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pn_tf.sub import Thing\n",
        "top.py": "def f():\n    from .sub import helper\n    import pn_tf.other\n",
        "other.py": "import os\nfrom pn_tf import top\n",
        "sub/__init__.py": "from pn_tf.sub.thing import Thing\n",
        "sub/thing.py": "def g():\n    from ..sub import Thing\n    return Thing\n",
        "sub/helper.py": "from . import thing\nfrom .. import lonely_name\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    modules = package_modules(root)
    graph = import_graph(modules)
    assert graph["pn_tf"] == {"pn_tf.sub"}  # Thing is a name in sub's __init__
    assert graph["pn_tf.top"] == {"pn_tf.sub.helper", "pn_tf.other"}  # function-level, relative
    assert graph["pn_tf.other"] == {"pn_tf.top"}
    assert graph["pn_tf.sub"] == {"pn_tf.sub.thing"}
    assert graph["pn_tf.sub.thing"] == {"pn_tf.sub"}  # ..sub from sub/thing.py is pn_tf.sub
    assert graph["pn_tf.sub.helper"] == {"pn_tf.sub.thing", "pn_tf"}
    assert cycles(graph) == [["pn_tf.other", "pn_tf.top"], ["pn_tf.sub", "pn_tf.sub.thing"]]


def test_pn_tf_imports_no_private_keras_module():
    """``keras.src`` is Keras's private layout: pn_tf imports public names only.

    The one exception, pn_tf.graph.rules._register_applications, loads two keras.applications
    layer classes that Keras exports under no public name, by importlib and with a warning
    if they moved; no import statement names ``keras.src``.
    """
    found = []
    for name, path in package_modules(pathlib.Path(pn_tf.__file__).parent).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            found += [f"{name}:{node.lineno} imports {t}" for t in targets
                      if t == "keras.src" or t.startswith("keras.src.")]
    assert not found, "\n".join(found)
