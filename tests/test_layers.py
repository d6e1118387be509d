"""The package's imports point down the layers of DESIGN.md, and no modules import each other.

Layers, lowest first: _util (and errors) -> latents -> models -> policies -> views -> store -> data
-> analysis | train -> cli. A module may import its own layer's package and any lower layer; an
import of a higher layer, of a sibling at the same height (analysis <-> train) or a cycle between
modules fails here. Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(importlib.util.find_spec("synthviews").origin).parent

RANKS = {"_util": 0, "latents": 1, "models": 2, "policies": 3, "views": 4, "store": 5, "data": 6,
         "analysis": 7, "train": 7, "cli": 8}
FACADES = {"synthviews", "synthviews.__main__"}  # the package front door and `python -m`: above every layer


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every synthviews module ``name`` imports (a ``from pkg import sub`` names the module ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {m for m in found if m in known and m != name}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if module == "synthviews.errors":  # the one exception type: public at the top, a helper by layer
        return "_util"
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def problems(root: Path) -> list[str]:
    found = modules(root)
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    out = [f"{name}: belongs to no layer (add it to a layer package)" for name in graph
           if name not in FACADES and layer(name) is None]
    for name, targets in sorted(graph.items()):
        here = layer(name)
        if here is None:
            continue
        for target in sorted(targets):
            there = layer(target)
            if target in FACADES:
                if here != "cli":  # the CLI, at the top, may read the package's __version__
                    out.append(f"{name} imports the package facade {target}")
            elif there is not None and there != here and RANKS[there] >= RANKS[here]:
                kind = "upward" if RANKS[there] > RANKS[here] else "sideways"
                out.append(f"{name} ({here}) imports {target} ({there}): {kind}")
    out.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (depth-first search, iterative)."""
    seen, done, found = set(), set(), []
    for start in sorted(graph):
        if start in seen:
            continue
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        seen.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                done.add(node)
            elif child in path:
                found.append(path[path.index(child):] + [child])
            elif child not in seen:
                seen.add(child)
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return found


def test_imports_point_down_the_layers_and_form_no_cycle():
    assert problems(PACKAGE) == []


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "synthviews" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "synthviews"


BASE = {"__init__.py": "", "_util/__init__.py": "", "_util/files.py": "", "models/__init__.py": "",
        "models/base.py": "from .._util import files\n", "policies/__init__.py": "from ..models import base\n"}


@pytest.mark.parametrize("extra, expected", [
    ({"policies/walker.py": "def f():\n    from ..analysis import train\n", "analysis/__init__.py": "",
      "analysis/train.py": ""}, "synthviews.policies.walker (policies) imports synthviews.analysis.train (analysis): upward"),
    ({"analysis/__init__.py": "from ..train import gan\n", "train/__init__.py": "", "train/gan.py": ""},
     "synthviews.analysis (analysis) imports synthviews.train.gan (train): sideways"),
    ({"models/toy.py": "from . import base\nfrom .stylegan import x\n", "models/stylegan.py": "from .toy import y\n"},
     "import cycle: synthviews.models.stylegan -> synthviews.models.toy -> synthviews.models.stylegan"),
    ({"models/toy.py": "import synthviews\n"}, "synthviews.models.toy imports the package facade synthviews"),
    ({"writer.py": ""}, "synthviews.writer: belongs to no layer (add it to a layer package)"),
])
def test_the_check_finds_upward_sideways_and_circular_imports(tmp_path, extra, expected):
    assert problems(write(tmp_path, BASE)) == []
    assert expected in problems(write(tmp_path, {**BASE, **extra}))
