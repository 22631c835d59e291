"""What an operator runs: the composition root (CLI, in-process engine, evaluate, demo, dev servers,
record/replay, the plan shell). The only package that imports several stages."""
