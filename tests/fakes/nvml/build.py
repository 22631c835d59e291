"""Compile the fake NVML library (fake_nvml.c) into a directory as libnvidia-ml.so.1.

pynvml loads the driver's library with ctypes.CDLL("libnvidia-ml.so.1"), a bare name, so the dynamic
loader searches LD_LIBRARY_PATH, which it reads once at process start: code under test runs in a child
process whose LD_LIBRARY_PATH names the directory `build` returns (see harness.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIB_NAME = "libnvidia-ml.so.1"
CFLAGS = ["-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
          f"-Wl,-soname,{LIB_NAME}"]
# Variants: extra -D flags, e.g. a driver older than R535 without nvmlDeviceGetCurrentClocksEventReasons.
VARIANTS: dict[str, list[str]] = {
    "": [],
    "pre-r535": ["-DFAKE_NVML_NO_CLOCKS_EVENT_REASONS"],
}


class BuildError(RuntimeError):
    pass


def compiler() -> str | None:
    """The C compiler to use ($CC, else gcc), or None when there is none."""
    cc = os.environ.get("CC") or "gcc"
    return shutil.which(cc)


def build(cache_dir: Path, variant: str = "") -> Path:
    """Compile (once per source, flags and variant) and return the directory holding libnvidia-ml.so.1."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler (gcc, or $CC) on PATH to build the fake NVML library: apt-get install gcc "
                         "(`make test` does: scripts/ensure-debian-packages)")
    flags = [*CFLAGS, *VARIANTS[variant]]
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join([cc, *flags]).encode()).hexdigest()[:16]
    out_dir = cache_dir / f"{variant or 'default'}-{key}"
    lib = out_dir / LIB_NAME
    if lib.exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{LIB_NAME}.{os.getpid()}"
    proc = subprocess.run([cc, *flags, "-o", str(tmp), str(SOURCE), "-lpthread"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{cc} failed ({proc.returncode}):\n{proc.stderr}")
    os.replace(tmp, lib)  # atomic: a parallel build of the same key just overwrites with the same bytes
    return out_dir
