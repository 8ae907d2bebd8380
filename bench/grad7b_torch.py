#!/usr/bin/python3
"""PyTorch peer of the grad7b benchmark (bench/FeatureLens.Bench/Grad7bBench.cs); prints one JSON line.

grad7b_torch.py --model DIR --seq 64 --threads 2 --repeats 2 --token-a 5 --token-b 7 [--kill-above-gib 20]

Loads every tensor of the (sharded) Llama folder into memory in its stored dtype (bf16: ~13.5 GB, with
bench/torch_forward.py's reader), then runs torch autograd: a forward of --seq random tokens (seed 0) in which
every linear layer is PyTorch's native CPU bf16 GEMM (activations rounded to bf16 at each linear's input,
float32 elsewhere: norms, RoPE, softmax attention, the residual stream), the metric
logits[0,-1,a] - logits[0,-1,b], and metric.backward() with retain_grad() on every block's output
(blocks.L.hook_resid_post). The weights never require a gradient. A float32 upcast of the weights (the
float32 path of torch_forward.py) would not fit here: autograd keeps every upcast weight alive for the
backward (~27 GB). One cold call and --repeats warm ones; peak RSS from getrusage. A thread stops the
process (exit 3) when its RSS passes --kill-above-gib.
Prints {torch, threads, seq, load_s, first_s, median_s, runs, metric, peak_rss_gib, weights_gib}.
"""

import argparse
import json
import math
import os
import statistics
import threading
import time

import torch_threads  # noqa: F401  (sets the thread count before torch loads)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_forward as tf  # noqa: E402


def rss_gib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def watchdog(limit):
    while True:
        r = rss_gib()
        if r > limit:
            print(f"grad7b_torch: RSS {r:.2f} GiB passed {limit} GiB; stopping", flush=True)
            os._exit(3)
        time.sleep(0.05)


def forward_backward(cfg, s, idx, tok_a, tok_b):
    # idx (1,T); returns (metric, [grad of each block's output (1,T,C)])
    B, T = idx.shape
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV = cfg.get("num_key_value_heads") or NH
    HS = C // NH
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)

    def mm(x, name):  # native bf16 GEMM, result back to float32
        return F.linear(x.to(torch.bfloat16), s[name]).float()

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * s[name].float()

    inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2).float() / HS))
    ang = torch.arange(T).float()[:, None] * inv_freq[None, :]
    cos, sin = ang.cos(), ang.sin()
    mask = torch.full((T, T), float("-inf")).triu(1)
    x = F.embedding(idx, s["model.embed_tokens.weight"]).float().requires_grad_()  # the graph's leaf
    resid_post = []
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        h = rms(x, p + "input_layernorm.weight")
        q = mm(h, p + "self_attn.q_proj.weight").view(B, T, NH, HS).transpose(1, 2)
        k = mm(h, p + "self_attn.k_proj.weight").view(B, T, NKV, HS).transpose(1, 2)
        v = mm(h, p + "self_attn.v_proj.weight").view(B, T, NKV, HS).transpose(1, 2)
        q, k = tf.rope_rotate_half(q, cos, sin), tf.rope_rotate_half(k, cos, sin)
        if NKV != NH:
            k, v = k.repeat_interleave(NH // NKV, dim=1), v.repeat_interleave(NH // NKV, dim=1)
        att = torch.softmax(torch.baddbmm(mask, q.reshape(B * NH, T, HS), k.reshape(B * NH, T, HS).transpose(1, 2), alpha=1.0 / math.sqrt(HS)), -1)
        z = torch.bmm(att, v.reshape(B * NH, T, HS)).view(B, NH, T, HS)
        x = x + mm(z.transpose(1, 2).reshape(B, T, C), p + "self_attn.o_proj.weight")
        h = rms(x, p + "post_attention_layernorm.weight")
        x = x + mm(F.silu(mm(h, p + "mlp.gate_proj.weight")) * mm(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
        x.retain_grad()
        resid_post.append(x)
    lm = "lm_head.weight" if "lm_head.weight" in s else "model.embed_tokens.weight"
    logits = mm(rms(x, "model.norm.weight"), lm)
    metric = (logits[:, -1, tok_a] - logits[:, -1, tok_b]).sum()
    metric.backward()
    return float(metric), [r.grad for r in resid_post]


def main():
    ap = argparse.ArgumentParser(description="PyTorch autograd on a Llama-7B-shaped bf16 folder")
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--token-a", type=int, default=5)
    ap.add_argument("--token-b", type=int, default=7)
    ap.add_argument("--kill-above-gib", type=float, default=20.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threading.Thread(target=watchdog, args=(args.kill_above_gib,), daemon=True).start()
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    t0 = time.perf_counter()
    s = tf.load_folder(args.model)
    load = time.perf_counter() - t0
    idx = torch.randint(0, cfg["vocab_size"], (1, args.seq), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        metric, grads = forward_backward(cfg, s, idx, args.token_a, args.token_b)
        runs.append(time.perf_counter() - t)
        assert len(grads) == cfg["num_hidden_layers"] and all(g is not None for g in grads)
        del grads
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "seq": args.seq, "load_s": load,
                      "first_s": runs[0], "median_s": statistics.median(runs[1:]), "runs": runs, "metric": metric,
                      "peak_rss_gib": tf.peak_rss_gib(),
                      "weights_gib": sum(t.numel() * t.element_size() for t in s.values()) / 2**30}))


if __name__ == "__main__":
    main()
