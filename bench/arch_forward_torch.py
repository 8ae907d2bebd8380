#!/usr/bin/python3
"""PyTorch peer of `bench/run.sh forward-arch`: the float32 forward of a Hugging Face folder of model_type llama,
mistral, qwen2, gemma2 or gpt_neox, written here from the formulas (not from transformers' code), timed on the same
tokens as FeatureLens.

  arch_forward_torch.py --model DIR --tokens FILE --batch B --seq T --threads N --repeats R [--logits-out FILE]

FILE holds B*T int32 token ids (little-endian, row-major). Weights are read with tests/.../safetensors_lite.py and
converted to float32 once at load. Every pass computes the full logits (B,T,V) under torch.no_grad(); the first pass
is a warm-up, then R timed passes. --logits-out writes the logits of the last position of each sequence of the last
pass as float32 (B,V). Prints JSON: {model_type, threads, batch, seq, layers, load_s, median_s, tokens_per_s, runs,
peak_rss_gib}.

Shapes: B batch, T positions, C hidden_size, NH query heads, KV key/value heads, HS head_dim, H intermediate_size,
V vocabulary.
- Llama family (llama, mistral, qwen2): RMSNorm x/sqrt(mean(x^2)+eps)*w; q/k/v (+ biases when the file has them);
  rotate-half RoPE (rope_scaling llama3 | linear | dynamic); GQA; softmax(q.k/sqrt(HS) + mask) v; o_proj; SwiGLU.
  Sliding window: query i sees key j iff 0 <= i-j < window (mistral: every layer; qwen2 with use_sliding_window:
  layers >= max_window_layers).
- gemma2: RMSNorm with (1 + w); embeddings * sqrt(C) (a float32 constant); scores * query_pre_attn_scalar^-1/2, then
  c*tanh(s/c) (attn_logit_softcapping), then the mask (window on even layers); post_attention_layernorm on the
  attention output, pre_feedforward_layernorm before and post_feedforward_layernorm after the GeGLU (gelu tanh);
  final norm, tied logits, c*tanh(logits/c) (final_logit_softcapping).
- gpt_neox: LayerNorm with bias; fused query_key_value viewed as (NH, 3, HS, C); rotary on the first
  int(HS*rotary_pct) dims; exact gelu MLP; parallel residual x + attn(ln1(x)) + mlp(ln2(x)) (or sequential);
  embed_out.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch_threads  # noqa: F401  (sets the thread count before torch loads)
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
        for k, v in st.load(os.path.join(folder, fn)).items():
            state[k] = v.float()
    return state


def inv_freq_of(cfg, rd, base, seq_len):
    """Rotary frequencies (rd/2,) in float32, with rope_scaling applied."""
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "dynamic":
        max_pos = rs.get("original_max_position_embeddings", cfg["max_position_embeddings"])
        if seq_len > max_pos:
            factor = rs["factor"]
            base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (rd / (rd - 2))
    inv = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.int64).float() / rd))
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        # long wavelengths (> old/lo) are slowed by factor, short ones (< old/hi) kept, the band between blended
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = torch.where(medium, blended, scaled)
    elif kind not in (None, "default"):
        raise SystemExit(f"rope_scaling type {kind!r} is not implemented here")
    return inv


def rotate(x, cos, sin, rd):
    """Rotate-half RoPE on the first rd dims of x (B,NH,T,HS); cos/sin are (T, rd)."""
    r, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rot = torch.cat((-r[..., half:], r[..., :half]), -1)
    return torch.cat((r * cos + rot * sin, rest), -1)


def attention(q, k, v, scale, softcap, window):
    """q (B,NH,T,HS), k/v (B,KV,T,HS) -> z (B,NH,T,HS); causal, optional window and soft-cap."""
    B, NH, T, HS = q.shape
    rep = NH // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (i - j >= 0) & ((i - j < window) if window else True)
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(s, -1), v)


def rms(x, w, eps, one_plus):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * (1 + w) if one_plus else y * w


def windows_of(cfg, n_layers):
    mt = cfg["model_type"]
    if mt == "mistral":
        return [cfg.get("sliding_window") or 0] * n_layers
    if mt == "qwen2":
        if not cfg.get("use_sliding_window"):
            return [0] * n_layers
        return [cfg["sliding_window"] if l >= cfg["max_window_layers"] else 0 for l in range(n_layers)]
    if mt == "gemma2":
        return [cfg["sliding_window"] if l % 2 == 0 else 0 for l in range(n_layers)]
    return [0] * n_layers


def forward_llama(cfg, s, idx):
    gemma = cfg["model_type"] == "gemma2"
    B, T = idx.shape
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", NH)
    HS = cfg.get("head_dim") or C // NH
    eps = cfg.get("rms_norm_eps", 1e-6)
    n_layers = cfg["num_hidden_layers"]
    inv = inv_freq_of(cfg, HS, cfg.get("rope_theta", 10000.0), T)
    ang = torch.arange(T).float()[:, None] * inv[None, :]
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    scale = cfg["query_pre_attn_scalar"] ** -0.5 if gemma else HS ** -0.5
    softcap = cfg.get("attn_logit_softcapping") if gemma else None
    windows = windows_of(cfg, n_layers)
    E = s["model.embed_tokens.weight"]
    x = E[idx]
    if gemma:
        x = x * torch.tensor(C ** 0.5, dtype=torch.float32)
    for L in range(n_layers):
        p = f"model.layers.{L}."

        def lin(h, name):
            return F.linear(h, s[p + name + ".weight"], s.get(p + name + ".bias"))

        h = rms(x, s[p + "input_layernorm.weight"], eps, gemma)
        q = lin(h, "self_attn.q_proj").view(B, T, NH, HS).transpose(1, 2)
        k = lin(h, "self_attn.k_proj").view(B, T, KV, HS).transpose(1, 2)
        v = lin(h, "self_attn.v_proj").view(B, T, KV, HS).transpose(1, 2)
        q, k = rotate(q, cos, sin, HS), rotate(k, cos, sin, HS)
        z = attention(q, k, v, scale, softcap, windows[L]).transpose(1, 2).reshape(B, T, NH * HS)
        a = lin(z, "self_attn.o_proj")
        if gemma:
            a = rms(a, s[p + "post_attention_layernorm.weight"], eps, True)
            h2 = rms(x + a, s[p + "pre_feedforward_layernorm.weight"], eps, True)
        else:
            h2 = rms(x + a, s[p + "post_attention_layernorm.weight"], eps, False)
        x = x + a
        g = lin(h2, "mlp.gate_proj")
        g = F.gelu(g, approximate="tanh") if gemma else F.silu(g)
        m = lin(g * lin(h2, "mlp.up_proj"), "mlp.down_proj")
        if gemma:
            m = rms(m, s[p + "post_feedforward_layernorm.weight"], eps, True)
        x = x + m
    x = rms(x, s["model.norm.weight"], eps, gemma)
    logits = F.linear(x, s.get("lm_head.weight", E))
    if gemma and cfg.get("final_logit_softcapping"):
        c = cfg["final_logit_softcapping"]
        logits = c * torch.tanh(logits / c)
    return logits


def forward_neox(cfg, s, idx):
    B, T = idx.shape
    C, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    HS = C // NH
    rd = int(HS * cfg.get("rotary_pct", 1.0))
    eps = cfg.get("layer_norm_eps", 1e-5)
    inv = inv_freq_of(cfg, rd, cfg.get("rotary_emb_base", 10000), T)
    ang = torch.arange(T).float()[:, None] * inv[None, :]
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    act = {"gelu": F.gelu, "gelu_new": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu}[cfg.get("hidden_act", "gelu")]
    x = s["gpt_neox.embed_in.weight"][idx]
    for L in range(cfg["num_hidden_layers"]):
        p = f"gpt_neox.layers.{L}."

        def ln(h, name):
            return F.layer_norm(h, (C,), s[p + name + ".weight"], s[p + name + ".bias"], eps)

        def attn(h):
            qkv = F.linear(h, s[p + "attention.query_key_value.weight"], s[p + "attention.query_key_value.bias"])
            qkv = qkv.view(B, T, NH, 3, HS)
            q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
            q, k = rotate(q, cos[:, :rd], sin[:, :rd], rd), rotate(k, cos[:, :rd], sin[:, :rd], rd)
            z = attention(q, k, v, HS ** -0.5, None, 0).transpose(1, 2).reshape(B, T, C)
            return F.linear(z, s[p + "attention.dense.weight"], s[p + "attention.dense.bias"])

        def mlp(h):
            u = act(F.linear(h, s[p + "mlp.dense_h_to_4h.weight"], s[p + "mlp.dense_h_to_4h.bias"]))
            return F.linear(u, s[p + "mlp.dense_4h_to_h.weight"], s[p + "mlp.dense_4h_to_h.bias"])

        if cfg.get("use_parallel_residual", True):
            x = x + attn(ln(x, "input_layernorm")) + mlp(ln(x, "post_attention_layernorm"))
        else:
            x = x + attn(ln(x, "input_layernorm"))
            x = x + mlp(ln(x, "post_attention_layernorm"))
    x = F.layer_norm(x, (C,), s["gpt_neox.final_layer_norm.weight"], s["gpt_neox.final_layer_norm.bias"], eps)
    return F.linear(x, s["embed_out.weight"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logits-out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    mt = cfg["model_type"]
    if mt not in ("llama", "mistral", "qwen2", "gemma2", "gpt_neox"):
        raise SystemExit(f"{a.model}: model_type {mt!r} is not one this peer runs")
    with open(a.tokens, "rb") as f:
        idx = torch.frombuffer(bytearray(f.read()), dtype=torch.int32).long()
    if idx.numel() != a.batch * a.seq:
        raise SystemExit(f"{a.tokens}: {idx.numel()} token ids, expected batch*seq = {a.batch * a.seq}")
    idx = idx.view(a.batch, a.seq)
    t0 = time.perf_counter()
    s = load_folder(a.model)
    load_s = time.perf_counter() - t0
    fwd = forward_neox if mt == "gpt_neox" else forward_llama
    times = []
    with torch.no_grad():
        logits = fwd(cfg, s, idx)  # warm-up
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            logits = fwd(cfg, s, idx)
            times.append(time.perf_counter() - t0)
    if not torch.isfinite(logits).all():
        raise SystemExit("non-finite logits")
    if a.logits_out:
        tmp = a.logits_out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(logits[:, -1, :].contiguous().numpy().tobytes())
        os.replace(tmp, a.logits_out)
    med = statistics.median(times)
    print(json.dumps({
        "model_type": mt, "threads": a.threads, "batch": a.batch, "seq": a.seq, "layers": cfg["num_hidden_layers"],
        "load_s": load_s, "median_s": med, "tokens_per_s": a.batch * a.seq / med, "runs": times,
        "max_abs_logit": float(logits.abs().max()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0),
    }))


if __name__ == "__main__":
    main()
