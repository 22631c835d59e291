"""A fake libnvidia-ml.so.1 (fake_nvml.c), how to build it (build.py) and run pynvml code against it (harness.py)."""
