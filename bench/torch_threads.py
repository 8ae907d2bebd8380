"""Thread settings for the PyTorch peers, applied before torch (and OpenBLAS) is imported.

Debian's torch 1.13 sizes its OpenBLAS pool from OPENBLAS_NUM_THREADS when the library loads, so the
benchmark scripts import this module first: `import torch_threads` reads `--threads N` from the command
line and exports it as OPENBLAS_NUM_THREADS and OMP_NUM_THREADS.
"""

import os
import sys


def threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = threads_from_argv(sys.argv)
