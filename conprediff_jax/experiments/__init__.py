"""Experiments built from the trainer and the evaluator (each a `python -m` command)."""
