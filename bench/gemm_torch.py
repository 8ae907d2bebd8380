"""Times torch.mm for the GEMM benchmark's shapes on a given number of threads; prints JSON.

Usage: OPENBLAS_NUM_THREADS=T OMP_NUM_THREADS=T /usr/bin/python3 gemm_torch.py '<json list of shapes>' RUNS T
Each shape is {"name", "m", "k", "n", "layout"} with layout NN (A[M,K]·B[K,N]),
NT (A·Wᵀ, W stored [N,K]) or TN (Aᵀ·B, A stored [K,M]); float32 throughout.
Debian's torch calls the system BLAS (OpenBLAS), whose thread pool follows OPENBLAS_NUM_THREADS,
not torch.set_num_threads, so the caller sets both (the variables must be set before start-up).
Output: {"torch": "<version>", "blas": "<library>", "threads": T, "results": {name: gflops}} with the
median GFLOP/s over RUNS timed samples after a warm-up.
"""
import json
import os
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


def blas_library():
    """The BLAS shared library this process actually mapped (Debian's alternatives may point anywhere)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "blas" in line.lower():
                    return os.path.realpath(line.split()[-1])
    except OSError:
        pass
    return "unknown"


def main():
    shapes = json.loads(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.set_num_threads(threads)
    results = {}
    for s in shapes:
        results[s["name"]] = gflops(s["m"], s["k"], s["n"], s["layout"], runs)
    print(json.dumps({"torch": torch.__version__, "blas": blas_library(), "threads": threads, "results": results}))


if __name__ == "__main__":
    main()
