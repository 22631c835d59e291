"""powerplane: the power and thermal control plane for AI datacenters (shared domain package)."""

__version__ = "0.1.0"
