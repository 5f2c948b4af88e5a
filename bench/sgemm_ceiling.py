#!/usr/bin/env python3
"""OpenBLAS sgemm ceiling at a given thread count.

Calls cblas_sgemm of the same libopenblas.so.0 that weft's CPU backend links
(and that Debian's python3-torch reaches through libblas.so.3), through ctypes,
on fp32 row-major operands, and reports GFLOP/s:

  square  the best of a few large square products (the machine's sgemm peak);
  step    the exact GEMM list of one GPT-2 training step (forward and
          backward, weft's layouts, N = B*T rows), back to back: the ceiling
          for a step made only of these GEMMs.

Prints JSON on stdout. Used by bench/bench.py; runnable alone:
  python3 bench/sgemm_ceiling.py --threads 2 --layers 12 --hidden 768 --vocab 50304 --rows 256
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import time

import numpy as np

CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


def load_openblas():
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas") or ""):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    raise SystemExit("sgemm_ceiling: libopenblas.so.0 not found (Debian: libopenblas0-pthread)")


class Blas:
    def __init__(self, threads):
        self.lib = load_openblas()
        self.lib.openblas_set_num_threads(ctypes.c_int(threads))
        self.lib.openblas_get_corename.restype = ctypes.c_char_p
        self.lib.openblas_get_config.restype = ctypes.c_char_p
        f = self.lib.cblas_sgemm
        f.restype = None
        f.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                            ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        self.sgemm = f

    def corename(self):
        return self.lib.openblas_get_corename().decode()

    def config(self):
        return self.lib.openblas_get_config().decode()


def make_gemm(blas, ta, tb, m, n, k, beta=0.0):
    """Operands for C[m,n] = op(A) op(B); returns a zero-argument runner."""
    a = np.random.default_rng(1).standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    c = np.zeros((m, n), dtype=np.float32)
    lda, ldb = a.shape[1], b.shape[1]
    args = (CBLAS_ROW_MAJOR, CBLAS_TRANS if ta else CBLAS_NO_TRANS, CBLAS_TRANS if tb else CBLAS_NO_TRANS,
            m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, beta, c.ctypes.data, n)

    def run():
        blas.sgemm(*args)

    run.keep = (a, b, c)
    return run


def timed(fns, flops, repeats):
    for f in fns:  # warm-up
        f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for f in fns:
            f()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9, flops / min(times) / 1e9


def step_gemms(layers, hidden, vocab, rows):
    """(trans_a, trans_b, m, n, k, beta) of every GEMM in one training step, weft's layout."""
    n, c = rows, hidden
    out = []
    lin = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]  # qkv, attn proj, fc, mlp proj: (in, out)
    for _ in range(layers):
        for i, o in lin:
            out.append((False, True, n, o, i, 0.0))   # y = x W^T
            out.append((True, False, o, i, n, 1.0))   # dW += dy^T x
            out.append((False, False, n, i, o, 0.0))  # dx = dy W
    out.append((False, True, n, vocab, c, 0.0))       # logits = h wte^T
    out.append((False, False, n, c, vocab, 0.0))      # dh = dlogits wte
    out.append((True, False, vocab, c, n, 1.0))       # dwte += dlogits^T h
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--rows", type=int, default=256, help="B*T")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-step", action="store_true", help="square products only")
    a = ap.parse_args()
    blas = Blas(a.threads)
    res = {"threads": a.threads, "openblas_core": blas.corename(), "openblas_config": blas.config(),
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "")}
    square = {}
    for s in (1024, 1536, 2048):
        med, best = timed([make_gemm(blas, False, False, s, s, s)], 2.0 * s ** 3, a.repeats)
        square[str(s)] = {"median_gflops": med, "best_gflops": best}
    res["square"] = square
    res["square_gflops"] = max(v["median_gflops"] for v in square.values())
    if not a.no_step:
        shapes = step_gemms(a.layers, a.hidden, a.vocab, a.rows)
        fns = [make_gemm(blas, *s) for s in shapes]
        flops = sum(2.0 * m * n * k for (_, _, m, n, k, _) in shapes)
        med, best = timed(fns, flops, max(3, a.repeats // 2))
        res["step"] = {"gemms": len(shapes), "gflop": flops / 1e9, "median_gflops": med, "best_gflops": best}
    res["ceiling_gflops"] = max(res["square_gflops"], res.get("step", {}).get("median_gflops", 0.0))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
