"""Runnable examples: ``python -m fusedrnn.examples.quickstart``."""
