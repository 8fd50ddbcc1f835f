"""Ingest: validates camera frames from ``frames.raw`` and publishes them, normalised, to
``frames.valid``; refusals go to ``frames.dlq`` with a reason code."""
