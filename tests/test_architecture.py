"""The project's structural rules, checked on every run: thin tasks, library modules of a readable size.
(The import layering — app > flows > tasks > kdflow, no Prefect in kdflow — is import-linter's, in `make lint`.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_TASK_LINES = 40
MAX_LIBRARY_MODULE_LINES = 600


def _tasks() -> list[tuple[str, str, int]]:
    """(file, task name, lines from its first decorator to its last line) for every task in tasks/."""
    found = []
    for path in sorted((REPO / "tasks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any("task" in ast.unparse(d) for d in node.decorator_list):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                found.append((path.name, node.name, node.end_lineno - start + 1))
    return found


def test_every_task_fits_on_one_screen():
    tasks = _tasks()
    assert len(tasks) > 20  # the parser finds the tasks at all
    long = [t for t in tasks if t[2] > MAX_TASK_LINES]
    assert not long, f"tasks longer than {MAX_TASK_LINES} lines (move the logic into kdflow/): {long}"


@pytest.mark.parametrize("path", sorted((REPO / "kdflow").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_library_module_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LIBRARY_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines: split it along its concepts"
