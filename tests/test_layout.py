"""The package's layout: no import cycles (module-level or deferred), one list of modes."""

import ast
import pathlib

import jacsens
from jacsens._modes import MODE_NAMES, MODES

PACKAGE = pathlib.Path(jacsens.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, name: str) -> set[str]:
    """Modules of the package that `path` imports anywhere (except under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node):
            if node.level:
                target = base[: len(base) - node.level + 1]
                mod = ".".join(target + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("jacsens"):
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    found.add(sub if _exists(sub) else mod)

        def visit_Import(self, node):
            found.update(a.name for a in node.names if a.name.startswith("jacsens"))

    Visitor().visit(tree)
    found.discard(name)
    return found


def _exists(mod: str) -> bool:
    path = PACKAGE.parent / pathlib.Path(*mod.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_no_import_cycles():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path, name) if m != "jacsens"}
    # a package's __init__ re-exports its modules: importing a module runs it first
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modes_listed_once():
    assert MODE_NAMES == ("auto", *MODES)
    assert set(MODES) == {"rev", "fwd", "chain", "backprop", "segments"}
    for name, cls in MODES.items():
        assert cls.name == name
    # no other module spells out the list of modes
    needle = '"rev", "fwd", "chain"'
    offenders = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if needle in p.read_text()
    ]
    assert offenders == []
