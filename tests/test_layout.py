"""The package is layered: every module imports only from its own layer or the layers below it,
and the import graph has no cycles. The layers, bottom to top, as the README describes them."""

from __future__ import annotations

import ast
from pathlib import Path

import chainrule

ROOT = Path(chainrule.__file__).resolve().parent

LAYERS: list[list[str]] = [
    ["_version", "errors"],
    ["groups", "orderings", "distributions", "text", "io", "contract"],
    ["nn", "data"],
    ["inference"],
    ["models"],
    ["checks", "training", "lm", "latent", "interop"],
    ["apps"],
    ["cli", "__main__"],
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["chainrule", *parts])] = path
    return out


def imports_of(path: Path, module: str) -> set[str]:
    """chainrule modules imported anywhere in the file (functions included), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chainrule"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("chainrule"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if m != "chainrule" and layer(m) is None)
    assert not missing, f"modules outside every layer (add them to LAYERS and the README): {missing}"


def test_no_module_imports_from_a_layer_above_it():
    mods = modules()
    bad = []
    for mod, path in mods.items():
        if mod == "chainrule":
            continue  # the package's lazy re-exports
        for imp in imports_of(path, mod):
            target = imp if imp in mods else imp.rsplit(".", 1)[0]
            if target == "chainrule" or target not in mods:
                if target == "chainrule":
                    bad.append(f"{mod} imports the top-level package chainrule (import the module it needs)")
                continue
            if layer(target) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {target} (layer {layer(target)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))


def test_import_graph_has_no_cycles():
    mods = modules()
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for imp in imports_of(path, mod):
            target = imp if imp in mods else imp.rsplit(".", 1)[0]
            if target in mods and target != mod and target != "chainrule":
                deps.add(target)
        graph[mod] = deps
    # a package's __init__ importing its own submodules is not a cycle through the package
    for mod in graph:
        graph[mod] = {d for d in graph[mod] if not d.startswith(mod + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_check_catches_an_upward_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from chainrule.training import Trainer\n\ndef f():\n    import chainrule.cli\n")
    found = imports_of(path, "chainrule.models.bad")
    assert {"chainrule.training", "chainrule.cli"} <= found
    assert layer("chainrule.training") > layer("chainrule.models.bad")


def test_lazy_names_are_visible_to_type_checkers():
    """``import chainrule`` imports its public names lazily; the TYPE_CHECKING block imports each one
    from the same module, so IDEs and type checkers see them."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom):
                    seen.update({a.name: imp.module for a in imp.names})
    assert seen == chainrule._LAZY
