"""The house rules a reader of the code relies on (DEVELOPERS.md, docs/architecture.md): short functions,
modules that say why when they are long, and plug-ins that are found, match their kind, and carry their
README and sample config. The layer rule itself is import-linter's contract, run by `make lint`."""

from __future__ import annotations

import ast
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["powerplane", "collectors", "streams", "controllers", "actuators", "sim", "dashboards", "ops"]
MAX_FUNCTION_LINES = 80  # not counting the docstring
MAX_MODULE_LINES = 500  # unless its docstring says why ("... long because ...")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    start = node.body[1].lineno if doc and len(node.body) > 1 else node.lineno
    return (node.end_lineno or node.lineno) - start + 1


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {_body_lines(node)} lines")
    assert not long, "functions over 80 lines (split them into named steps):\n" + "\n".join(long)


def test_long_modules_say_why() -> None:
    silent = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "long because" not in doc.lower():
                silent.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not silent, "modules over 500 lines whose docstring does not say why ('... long because ...'):\n" + \
        "\n".join(silent)


@pytest.mark.parametrize("group", ["collectors", "sinks", "actuators"])
def test_every_plugin_loads_as_its_kind_with_readme_and_sample(group: str) -> None:
    from powerplane.plugins import Registry

    points = list(entry_points(group=f"powerplane.{group}"))
    assert points, f"no powerplane.{group} entry points: is the package installed (pip install -e .)?"
    reg: Registry[type] = Registry(group, group)
    for ep in points:
        cls = reg.get(ep.name)
        assert cls.kind == ep.name
        folder = Path(__import__(cls.__module__, fromlist=["_"]).__file__ or "").parent
        assert (folder / "README.md").is_file(), f"{ep.name}: no README.md beside {folder}"
        sample = tomllib.loads((folder / "sample.toml").read_text())
        kinds = [t.get("kind") for section in sample.values() if isinstance(section, dict)
                 for t in section.values() if isinstance(t, dict)]
        assert ep.name in kinds, f"{ep.name}: {folder}/sample.toml has no table of kind '{ep.name}'"


def test_unknown_plugin_kind_names_the_known_ones() -> None:
    from actuators.base import load_actuator

    known = r"\(known: nvml, redfish, twin\)"
    with pytest.raises(ValueError, match=rf"actuators.gpus.kind: unknown actuator kind 'nvmll' {known}"):
        load_actuator("gpus", {"kind": "nvmll"})
