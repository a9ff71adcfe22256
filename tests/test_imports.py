"""The package's import graph has no circles, and its layers point one way: errors, files <- clip, data <-
callbacks <- learners <- cli <- eval (the protocols) <- commands."""

from __future__ import annotations

import ast
from pathlib import Path

import vlprompt

PACKAGE = Path(vlprompt.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every vlprompt module and the vlprompt modules it imports, at module level or inside functions."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlprompt"):
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names if alias.name.startswith("vlprompt")]
            else:
                continue
            for candidate in candidates:
                if candidate in modules:
                    targets.add(candidate)
                    break
        graph[name] = targets - {name}
    return graph


def test_no_import_circles_between_modules():
    graph = import_graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in graph[node]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, f"import circles: {cycles}"


#: Lowest first. ``vlprompt.toy`` (the toy world and its pretraining) builds on the CLIP and data layers and is used by
#: the protocols' toy helpers (``eval/toy.py``); nothing below it imports it.
LAYERS = ["vlprompt.errors", "vlprompt.interrupts", "vlprompt.command_line", "vlprompt.recipes",
          "vlprompt.meta_config", "vlprompt.files", "vlprompt.clip", "vlprompt.data", "vlprompt.toy",
          "vlprompt.callbacks", "vlprompt.learners", "vlprompt.inference", "vlprompt.cli_errors", "vlprompt.cli", "vlprompt.eval",
          "vlprompt.meta_init", "vlprompt.help_cache", "vlprompt.commands"]


def layer(module: str):
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def test_layers_point_one_way():
    """Lower layers never import higher ones (the learners never import the command line; the command line never
    imports the protocols; the CLIP layer never imports the toy world). Only the package's ``__init__`` and
    ``__main__`` and the small modules that sit beside the layers (help texts, meta-init's options) are outside."""
    wrong = sorted(f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                   if layer(module) is not None and layer(target) is not None and layer(target) > layer(module))
    assert not wrong


def test_every_module_is_in_a_layer():
    """The package's own entry points (``vlprompt/__init__.py``, ``__main__.py``) aside, no module escapes the check."""
    outside = sorted(m for m in import_graph() if layer(m) is None and m not in ("vlprompt", "vlprompt.__main__"))
    assert not outside
