"""Actuators: one package per kind, registered by name (see base.py)."""
