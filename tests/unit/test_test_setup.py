"""`make test` sets itself up: the Debian packages its tests run are installed first (or it says, in one
line, what to install by hand), and no test skips when a server or program is missing: it fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure-debian-packages"


def test_make_test_installs_the_packages_before_anything_runs() -> None:
    # Run as its own make, not a sub-make of the `make test` that may be running this (CI): no directory lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env=env).stdout
    lines = out.splitlines()
    assert lines[0] == "scripts/ensure-debian-packages", lines[:3]
    assert any(re.search(r"pytest( |$)", ln) for ln in lines)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "apt-get" not in (ROOT / ".ci" / "run").read_text(), ".ci/run installs through make test, once"


def test_with_everything_installed_it_does_nothing_quietly() -> None:
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_without_root_or_sudo_it_names_what_to_install_in_one_line(tmp_path: Path) -> None:
    # A PATH with bash and a fake `id` (uid 1000) and nothing else: no sudo, none of the programs.
    for tool in ("bash", "env"):
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", tmp_path / tool)
    (tmp_path / "id").write_text("#!/bin/sh\necho 1000\n")
    (tmp_path / "id").chmod(0o755)
    res = subprocess.run([str(tmp_path / "bash"), str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={"PATH": str(tmp_path)}, stdin=subprocess.DEVNULL)
    assert res.returncode == 1 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert "cannot install packages (not root, no sudo)" in line
    by_hand = line.split("sudo apt-get install -y --no-install-recommends ", 1)[1].split()
    assert {"victoria-metrics", "prometheus", "chromium", "gcc", "openssl"} <= set(by_hand), line


def test_no_test_skips_on_a_missing_server_or_program() -> None:
    pattern = re.compile(r"pytest\.skip\(|\.skipif\(|importorskip\(|mark\.skip\b")
    found = [f"{p.relative_to(ROOT)}:{n}: {ln.strip()}" for p in sorted((ROOT / "tests").rglob("*.py"))
             for n, ln in enumerate(p.read_text().splitlines(), 1) if pattern.search(ln) and p != Path(__file__)]
    assert found == [], "a test whose server cannot be had must fail, not skip:\n" + "\n".join(found)
