"""Benchmarks: ratios measured side by side in one process; results in docs/benchmarks.md.

    python -m benchmarks.context_overhead     # and torch_peer_train, torch_peer_sample, solvers, memory, mfu
"""
