"""The package's house rules (docs/architecture.md): imports point one way, down the layers;
no folder holds more than about ten modules; no module over 300 lines; no import inside a
function (the way a cycle is dodged)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spp_det"
# lower index = lower layer; a module may import only from its own layer or below
LAYERS = [
    {"errors", "files", "boxes", "distributed"},
    {"data", "proposals", "models", "visualize"},
    {"inference", "evaluation"},
    {"paper_stages"},
    {"training"},
    {"jobs"},
]
# inside a layer, imports between these top-level parts point this way only
SAME_LAYER_ORDER = [("errors", "files"), ("errors", "boxes"), ("files", "boxes"), ("errors", "distributed"),
                    ("boxes", "data"), ("boxes", "proposals"), ("boxes", "models"), ("data", "proposals"),
                    ("boxes", "visualize")]


def layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def top_part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""


def imported_parts(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level part of spp_det imported, line, inside a function) for every import."""
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(PACKAGE).parent.parts
    out = []
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in funcs for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[:len(pkg) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from . import x" at the package root
                    target = [node.names[0].name]
            elif node.module and node.module.startswith("spp_det."):
                target = node.module.split(".")[1:]
            else:
                continue
            out.append((target[0], node.lineno, id(node) in nested))
    return out


def test_imports_point_down_the_layers():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        me = top_part(path)
        if not me:
            continue
        for part, line, _ in imported_parts(path):
            if part == me:
                continue
            if layer(part) > layer(me) or (layer(part) == layer(me) and (part, me) not in SAME_LAYER_ORDER):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {part}")
    assert not bad, bad


def test_no_import_inside_a_function_of_the_package():
    bad = [f"{p.relative_to(PACKAGE)}:{line}" for p in PACKAGE.rglob("*.py")
           for _, line, inside in imported_parts(p) if inside]
    assert not bad, bad


def test_small_folders_and_modules():
    for folder in [PACKAGE, *[d for d in PACKAGE.iterdir() if d.is_dir() and d.name != "__pycache__"]]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 11, (folder, len(modules))
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long
