"""Evaluators over frozen models: classification metrics (and, later, probes and kNN)."""
