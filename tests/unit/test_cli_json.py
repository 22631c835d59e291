"""`-o json` on the commands a script drives offline (evaluate, plan): one JSON document on stdout and nothing
else there (progress goes to stderr), with the figures the table shows, units in the key names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ops.cli import main

ROOT = Path(__file__).resolve().parents[2]
LAB = str(ROOT / "examples" / "lab.toml")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("PP_"):
            monkeypatch.delenv(k)


def test_evaluate_json_is_the_metrics_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["evaluate", "--site", LAB, "--policy", "none,polca", "--duration", "20", "--out", str(tmp_path),
               "-o", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)  # stdout is exactly one JSON document
    assert doc == {**json.loads((tmp_path / "metrics.json").read_text()), "report_path": doc["report_path"],
                   "metrics_path": str(tmp_path / "metrics.json")}
    assert Path(doc["report_path"]).exists()
    assert "NaN" not in out and "Infinity" not in out  # strict JSON: unknowns are null


def test_plan_json_is_the_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["plan", "--site", LAB, "--simulate-minutes", "1", "--kinds", "ups,utility", "-o", "json",
               "--json", str(tmp_path / "plan.json")])
    cap = capsys.readouterr()
    assert rc == 0
    doc = json.loads(cap.out)
    assert doc == json.loads((tmp_path / "plan.json").read_text(), parse_constant=lambda _: None)
    assert "wrote" in cap.err and "wrote" not in cap.out  # the file note goes to stderr, not into the JSON
