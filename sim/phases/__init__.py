"""The phases of one twin step, in the order ``Twin.step`` runs them.

1. power (clocks): the power limiter's clock per work unit from limits, locks and temperatures
   (:func:`sim.phases.power.solve_clocks`);
2. workload: this step's request arrivals (:func:`sim.phases.workload.arrivals`);
3. serving: every instance's continuous batching (:func:`sim.phases.serving.serve`);
4. workload: training jobs' compute, communication and checkpoint phases (:func:`sim.phases.workload.train`);
5. power (GPUs): true power per GPU (:func:`sim.phases.power.gpu_power`);
6. electrical: servers' PSUs, A/B feeds, the power-tree roll-up and breakers (:func:`sim.phases.electrical.supply`);
7. thermal: cooling zones, rack inlets, GPU temperatures and shutdowns (:func:`sim.phases.thermal.cool`);
8. sensors: what the collectors read (:func:`sim.phases.sensors.read_sensors`).

Each phase reads the constants it names and reads and writes :class:`sim.state.TwinState`; what it hands to
later phases of the same step is a small dataclass of its own.
"""
