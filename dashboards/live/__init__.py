"""The live dashboard served by the project (`powerplane dashboard`) and `powerplane status`.

`state` folds decoded records into a bounded in-memory view (pure, no I/O); `feed` reads the Kafka
topics (or `replay` a recording) into it; `server` serves the page and pushes deltas about once a
second over server-sent events.
"""
