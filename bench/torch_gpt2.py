#!/usr/bin/env python3
"""PyTorch eager GPT-2 training step, the reference that bench/bench.py runs
beside weft: same shapes (L, C, H, T, B, vocabulary width V), fp32, AdamW,
synthetic tokens, `torch.set_num_threads(threads)`.

The model is written here from the GPT-2 description (pre-LN blocks, causal
multi-head attention from one qkv Linear, tanh-GeLU 4x MLP, final LayerNorm,
lm head tied to the token embedding) in plain eager PyTorch (1.13 has no
fused attention on CPU). One step = zero_grad(set_to_none) + forward + cross
entropy over all V logit columns + backward + clip_grad_norm_(1.0) + AdamW.

Tuning that bench.py applies from outside (environment, before torch loads):
OMP_WAIT_POLICY=PASSIVE, OPENBLAS_NUM_THREADS=threads, and, when Debian's
libjemalloc2 is installed, LD_PRELOAD=libjemalloc.so.2 with
MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1.

Prints one JSON object: per-step milliseconds and the medians.
  python3 bench/torch_gpt2.py --layers 12 --hidden 768 --heads 12 --vocab 50304 --seq 64 --batch 4 --steps 12
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.fc_proj = nn.Linear(4 * c, c)

    def attention(self, x, mask):
        b, t, c = x.shape
        hs = c // self.h
        q, k, v = self.qkv(x).split(c, dim=-1)
        q = q.view(b, t, self.h, hs).transpose(1, 2)  # [B,H,T,hs]
        k = k.view(b, t, self.h, hs).transpose(1, 2)
        v = v.view(b, t, self.h, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # [B,H,T,T]
        att = att.masked_fill(mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)

    def forward(self, x, mask):
        x = x + self.attention(self.ln1(x), mask)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, c, h, vocab, seq):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(seq, c)
        self.blocks = nn.ModuleList(Block(c, h) for _ in range(layers))
        self.lnf = nn.LayerNorm(c)
        self.register_buffer("mask", torch.ones(seq, seq, dtype=torch.bool).triu(1), persistent=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "ln" in name and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, ids, targets):
        b, t = ids.shape
        x = self.wte(ids) + self.wpe.weight[:t]
        for blk in self.blocks:
            x = blk(x, self.mask)
        logits = self.lnf(x) @ self.wte.weight.t()  # tied head [B,T,V]
        return F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(b * t))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed steps; the last `--measure` count")
    ap.add_argument("--measure", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--foreach", type=int, default=1, help="AdamW foreach implementation (1) or the loop (0)")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = GPT(a.layers, a.hidden, a.heads, a.vocab, a.seq)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, foreach=bool(a.foreach))
    gen = torch.Generator().manual_seed(1)
    step_ms, losses = [], []
    for _ in range(a.steps):
        tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_ms.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss.item())
    last = step_ms[-a.measure:]
    med = statistics.median(last)
    tokens = a.batch * a.seq
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "step_ms": step_ms, "median_step_ms": med, "median_tokens_per_s": tokens / med * 1e3,
        "loss_first": losses[0], "loss_last": losses[-1],
        "env": {k: os.environ.get(k, "") for k in ("OMP_WAIT_POLICY", "LD_PRELOAD", "MALLOC_CONF",
                                                  "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")},
    }))


if __name__ == "__main__":
    main()
