"""SNMP rack PDU collector, kind "snmp" (see README.md beside this file)."""

from collectors.snmp.source import SnmpSource

__all__ = ["SnmpSource"]
