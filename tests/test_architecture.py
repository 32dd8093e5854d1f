"""The package's shape: wings that read as the data path, imports that run one way, small units.

Read by walking `src/anoclip` with `ast` (nothing is imported), so a violation anywhere, a
lazy import inside a function included, fails here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "anoclip"
MAX_UNIT_LINES = 120

# Bottom to top: a module may import its own layer and the layers below it, never above.
BASE = {"errors", "settings", "records", "threshold", "extras", "notes"}
FACADE = {"pipeline", "detector", "testing"}
LAYERS = (
    "base", "data", "clip", "references", "decide", "results", "facade", "evaluation",
    "deploy", "inline", "cli",
)  # fmt: skip
EXEMPT = {"anoclip", "anoclip.__main__"}  # the public names' lazy map; `python -m anoclip`
STANDALONE = "anoclip.data.standalone"  # copied beside an exported file: imports no anoclip


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> str:
    """The layer of `anoclip.x` (base / facade) or `anoclip.<wing>.y` (the wing)."""
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in BASE:
        return "base"
    if len(parts) == 2 and parts[1] in FACADE:
        return "facade"
    assert len(parts) >= 2 and parts[1] in LAYERS, f"{module}: in no layer; add it to LAYERS"
    return parts[1]


def anoclip_imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of anoclip in the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("anoclip")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == "anoclip" or target.startswith("anoclip."):
                # `from anoclip.wing import module` imports that module
                subs = [f"{target}.{a.name}" for a in node.names if a.name != "__version__"]
                known = modules()
                found += [(node.lineno, s if s in known else target) for s in subs]
    return found


def test_imports_run_one_way():
    bad = []
    for name, path in modules().items():
        if name in EXEMPT:
            continue
        mine = LAYERS.index(layer(name))
        for line, target in anoclip_imports(name, path):
            if name == STANDALONE:
                bad.append(f"{path.name}:{line}: imports {target} (must stand alone)")
            elif target == "anoclip":
                bad.append(f"{name}:{line}: imports the package facade `anoclip`")
            elif LAYERS.index(layer(target)) > mine:
                bad.append(
                    f"{name}:{line}: imports {target} ({layer(target)} is above {layer(name)})"
                )
    assert not bad, "imports that run up between wings:\n" + "\n".join(bad)


def test_no_unit_over_120_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                size = node.end_lineno - start + 1
                if size > MAX_UNIT_LINES:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, f"units over {MAX_UNIT_LINES} lines:\n" + "\n".join(long)


def test_no_two_modules_share_a_stem():
    """encode / encoder, engine / engine_helper: a stem plus a suffix blurs the seam."""
    stems = {}
    for name, path in modules().items():
        if path.name != "__init__.py" and name not in EXEMPT:
            stems.setdefault(path.stem, []).append(name)
    clashes = [f"{a}: {stems[a]}" for a in stems if len(stems[a]) > 1]
    clashes += [
        f"{stems[a]} / {stems[b]}" for a in stems for b in stems if a != b and b.startswith(a)
    ]
    assert not clashes, "modules whose names differ only by a suffix:\n" + "\n".join(clashes)


@pytest.mark.parametrize("wing", [w for w in LAYERS if w not in ("base", "facade")])
def test_each_wing_says_what_it_is_for(wing):
    init = PACKAGE / wing / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and "May import" in doc, f"{wing}/__init__.py: a docstring saying what it may use"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a data module importing clip is caught."""
    fake = tmp_path / "anoclip" / "data" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from anoclip.clip.text import TextCache\n")
    [(line, target)] = anoclip_imports("anoclip.data.x", fake)
    assert line == 2 and layer(target) == "clip"
    assert LAYERS.index(layer(target)) > LAYERS.index(layer("anoclip.data.x"))
