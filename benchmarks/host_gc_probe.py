"""Does Python's cyclic GC explain why a call costs more inside the bench process than in a small script?

Runs the bench's host-overhead table (torch, triton, cutedsl, quack; 8x1024 bf16) twice in one process: first as
is, then with ``gc.disable()``; prints both tables and the number of tracked objects.

    python benchmarks/host_gc_probe.py
"""
import gc

import torch

from vibe_kernels.layernorm import bench

device = torch.device("cuda")
backends = ["torch", "triton", "cutedsl", "quack"]
for label in ("gc on", "gc off"):
    if label == "gc off":
        gc.collect()
        gc.disable()
    overheads = bench.measure_host_overhead(backends, device, 4000)
    print(f"## {label} ({len(gc.get_objects())} tracked objects)")
    print(bench.format_host_table(overheads))
gc.enable()
