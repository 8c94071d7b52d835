"""Runnable examples: ``python -m fusedrnn.examples.quickstart`` (the functional API on a toy task)
and ``python -m fusedrnn.examples.charlm`` (a character-level language model with PyTorch)."""
