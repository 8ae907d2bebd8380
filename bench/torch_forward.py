#!/usr/bin/python3
"""PyTorch side of the FeatureLens forward benchmarks (run with /usr/bin/python3, torch 1.13 CPU).

Threads: torch.set_num_threads(T) sets PyTorch's pool (used by oneDNN and elementwise ops); this
Debian torch 1.13 calls OpenBLAS (libblas.so.3 -> openblas-pthread) for float32 GEMM, so the
script also sets OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=T before importing torch, so that no pool
exceeds T. On a shared 2-core machine, timings with T=2 are only meaningful when nothing else runs.

Matmul back ends (--impl): aten = plain torch ops (F.linear/baddbmm/bmm -> OpenBLAS);
mkldnn = oneDNN through mkldnn tensors (torch._C._nn.mkldnn_linear, what torch.utils.mkldnn's
MkldnnLinear uses), weights reordered once at load. auto (default): mkldnn for gpt2 (faster for
(1024 x 768 x 3072)-sized GEMMs), aten for llama (weights change every call there, and oneDNN
reorders them each time).

GPT-2 (throughput):
  torch_forward.py --arch gpt2 --model DIR --batch 8 --seq 128 --threads 1 --repeats 5 --cache-resid
                   [--no-logits] [--impl auto|mkldnn|aten]
    Batched float32 forward under torch.no_grad(): one (B*T,C)x(C,OC) GEMM per linear layer
    (weights pre-transposed / pre-reordered once at load), F.layer_norm,
    F.gelu(approximate="tanh") (= gelu_new), causal softmax attention (torch 1.13 has no
    F.scaled_dot_product_attention): aten: torch.baddbmm + softmax + torch.bmm over (B*NH);
    mkldnn: two oneDNN matmuls per (batch, head). --cache-resid keeps the n_layers resid_post
    tensors (B,T,C) alive to the end of the pass, like run-with-cache. The logits (B,T,V) are
    computed unless --no-logits. Random token ids, fixed seed 0. --warmup passes (default 1), then
    --repeats timed passes. Prints JSON:
    {arch, impl, threads, batch, seq, logits, cache_resid, load_s, median_s, tokens_per_s, runs, peak_rss_gib}.

Llama (latency of a big bf16 model on a small machine):
  torch_forward.py --arch llama --model DIR --batch 1 --seq 64 --threads 2 --repeats 1 [--llama-matmul f32|bf16] [--impl auto|mkldnn|aten]
    Loads every tensor of the (sharded) HF folder into memory in its stored dtype (bf16 stays
    bf16: ~2 bytes/param) and reports the load time. --llama-matmul f32 (default): activations are
    float32; each weight matrix is converted bf16->float32 (exact) just before its matmul and
    dropped right after. (torch 1.13's bf16->f32 conversion runs at only ~0.25 G elements/s, so
    this conversion, not the GEMMs, dominates the f32 latency.) --llama-matmul bf16: PyTorch's
    native CPU bf16 path (oneDNN bf16 GEMM, float32 accumulation, activations rounded to bf16 at
    each linear input/output) -- faster, but not float32 numerics. Peak RSS from
    resource.getrusage (ru_maxrss). Prints JSON:
    {arch, impl, llama_matmul, threads, batch, seq, load_s, median_s, tokens_per_s, runs, peak_rss_gib, weights_gib}.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time


import torch_threads  # noqa: F401,E402  (sets the thread count before torch loads)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "FeatureLens.Tests", "python"))
import safetensors_lite as st  # noqa: E402


def load_folder(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for fn in files:
        state.update(st.load(os.path.join(folder, fn)))
    return state


# ---------------------------------------------------------------------------------------------- matmuls


class Linear:
    """y = x @ W^T (+ b) for x (..., in) and W (out, in), via oneDNN ("mkldnn") or plain torch ("aten")."""

    def __init__(self, impl):
        self.impl = impl

    def weight(self, w):
        # w is (out,in) float32; reordered once into oneDNN's layout when impl is mkldnn
        w = w.contiguous()
        return w.to_mkldnn() if self.impl == "mkldnn" else w

    def __call__(self, x, w, b=None):
        if self.impl == "aten":
            return F.linear(x, w, b)
        lead = x.shape[:-1]
        y = torch._C._nn.mkldnn_linear(x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn(), w,
                                       None if b is None else b.to_mkldnn()).to_dense()
        return y.view(*lead, y.shape[-1])

    def attention(self, q, k, v, scale):
        # q is (B,NH,T,HS), k and v are (B,NH,T,HS) (already repeated for GQA); returns z (B,NH,T,HS)
        B, NH, T, HS = q.shape
        mask = torch.full((T, T), float("-inf")).triu(1)  # additive causal mask
        if self.impl == "aten":
            att = torch.baddbmm(mask, q.reshape(B * NH, T, HS), k.reshape(B * NH, T, HS).transpose(1, 2), alpha=scale)
            return torch.bmm(torch.softmax(att, -1), v.reshape(B * NH, T, HS)).view(B, NH, T, HS)
        z = torch.empty(B, NH, T, HS)
        for bi in range(B):
            for h in range(NH):
                # scores = q @ k^T: a linear layer whose weight is k (T,HS)
                sc = torch._C._nn.mkldnn_linear(q[bi, h].contiguous().to_mkldnn(), k[bi, h].contiguous().to_mkldnn(), None)
                p = torch.softmax(sc.to_dense() * scale + mask, -1)
                # z = p @ v: weight is v^T (HS,T)
                z[bi, h] = torch._C._nn.mkldnn_linear(p.to_mkldnn(), v[bi, h].t().contiguous().to_mkldnn(), None).to_dense()
        return z


# ---------------------------------------------------------------------------------------------- GPT-2


def gpt2_prepare(folder, lin):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    s = {k[len("transformer."):] if k.startswith("transformer.") else k: v.float() for k, v in load_folder(folder).items()}
    layers = []
    for L in range(cfg["n_layer"]):
        p = f"h.{L}."
        # Conv1D stores (in,out); Linear wants (out,in): transpose once
        layers.append({
            "ln1_w": s[p + "ln_1.weight"], "ln1_b": s[p + "ln_1.bias"],
            "qkv_w": lin.weight(s[p + "attn.c_attn.weight"].t()), "qkv_b": s[p + "attn.c_attn.bias"],
            "o_w": lin.weight(s[p + "attn.c_proj.weight"].t()), "o_b": s[p + "attn.c_proj.bias"],
            "ln2_w": s[p + "ln_2.weight"], "ln2_b": s[p + "ln_2.bias"],
            "fc_w": lin.weight(s[p + "mlp.c_fc.weight"].t()), "fc_b": s[p + "mlp.c_fc.bias"],
            "proj_w": lin.weight(s[p + "mlp.c_proj.weight"].t()), "proj_b": s[p + "mlp.c_proj.bias"]})
    return cfg, {"wte": s["wte.weight"], "wte_unembed": lin.weight(s["wte.weight"]), "wpe": s["wpe.weight"],
                 "lnf_w": s["ln_f.weight"], "lnf_b": s["ln_f.bias"], "layers": layers}


def gpt2_forward(cfg, w, idx, cache_resid, want_logits, lin):
    # idx is (B,T) int64; returns (logits (B,T,V) or None, cache list of (B,T,C))
    B, T = idx.shape
    C, NH, eps = cfg["n_embd"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    HS = C // NH
    x = F.embedding(idx, w["wte"]) + w["wpe"][:T]  # (B,T,C)
    cache = []
    for p in w["layers"]:
        h = F.layer_norm(x, (C,), p["ln1_w"], p["ln1_b"], eps)
        qkv = lin(h, p["qkv_w"], p["qkv_b"]).view(B, T, 3, NH, HS).permute(2, 0, 3, 1, 4)  # (3,B,NH,T,HS)
        z = lin.attention(qkv[0], qkv[1], qkv[2], 1.0 / math.sqrt(HS))  # (B,NH,T,HS)
        x = x + lin(z.transpose(1, 2).reshape(B, T, C), p["o_w"], p["o_b"])
        h = F.layer_norm(x, (C,), p["ln2_w"], p["ln2_b"], eps)
        x = x + lin(F.gelu(lin(h, p["fc_w"], p["fc_b"]), approximate="tanh"), p["proj_w"], p["proj_b"])
        if cache_resid:
            cache.append(x)
    logits = None
    if want_logits:
        logits = lin(F.layer_norm(x, (C,), w["lnf_w"], w["lnf_b"], eps), w["wte_unembed"])
    return logits, cache


# ---------------------------------------------------------------------------------------------- Llama


def rope_rotate_half(x, cos, sin):
    # x is (B,NH,T,HS); cos/sin are (T,HS/2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def llama_forward(cfg, s, idx, lin, matmul_dtype):
    # idx is (B,T); weights in s stay in their stored dtype
    B, T = idx.shape
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV = cfg.get("num_key_value_heads") or NH
    HS = C // NH
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)

    def mm(x, name):
        if matmul_dtype == "bf16":  # native bf16 GEMM, result back to float32
            return F.linear(x.to(torch.bfloat16), s[name].to(torch.bfloat16)).float()
        return lin(x, lin.weight(s[name].float()))  # exact upcast, freed after use

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * s[name].float()

    inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2).float() / HS))
    ang = torch.arange(T).float()[:, None] * inv_freq[None, :]
    cos, sin = ang.cos(), ang.sin()
    x = F.embedding(idx, s["model.embed_tokens.weight"]).float()  # (B,T,C)
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        h = rms(x, p + "input_layernorm.weight")
        q = mm(h, p + "self_attn.q_proj.weight").view(B, T, NH, HS).transpose(1, 2)
        k = mm(h, p + "self_attn.k_proj.weight").view(B, T, NKV, HS).transpose(1, 2)
        v = mm(h, p + "self_attn.v_proj.weight").view(B, T, NKV, HS).transpose(1, 2)
        q, k = rope_rotate_half(q, cos, sin), rope_rotate_half(k, cos, sin)
        if NKV != NH:
            k = k.repeat_interleave(NH // NKV, dim=1)
            v = v.repeat_interleave(NH // NKV, dim=1)
        z = lin.attention(q, k, v, 1.0 / math.sqrt(HS))
        x = x + mm(z.transpose(1, 2).reshape(B, T, C), p + "self_attn.o_proj.weight")
        h = rms(x, p + "post_attention_layernorm.weight")
        x = x + mm(F.silu(mm(h, p + "mlp.gate_proj.weight")) * mm(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    lm = "lm_head.weight" if "lm_head.weight" in s else "model.embed_tokens.weight"
    return mm(rms(x, "model.norm.weight"), lm)


# ----------------------------------------------------------------------------------------------


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main():
    ap = argparse.ArgumentParser(description="PyTorch forward benchmark")
    ap.add_argument("--arch", choices=["gpt2", "llama"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cache-resid", action="store_true")
    ap.add_argument("--no-logits", action="store_true")
    ap.add_argument("--impl", choices=["auto", "mkldnn", "aten"], default="auto")
    ap.add_argument("--llama-matmul", choices=["f32", "bf16"], default="f32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.impl == "auto":
        args.impl = "mkldnn" if args.arch == "gpt2" else "aten"
    lin = Linear(args.impl)
    gen = torch.Generator().manual_seed(0)
    result = {"arch": args.arch, "impl": args.impl, "threads": args.threads, "batch": args.batch, "seq": args.seq,
              "torch": torch.__version__}
    t0 = time.perf_counter()
    if args.arch == "gpt2":
        cfg, w = gpt2_prepare(args.model, lin)
        vocab = cfg["vocab_size"]
        run = lambda idx: gpt2_forward(cfg, w, idx, args.cache_resid, not args.no_logits, lin)  # noqa: E731
        result.update(logits=not args.no_logits, cache_resid=args.cache_resid)
    else:
        with open(os.path.join(args.model, "config.json")) as f:
            cfg = json.load(f)
        s = load_folder(args.model)
        vocab = cfg["vocab_size"]
        result["weights_gib"] = sum(t.numel() * t.element_size() for t in s.values()) / 2**30
        result["weights_dtype"] = str(next(iter(s.values())).dtype)
        result["llama_matmul"] = args.llama_matmul
        run = lambda idx: llama_forward(cfg, s, idx, lin, args.llama_matmul)  # noqa: E731
    result["load_s"] = time.perf_counter() - t0
    idx = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    with torch.no_grad():
        for _ in range(args.warmup):
            out = run(idx)
            del out
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = run(idx)
            runs.append(time.perf_counter() - t)
            del out
    med = statistics.median(runs)
    result.update(median_s=med, tokens_per_s=args.batch * args.seq / med, runs=runs, peak_rss_gib=peak_rss_gib())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
