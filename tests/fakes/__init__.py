"""Fakes that stand in for hardware the test machines do not have, below the vendor library boundary."""
