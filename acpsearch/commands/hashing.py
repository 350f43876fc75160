"""CLI commands of the hashing side: train, evaluate. (Placeholder until implemented.)"""
from acpsearch.cli import app  # noqa: F401
