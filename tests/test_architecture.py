"""The shape of the tree: layers import downwards only, each word of the domain is spelled in one module, and
no module grows past a size a reader can hold.

These read the source, not the behaviour: they fail when a later change copies a trading state into a page or
lets the logic layer import an edge again.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "logic", "notifications", "dashboard")
SCRIPTS = ("warmup.py", "launcher.py")

FORBIDDEN_IMPORTS = {
    "engine": {"logic", "notifications", "dashboard"},
    "logic": {"notifications", "dashboard"},
    "notifications": {"dashboard"},
    "dashboard": {"notifications"},
}
"""engine at the bottom, logic over it; notifications and the dashboard are two edges on top of logic that
know nothing of each other: the alert engine writes the outbox through the store, the delivery daemon reads it."""

VOCABULARY_HOME = "engine/records.py"
VOCABULARY = (
    # trading states
    "ACTIVE",
    "REDUCING",
    "HALTED",
    # severities
    "LOW",
    "MEDIUM",
    "HIGH",
    "CRITICAL",
    # alert statuses
    "TRIGGERED",
    "ACKNOWLEDGED",
    "RESOLVED",
    # decision and execution statuses
    "APPROVED",
    "REJECTED",
    "FILLED",
    "UNKNOWN",
)

MAX_LINES = 800
LARGE_BY_DESIGN = {"engine/math_logic.py"}
"""The pure kernel holds the formulas of SPEC.md section 3 with their docstrings; it may be longer."""


def source_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return sorted(files + [ROOT / s for s in SCRIPTS])


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_each_layer_imports_only_layers_below_it(package: str) -> None:
    offenders = {
        rel(path): sorted(imported_packages(path) & FORBIDDEN_IMPORTS[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_trading_states_severities_and_statuses_are_spelled_only_in_the_records_module() -> None:
    words = set(VOCABULARY)
    offenders = [
        f"{rel(path)}:{line}: {value!r}"
        for path in source_files()
        if rel(path) != VOCABULARY_HOME
        for line, value in string_literals(path)
        if value in words
    ]
    assert offenders == []


def test_the_records_module_defines_every_word_of_the_vocabulary() -> None:
    from engine import records

    enums = (
        records.TradingState,
        records.Severity,
        records.AlertStatus,
        records.DecisionStatus,
        records.ExecutionStatus,
    )
    spelled = {m.value for enum in enums for m in enum}
    assert spelled == set(VOCABULARY)


def test_the_clock_type_is_defined_once() -> None:
    pattern = re.compile(r"^Clock\s*=", re.MULTILINE)
    homes = [rel(p) for p in source_files() if pattern.search(p.read_text())]
    assert homes == [VOCABULARY_HOME]


def test_no_module_outside_the_math_kernel_exceeds_the_size_limit() -> None:
    sizes = {rel(p): len(p.read_text().splitlines()) for p in source_files()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in LARGE_BY_DESIGN}
    assert too_long == {}
