"""docs/architecture.md's layer table is true of the code, so that it stays true.

The table lists every module of sideways_tf in a layer; a module imports only
modules of its own layer or of the layers above it. Imports are read from the
source (every `import` and `from ... import`, inside functions too), nothing runs.
"""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sideways_tf")
DOC = os.path.join(ROOT, "docs", "architecture.md")


def modules() -> dict[str, str]:
    """{dotted module name: path} of every .py file of the package."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(module: str, path: str, known) -> set[str]:
    """The package's modules that `module` imports (a name imported from a package
    counts as its submodule when there is one)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != module}


def layers() -> list[list[str]]:
    """The doc's table: per layer (top first), its entries ("topology.py", "data/")."""
    text = open(DOC).read()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "`" in r]
    return [re.findall(r"`([\w/]+(?:\.py|/))`", r.split("|")[2]) for r in rows]


def layer_of(module: str, table) -> int | None:
    relative = module.removeprefix("sideways_tf").lstrip(".").replace(".", "/")
    for index, entries in enumerate(table):
        for entry in entries:
            if entry.endswith("/") and (relative + "/").startswith(entry):
                return index
            if entry == f"{relative}.py" or (entry == "__init__.py" and relative == ""):
                return index
    return None


def test_every_module_is_in_the_layer_table():
    table = layers()
    assert len(table) >= 10
    missing = sorted(m for m in modules() if layer_of(m, table) is None)
    assert not missing, f"add these to docs/architecture.md's layer table: {missing}"


def test_no_module_imports_a_layer_below_its_own():
    table, known = layers(), modules()
    broken = []
    for module, path in known.items():
        own = layer_of(module, table)
        for imported in imports(module, path, known):
            if layer_of(imported, table) > own:
                broken.append(f"{module} ({table[own]}) imports {imported}")
    assert not broken, "\n".join(broken)


def test_the_check_can_fail():
    # A module of the graph layer importing the engine would be reported.
    table = layers()
    assert layer_of("sideways_tf.engine", table) > layer_of("sideways_tf.topology", table)
    assert layer_of("sideways_tf.data.prepare.convert", table) == layer_of(
        "sideways_tf.data", table
    )
