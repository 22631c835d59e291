"""Where a telemetry frame's GPUs are in its rack: (gpu_server, gpu_slot) pairs -> the rack's GPU positions.

A frame names each GPU by its server within the rack and its slot within the server. The simulated fleet sends
every GPU of a rack in the site model's order (a "whole-rack" frame); the real collectors send a part of it
(NVML, DCGM: one server; Redfish: server power; SNMP: none). The plausibility check, the per-rack assembly and
the controller all map the pairs through this table. Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from powerplane.site import IntArray, Site

U16 = npt.NDArray[np.uint16]


class RackLayout:
    """Per rack: a (servers x slots) table of GPU positions within the rack (-1: no such GPU), and the site
    order of its (server, slot) pairs, which a whole-rack frame carries as they are."""

    def __init__(self, site: Site) -> None:
        self.site = site
        gs, ss = site.rack_gpu_start, site.rack_server_start
        self.n_gpus = np.diff(gs).astype(np.int64)
        self.n_servers = np.diff(ss).astype(np.int64)
        local_server = site.gpu_server - ss[site.gpu_rack]
        self.server_of = local_server.astype(np.uint16)  # per site GPU: its server within the rack
        self.slot_of = site.gpu_slot.astype(np.uint16)
        self.table: list[IntArray] = []
        for r in range(site.n_racks):
            srv, slot = local_server[gs[r]:gs[r + 1]], site.gpu_slot[gs[r]:gs[r + 1]]
            t = np.full((int(self.n_servers[r]), int(slot.max()) + 1 if slot.size else 1), -1, dtype=np.int64)
            t[srv, slot] = np.arange(srv.size)
            self.table.append(t)

    def canonical(self, r: int, gpu_server: U16, gpu_slot: U16) -> bool:
        """The frame carries every GPU of rack r in the site model's order (a whole-rack frame)."""
        g0, g1 = int(self.site.rack_gpu_start[r]), int(self.site.rack_gpu_start[r + 1])
        return (gpu_server.size == g1 - g0 and np.array_equal(gpu_server, self.server_of[g0:g1])
                and np.array_equal(gpu_slot, self.slot_of[g0:g1]))

    def locate(self, r: int, gpu_server: U16, gpu_slot: U16) -> tuple[IntArray, str]:
        """(each GPU's position within rack r, "") or (empty, the reason a pair is not a GPU of the rack or is
        there twice)."""
        t = self.table[r]
        srv, slot = gpu_server.astype(np.int64), gpu_slot.astype(np.int64)
        bad = (srv >= t.shape[0]) | (slot >= t.shape[1])
        pos = np.full(srv.size, -1, dtype=np.int64)
        ok = ~bad
        pos[ok] = t[srv[ok], slot[ok]]
        if (pos < 0).any():
            i = int(np.flatnonzero(pos < 0)[0])
            s = int(srv[i])
            why = f"{t.shape[0]} servers" if s >= t.shape[0] else f"server {s} has {int((t[s] >= 0).sum())} GPUs"
            return pos[:0], f"GPU (server {s}, slot {int(slot[i])}) not in {self.site.rack_ids[r]} ({why})"
        if np.unique(pos).size != pos.size:
            _, first = np.unique(pos, return_index=True)
            i = int(np.setdiff1d(np.arange(pos.size), first)[0])
            return pos[:0], f"GPU (server {int(srv[i])}, slot {int(slot[i])}) carried twice"
        return pos, ""
