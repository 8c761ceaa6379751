"""Benchmarks of zero-downtime restarts behind HAProxy: `python -m bench` (see bench/RESULTS.md).

Everything runs on the local stack (supervisor + HAProxy 2.8 + uvicorn) on free loopback
ports, with bounded loads; each figure is the median of several runs whose variants are
measured side by side, interleaved, because the machine this runs on is small and shared.
"""
