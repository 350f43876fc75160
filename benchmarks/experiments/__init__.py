"""Frozen one-off explorations: each produced a number recorded in docs/results/; not maintained."""
