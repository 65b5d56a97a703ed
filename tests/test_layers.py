"""The package's layers: data flows one way, and no module imports one above it (ARCHITECTURE: a
lower layer never imports a higher one), so the package has no import cycle.

Only module-level imports count (an import inside a function is a deliberate late binding, e.g. the
command line importing a command's module when it runs); ``if TYPE_CHECKING:`` imports do not run.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "softdistill"

#: the layers, lowest first; a module may import its own layer and those below
LAYERS = [
    {"types", "hashing", "atomic", "locking", "registry", "schema", "enums", "runtime"},
    {"models", "losses", "isotonic", "metrics", "sharded", "checkpoint", "compatibility"},
    {"data", "store"},
    {"engine", "augment"},
    {"soft_labels", "methods", "vae_training"},
    {"config"},
    {"build", "labelling", "runs", "artifacts"},
    {"runner", "evaluation"},
    {"selftrain", "experiments", "report"},
    {"cli", "__main__"},
]
LAYER = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("softdistill", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str:
    """The module an imported dotted name lives in (a name imported from a module is not a module)."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path) -> set[str]:
    """The softdistill modules ``path`` imports at module level."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for item in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(item, ast.ImportFrom) and item.module and item.module.split(".")[0] == "softdistill":
                found |= {_target(f"{item.module}.{alias.name}") for alias in item.names}
            elif isinstance(item, ast.Import):
                found |= {_target(a.name) for a in item.names if a.name.split(".")[0] == "softdistill"}
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    assert {_part(m) for m in MODULES} - {""} <= set(LAYER)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m)))
def test_no_module_imports_a_layer_above_its_own(module):
    above = sorted(m for m in GRAPH[module] if _part(m) and LAYER[_part(m)] > LAYER[_part(module)])
    assert not above, f"{module} (layer {LAYER[_part(module)]}) imports {above} from higher layers"


def test_the_package_has_no_import_cycle():
    def children(module: str) -> set[str]:  # a package imports its own modules by design: not a cycle
        return {m for m in GRAPH[module] if not m.startswith(module + ".")}

    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(children(module)):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
