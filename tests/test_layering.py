"""The library's layering (DESIGN.md §1), checked on the source with `ast` (nothing is imported).

Over every .py file of lepton_ir, passes, targets and lepton, with imports at any level (module level
and inside functions; `if TYPE_CHECKING:` blocks excluded, they never run):

- the module import graph has no cycle (a package `__init__`'s re-exports are edges to the modules it
  imports; `from pkg import name` is an edge to `pkg`, or to `pkg.name` when that is a module; importing
  `a.b.c` runs the packages `a` and `a.b` first, so it is an edge to each of them too, unless the
  importing module is inside it);
- arrows only point down: lepton -> targets -> passes -> lepton_ir, and none of them imports `bench`;
- no module uses another module's private name (`from m import _x`, `m._x`);
- no function-level import of a Lepton module, except the few in ALLOWED_LAZY, which exist to keep the
  importing module from importing a heavy third-party package (TVM, torch, onnxruntime). Each entry is
  checked to still be needed: the imported module pulls in the heavy package when imported, and the
  importing module does not already pull it in at module level.

`__import__("m")` and `importlib.import_module("m")` with a literal name count as imports too.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The library's packages, bottom layer first: a module may import its own layer and the ones below.
LAYERS = ("lepton_ir", "passes", "targets", "lepton")
#: Third-party packages heavy enough to import lazily (seconds of import time, or optional).
HEAVY = {"tvm", "tvm_ffi", "torch", "onnxruntime"}

#: Function-level imports of Lepton modules that are allowed, as (importing module, imported module):
#: each keeps the importing module from importing a heavy package until the function runs. The test
#: checks both halves of that claim, so an entry that stops being needed fails here and must go.
ALLOWED_LAZY: dict[tuple[str, str], str] = {
    # `import lepton` does not import TVM: lepton.compile and lepton.Compiled are looked up when first used.
    ("lepton", "lepton.compiler"): "lepton.compile / lepton.Compiled",
    # The command line starts without TVM (`lepton --help`, optimize, inspect, targets); the commands that
    # build import it when they run.
    ("lepton.cli", "lepton.compiler"): "lepton compile",
    ("lepton.cli", "lepton.bisect"): "lepton bisect, lepton compile --bisect",
    ("lepton.cli_tune", "lepton.tuning"): "lepton tune",
    ("lepton.cli_tune", "lepton.tuning.space"): "lepton tune's progress display",
    # Like `import lepton`: the ONNX backend adapter imports TVM when it compiles (prepare), not when loaded.
    ("lepton.backend", "lepton.compiler"): "LeptonBackend.prepare",
    # `lepton inspect` reports the ops TVM's ONNX frontend cannot take; the rest of the report needs no TVM.
    ("lepton.inspect", "lepton.codegen.frontend"): "inspect_model",
    # A loaded module runs on TVM (the calls that convert sub-byte dtypes import it); lepton.load and
    # importing lepton.module do not.
    ("lepton.module", "lepton.codegen.narrow"): "CompiledModule's sub-byte conversions",
    ("lepton.module", "lepton.codegen.weights"): "CompiledModule: a quantized module's weights, expanded at load",
}

#: Function-level imports that dodge a cycle, whose fix belongs to another change. They are excused
#: from the cycle check and the function-level rule until then; the test fails once one is gone, so
#: the entry is removed with the fix.
PENDING: dict[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # the importing module
    target: str  # the imported module (ours or third-party, dotted)
    line: int
    lazy: bool  # inside a function


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, pathlib.Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


SOURCES = _sources()
MODULES = set(SOURCES)


def _is_package(module: str) -> bool:
    return SOURCES[module].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node with whether it sits in a function, leaving out `if TYPE_CHECKING:` bodies."""
    stack = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        yield node, lazy
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = [node.test, *node.orelse]
        else:
            children = list(ast.iter_child_nodes(node))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in reversed(children))


def _ours(name: str) -> str | None:
    """The longest prefix of dotted `name` that is one of our modules."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def _from_base(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_import(node: ast.Call) -> str | None:
    """The module named by `__import__("m")` or `importlib.import_module("m")`."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


@dataclasses.dataclass
class Parsed:
    imports: list[Import]
    #: (line, text) for each use of another module's private name
    private_uses: list[tuple[int, str]]


def _parse(module: str) -> Parsed:
    tree = ast.parse(SOURCES[module].read_text(), filename=str(SOURCES[module]))
    imports: list[Import] = []
    private: list[tuple[int, str]] = []
    bound: dict[str, str] = {}  # local name -> our module it is bound to (per file, any scope)
    nodes = list(_runtime_nodes(tree))

    def own(target: str) -> bool:
        return target == module

    for node, lazy in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(Import(module, alias.name, node.lineno, lazy))
                if alias.asname:
                    if _ours(alias.name) == alias.name:
                        bound[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    if top in MODULES:
                        bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # `from pkg import module`
                    imports.append(Import(module, sub, node.lineno, lazy))
                    bound[alias.asname or alias.name] = sub
                    if _private(alias.name) and not module.startswith(base + ".") and module != base:
                        private.append((node.lineno, f"from {base} import {alias.name}"))
                else:
                    imports.append(Import(module, base, node.lineno, lazy))
                    if _private(alias.name) and base in MODULES and not own(base):
                        private.append((node.lineno, f"from {base} import {alias.name}"))
        elif isinstance(node, ast.Call) and (name := _literal_import(node)):
            imports.append(Import(module, name, node.lineno, lazy))

    for node, _ in nodes:
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = _resolve(node.value, bound)
            if owner is not None and not own(owner):
                private.append((node.lineno, f"{owner}.{node.attr}"))
    return Parsed(imports, private)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(expr: ast.expr, bound: dict[str, str]) -> str | None:
    """The module a `name.attr.attr` expression stands for, if it is one of ours."""
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute):
        owner = _resolve(expr.value, bound)
        if owner is not None and f"{owner}.{expr.attr}" in MODULES:
            return f"{owner}.{expr.attr}"
    return None


PARSED = {module: _parse(module) for module in sorted(MODULES)}


def _edges(include_pending: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (module level or in a function)."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, parsed in PARSED.items():
        for imp in parsed.imports:
            target = _ours(imp.target)
            if target is None or target == module:
                continue
            if not include_pending and imp.lazy and (module, target) in PENDING:
                continue
            graph[module].add(target)
            # Importing a.b.c first runs a and a.b: an edge to each of them that is not already running
            # as a package of the importing module (which Python imports before the module itself).
            parts = target.split(".")
            graph[module].update(
                package for package in (".".join(parts[:n]) for n in range(1, len(parts)))
                if package != module and not module.startswith(package + ".")
            )
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], set[str]]]:
    """The strongly connected components of more than one module (Tarjan), each with one concrete cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_one_cycle(graph, component), component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle in component {sorted(component)}")


def _loads(module: str) -> set[str]:
    """The modules of ours that importing `module` runs: itself, its parent packages, and what they
    import at module level, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo.extend(".".join(parts[:n]) for n in range(1, len(parts)))
        for imp in PARSED[m].imports:
            target = _ours(imp.target)
            if target is not None and not imp.lazy:
                todo.append(target)
    return seen


def _heavy(module: str) -> set[str]:
    """The heavy third-party packages that importing `module` imports."""
    return {
        imp.target.partition(".")[0]
        for m in _loads(module)
        for imp in PARSED[m].imports
        if not imp.lazy and imp.target.partition(".")[0] in HEAVY
    }


def _lazy_imports() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for module, parsed in PARSED.items():
        for imp in parsed.imports:
            target = _ours(imp.target)
            if imp.lazy and target is not None:
                found.setdefault((module, target), []).append(imp.line)
    return found


def _where(module: str, line: int) -> str:
    return f"{SOURCES[module].relative_to(ROOT)}:{line}"


def test_the_packages_are_found() -> None:
    assert {"lepton_ir.core", "passes.base", "targets.loader", "lepton.compiler"} <= MODULES


def test_no_import_cycles() -> None:
    cycles = _cycles(_edges())
    assert not cycles, "import cycles (each with the modules of its strongly connected component):\n" + "\n".join(
        f"{' -> '.join(cycle)}\n    (all of: {', '.join(sorted(component))})" for cycle, component in cycles
    )


def test_arrows_only_point_down() -> None:
    wrong = []
    for module, parsed in PARSED.items():
        layer = LAYERS.index(module.partition(".")[0])
        for imp in parsed.imports:
            top = imp.target.partition(".")[0]
            if top == "bench" or (top in LAYERS and LAYERS.index(top) > layer):
                wrong.append(f"{_where(module, imp.line)}: {module} imports {imp.target}")
    assert not wrong, "imports against the layering (lepton -> targets -> passes -> lepton_ir):\n" + "\n".join(wrong)


def test_no_private_names_of_other_modules() -> None:
    wrong = [
        f"{_where(module, line)}: {text}" for module, parsed in PARSED.items() for line, text in parsed.private_uses
    ]
    assert not wrong, "uses of another module's private name (make the helper public):\n" + "\n".join(wrong)


def test_function_level_imports_are_only_for_heavy_dependencies() -> None:
    lazy = _lazy_imports()
    wrong = [
        f"{_where(module, lines[0])}: {module} imports {target} inside a function"
        for (module, target), lines in sorted(lazy.items())
        if (module, target) not in ALLOWED_LAZY and (module, target) not in PENDING
    ]
    assert not wrong, "function-level imports of Lepton modules (move them to module level):\n" + "\n".join(wrong)


def test_allowed_lazy_imports_are_still_needed() -> None:
    lazy = _lazy_imports()
    stale = [f"{pair}: no longer in the tree" for pair in [*ALLOWED_LAZY, *PENDING] if pair not in lazy]
    for module, target in ALLOWED_LAZY:
        spared = _heavy(target) - _heavy(module)
        if not spared:
            stale.append(
                f"{module} -> {target}: importing {target} pulls in {sorted(_heavy(target)) or 'nothing heavy'}, "
                f"which {module} already imports at module level ({sorted(_heavy(module))})"
            )
    assert not stale, "allow-list entries that are no longer needed:\n" + "\n".join(stale)


def test_the_cycle_finder_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [(["a", "b", "c", "a"], {"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []
