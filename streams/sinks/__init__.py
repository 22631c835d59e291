"""Sinks: where results leave Kafka. One module per sink, registered by name (see base.py)."""
