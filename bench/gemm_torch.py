"""Times torch.mm for the GEMM benchmark's shapes on 1 and 2 threads; prints JSON.

Usage: /usr/bin/python3 gemm_torch.py '<json list of shapes>' [runs]
Each shape is {"name", "m", "k", "n", "layout"} with layout NN (A[M,K]·B[K,N]),
NT (A·Wᵀ, W stored [N,K]) or TN (Aᵀ·B, A stored [K,M]); float32 throughout.
Output: {"torch": "<version>", "results": {name: {"1": gflops, "2": gflops}}} with the
median GFLOP/s over `runs` timed samples after a warm-up.
"""
import json
import statistics
import sys
import time

import torch


def operands(m, k, n, layout):
    g = torch.Generator().manual_seed(1234)
    if layout == "NN":
        return torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    if layout == "NT":
        return torch.randn(m, k, generator=g), torch.randn(n, k, generator=g).t()
    if layout == "TN":
        return torch.randn(k, m, generator=g).t(), torch.randn(k, n, generator=g)
    raise ValueError(f"unknown layout {layout!r} (expected NN, NT or TN)")


def gflops(m, k, n, layout, runs):
    a, b = operands(m, k, n, layout)
    c = torch.empty(m, n)
    flop = 2.0 * m * n * k
    torch.mm(a, b, out=c)  # warm-up
    t0 = time.perf_counter()
    torch.mm(a, b, out=c)
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(0.05 / once))  # each sample lasts at least ~50 ms
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        samples.append(flop * inner / (time.perf_counter() - t0) / 1e9)
    return statistics.median(samples)


def main():
    shapes = json.loads(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for s in shapes:
            r = gflops(s["m"], s["k"], s["n"], s["layout"], runs)
            results.setdefault(s["name"], {})[str(threads)] = r
    print(json.dumps({"torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
