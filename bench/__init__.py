"""`python -m bench`: load tests that show what the gateway costs next to the bare engine.

The old service's tools counted characters as tokens and measured one mode only; this one counts
tokens from `usage`, runs the same workload in-process and through the stack, and saves JSON and a plot.
"""
