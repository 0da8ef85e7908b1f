"""The engine stays independent of its faces: core/ imports nothing from cli/, service/, web/ or settings."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "src" / "kontext_studio" / "core"
FORBIDDEN = ("kontext_studio.cli", "kontext_studio.service", "kontext_studio.web", "kontext_studio.settings",
             "kontext_studio.bootstrap")


def test_core_imports_no_face_and_reads_no_environment() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
            if isinstance(node, ast.Attribute) and node.attr == "environ":
                offenders.append(f"{path.name}: reads os.environ")
    assert offenders == []
