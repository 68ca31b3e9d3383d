"""Imports run one way: the library never imports the trainer, the experiment runners or the CLI.

The library is every module of ``itmatch`` outside ``training/``, ``experiments/``,
``commands/``, ``cli.py`` and ``__main__.py``. The check reads the source (``ast``), so an import
inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import itmatch

UPPER_LAYERS = ("itmatch.training", "itmatch.experiments", "itmatch.commands", "itmatch.cli")
ENTRY_POINTS = ("itmatch.__main__",)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Every module ``node`` may import, relative imports resolved (``from x import y``: x and x.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def layer_violations(package_dir: Path) -> list[str]:
    """``"path:line: module imports target"`` for each library module importing an upper layer."""
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        module = module_name(path, package_dir)
        if _in(module, UPPER_LAYERS + ENTRY_POINTS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            bad = [t for t in imported_names(node, module, path.name == "__init__.py") if _in(t, UPPER_LAYERS)]
            if bad:
                out.append(f"{path.relative_to(package_dir.parent)}:{node.lineno}: {module} imports {bad[0]}")
    return out


def test_the_library_never_imports_training_experiments_or_the_cli() -> None:
    package_dir = Path(itmatch.__file__).parent
    assert (package_dir / "inference.py").is_file() and (package_dir / "training").is_dir()  # walked the real tree
    violations = layer_violations(package_dir)
    assert not violations, "library modules import an upper layer:\n" + "\n".join(violations)


def test_the_check_names_each_offending_module_and_line(tmp_path: Path) -> None:
    """A deliberately bad package: the check must catch top-level, function-level, relative and
    ``from itmatch import ...`` imports, and leave the upper layers free to import the library."""
    pkg = tmp_path / "itmatch"
    files = {
        "__init__.py": "",
        "inference.py": "import torch\n\nfrom itmatch.training.checkpoint import load_checkpoint\n",
        "retrieval/__init__.py": "",
        "retrieval/index.py": textwrap.dedent(
            """\
            def build():
                from ..experiments import demo
                return demo
            """
        ),
        "evaluation/__init__.py": "from itmatch import cli\n",
        "data/__init__.py": "from . import readers\nfrom itmatch.data.readers import load\n",
        "data/readers.py": "def load():\n    import itmatch.commands.evaluate\n",
        "training/__init__.py": "",
        "training/trainer.py": "from itmatch.inference import Matcher\nfrom itmatch.experiments import compare\n",
        "experiments/__init__.py": "from itmatch.training import trainer\n",
        "__main__.py": "from itmatch.cli import main\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    assert layer_violations(pkg) == [
        "itmatch/data/readers.py:2: itmatch.data.readers imports itmatch.commands.evaluate",
        "itmatch/evaluation/__init__.py:1: itmatch.evaluation imports itmatch.cli",
        "itmatch/inference.py:3: itmatch.inference imports itmatch.training.checkpoint",
        "itmatch/retrieval/index.py:2: itmatch.retrieval.index imports itmatch.experiments",
    ]
