#!/usr/bin/python3
"""PyTorch side of the FeatureLens forward benchmarks (run with /usr/bin/python3, torch 1.13 CPU).

GPT-2 (throughput):
  torch_forward.py --arch gpt2 --model DIR --batch 8 --seq 128 --threads 1 --repeats 5 --cache-resid [--no-logits]
    Efficient batched forward in float32 under torch.no_grad(): one (B*T,C)x(C,OC) GEMM per linear
    layer (F.linear on pre-transposed contiguous weights), F.layer_norm, F.gelu(approximate="tanh")
    (= gelu_new), attention with torch.baddbmm (additive causal mask, 1/sqrt(HS) scale) + softmax +
    torch.bmm (torch 1.13 has no F.scaled_dot_product_attention). --cache-resid keeps the
    n_layers resid_post tensors (B,T,C) alive to the end of the pass, like run-with-cache. The
    logits (B,T,V) are computed unless --no-logits. Random token ids, fixed seed 0.
    One warm-up pass, then --repeats timed passes. Prints JSON:
    {arch, threads, batch, seq, logits, cache_resid, median_s, tokens_per_s, runs: [...]}.

Llama (latency of a big bf16 model on a small machine):
  torch_forward.py --arch llama --model DIR --batch 1 --seq 64 --threads 2 --repeats 1
    Loads every tensor of the (sharded) HF folder into memory in its stored dtype (bf16 stays
    bf16: ~2 bytes/param) and reports the load time. The forward runs in float32: each weight
    matrix is converted bf16->float32 just before its matmul and dropped right after (PyTorch 1.13's
    CPU bf16 matmul is far slower than float32 MKL; the conversion is exact). Peak RSS comes from
    resource.getrusage (ru_maxrss). Prints JSON:
    {arch, threads, batch, seq, load_s, median_s, tokens_per_s, runs, peak_rss_gib, weights_gib}.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

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


# ---------------------------------------------------------------------------------------------- GPT-2


def gpt2_prepare(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    s = {k[len("transformer."):] if k.startswith("transformer.") else k: v.float() for k, v in load_folder(folder).items()}
    layers = []
    for L in range(cfg["n_layer"]):
        p = f"h.{L}."
        # Conv1D stores (in,out); F.linear wants (out,in): transpose once, contiguous
        layers.append({
            "ln1_w": s[p + "ln_1.weight"], "ln1_b": s[p + "ln_1.bias"],
            "qkv_w": s[p + "attn.c_attn.weight"].t().contiguous(), "qkv_b": s[p + "attn.c_attn.bias"],
            "o_w": s[p + "attn.c_proj.weight"].t().contiguous(), "o_b": s[p + "attn.c_proj.bias"],
            "ln2_w": s[p + "ln_2.weight"], "ln2_b": s[p + "ln_2.bias"],
            "fc_w": s[p + "mlp.c_fc.weight"].t().contiguous(), "fc_b": s[p + "mlp.c_fc.bias"],
            "proj_w": s[p + "mlp.c_proj.weight"].t().contiguous(), "proj_b": s[p + "mlp.c_proj.bias"]})
    return cfg, {"wte": s["wte.weight"], "wpe": s["wpe.weight"], "lnf_w": s["ln_f.weight"],
                 "lnf_b": s["ln_f.bias"], "layers": layers}


def gpt2_forward(cfg, w, idx, cache_resid, want_logits):
    # idx is (B,T) int64; returns (logits (B,T,V) or None, cache list of (B,T,C))
    B, T = idx.shape
    C, NH, eps = cfg["n_embd"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    HS = C // NH
    x = F.embedding(idx, w["wte"]) + w["wpe"][:T]  # (B,T,C)
    mask = torch.full((T, T), float("-inf")).triu(1)  # additive causal mask
    cache = []
    for p in w["layers"]:
        h = F.layer_norm(x, (C,), p["ln1_w"], p["ln1_b"], eps)
        qkv = F.linear(h, p["qkv_w"], p["qkv_b"]).view(B, T, 3, NH, HS).permute(2, 0, 3, 1, 4)  # (3,B,NH,T,HS)
        q = qkv[0].reshape(B * NH, T, HS)
        k = qkv[1].reshape(B * NH, T, HS)
        v = qkv[2].reshape(B * NH, T, HS)
        att = torch.baddbmm(mask, q, k.transpose(1, 2), beta=1.0, alpha=1.0 / math.sqrt(HS))  # (B*NH,T,T)
        att = torch.softmax(att, dim=-1)
        z = torch.bmm(att, v).view(B, NH, T, HS).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(z, p["o_w"], p["o_b"])
        h = F.layer_norm(x, (C,), p["ln2_w"], p["ln2_b"], eps)
        x = x + F.linear(F.gelu(F.linear(h, p["fc_w"], p["fc_b"]), approximate="tanh"), p["proj_w"], p["proj_b"])
        if cache_resid:
            cache.append(x)
    logits = None
    if want_logits:
        logits = F.linear(F.layer_norm(x, (C,), w["lnf_w"], w["lnf_b"], eps), w["wte"])
    return logits, cache


# ---------------------------------------------------------------------------------------------- Llama


def rope_rotate_half(x, cos, sin):
    # x is (B,NH,T,HS); cos/sin are (T,HS/2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def llama_forward(cfg, s, idx):
    # idx is (B,T); weights in s stay in their stored dtype and are made float32 per use
    B, T = idx.shape
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV = cfg.get("num_key_value_heads") or NH
    HS = C // NH
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    f = lambda name: s[name].float()  # noqa: E731  exact upcast, freed after use

    def rms(x, wname):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * f(wname)

    inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2).float() / HS))
    ang = torch.arange(T).float()[:, None] * inv_freq[None, :]
    cos, sin = ang.cos(), ang.sin()
    mask = torch.full((T, T), float("-inf")).triu(1)
    x = F.embedding(idx, s["model.embed_tokens.weight"]).float()  # (B,T,C)
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        h = rms(x, p + "input_layernorm.weight")
        q = F.linear(h, f(p + "self_attn.q_proj.weight")).view(B, T, NH, HS).transpose(1, 2)
        k = F.linear(h, f(p + "self_attn.k_proj.weight")).view(B, T, NKV, HS).transpose(1, 2)
        v = F.linear(h, f(p + "self_attn.v_proj.weight")).view(B, T, NKV, HS).transpose(1, 2)
        q, k = rope_rotate_half(q, cos, sin), rope_rotate_half(k, cos, sin)
        if NKV != NH:
            k = k.repeat_interleave(NH // NKV, dim=1)
            v = v.repeat_interleave(NH // NKV, dim=1)
        att = torch.baddbmm(mask, q.reshape(B * NH, T, HS), k.reshape(B * NH, T, HS).transpose(1, 2),
                            alpha=1.0 / math.sqrt(HS))
        z = torch.bmm(torch.softmax(att, -1), v.reshape(B * NH, T, HS)).view(B, NH, T, HS).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(z, f(p + "self_attn.o_proj.weight"))
        h = rms(x, p + "post_attention_layernorm.weight")
        g = F.linear(h, f(p + "mlp.gate_proj.weight"))
        u = F.linear(h, f(p + "mlp.up_proj.weight"))
        x = x + F.linear(F.silu(g) * u, f(p + "mlp.down_proj.weight"))
    lm = "lm_head.weight" if "lm_head.weight" in s else "model.embed_tokens.weight"
    return F.linear(rms(x, "model.norm.weight"), f(lm))


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(0)
    result = {"arch": args.arch, "threads": args.threads, "batch": args.batch, "seq": args.seq,
              "torch": torch.__version__}
    t0 = time.perf_counter()
    if args.arch == "gpt2":
        cfg, w = gpt2_prepare(args.model)
        vocab = cfg["vocab_size"]
        run = lambda idx: gpt2_forward(cfg, w, idx, args.cache_resid, not args.no_logits)  # noqa: E731
        result.update(logits=not args.no_logits, cache_resid=args.cache_resid)
    else:
        with open(os.path.join(args.model, "config.json")) as f:
            cfg = json.load(f)
        s = load_folder(args.model)
        vocab = cfg["vocab_size"]
        result["weights_gib"] = sum(t.numel() * t.element_size() for t in s.values()) / 2**30
        result["weights_dtype"] = str(next(iter(s.values())).dtype)
        run = lambda idx: llama_forward(cfg, s, idx)  # noqa: E731
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
