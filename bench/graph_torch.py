#!/usr/bin/python3
"""PyTorch peer of the attribution-graph benchmark (bench/FeatureLens.Bench/GraphBench.cs); prints one JSON line.

graph_torch.py --model PATH --transcoders DIR --work FILE --threads T [--batch 64]

PATH: an HF GPT-2/Llama folder or a llama2.c .bin (read with the test tree's torch_reference.load_model; its clean
forward records the attention patterns and norm scales). DIR: one SAELens transcoder folder per layer (cfg.json +
sae_weights.safetensors; topk_transcoder or transcoder; reading blocks.L.ln2.hook_normalized, writing
blocks.L.hook_mlp_out; written by the C# side). FILE: JSON {"tokens": [...], "targets": [[kind, layer, pos, index],
...], "sample": [target indices]} — the targets FeatureLens computed rows for (kind 0 feature, 3 logit), in its order.

The work (circuit-tracer's way, float32): one clean forward (patterns, scales, the transcoders' activations and
errors), then the frozen replacement model built once as an autograd graph over a batch of copies of the prompt —
leaves: each layer's MLP output (= transcoder output + error, shape (batch, T, C)) and the embeddings; attention
patterns and norm scales constants — and one torch.autograd.grad per batch of targets, seeded at the targets'
encoder inputs (W_enc column at the transcoder's input hook and position) or, for logits, at the frozen final norm's
output (w_f ⊙ (W_U[:, v] − mean_v W_U)). A row A[t, ·]: a_s·(g_mlp_out[l, p]·W_dec[j]) for active latents, g·e for
errors, g·emb for embeddings, written into a (targets × sources) float32 matrix (sources ordered as FeatureLens's:
features by (layer, pos, latent), errors by (layer, pos), embeddings by pos).
Timed: everything after loading (clean forward, activations, graph build, all rows). The JSON carries the time, peak
RSS, the source count and, for the sample targets, the row's entries of largest magnitude [source, value] and its sum.
"""

import argparse
import json
import math
import os
import sys
import time

import torch_threads  # noqa: F401  (sets the thread count before torch loads)
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "FeatureLens.Tests", "python"))
import safetensors_lite as st  # noqa: E402
from torch_reference import load_model, forward, Recorder  # noqa: E402
import torch_forward as tf  # noqa: E402  (peak_rss_gib)


def load_transcoders(folder, n_layers):
    tcs = [None] * n_layers
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if not os.path.isfile(os.path.join(sub, "cfg.json")):
            continue
        with open(os.path.join(sub, "cfg.json")) as f:
            cfg = json.load(f)
        hook = cfg["metadata"]["hook_name"] if "metadata" in cfg else cfg["hook_name"]
        layer = int(hook.split(".")[1])
        assert hook.endswith("ln2.hook_normalized"), hook
        assert cfg["architecture"] in ("topk_transcoder", "transcoder"), cfg["architecture"]
        w = st.load(os.path.join(sub, "sae_weights.safetensors"))
        tcs[layer] = {"k": cfg.get("k"), "arch": cfg["architecture"],
                      **{n: w[n].float().contiguous() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}}
    assert all(t is not None for t in tcs), "a layer has no transcoder"
    return tcs


def weights(model, L):
    w, C = model["w"], model["cfg"]["d_model"]
    if model["arch"] == "gpt2":
        Wqkv, bqkv = w[f"{L}.W_qkv"], w[f"{L}.b_qkv"]
        return Wqkv[:, 2 * C:], bqkv[2 * C:], w[f"{L}.W_o"], w[f"{L}.b_o"], w[f"{L}.ln1_w"], w[f"{L}.ln1_b"]
    return w[f"{L}.wv"].t(), None, w[f"{L}.wo"].t(), None, w[f"{L}.rms1"], None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(a.model, torch.float32)
    cfg = model["cfg"]
    L, C, NH, NKV = cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
    HS = C // NH
    layer_norm = model["arch"] == "gpt2"
    tcs = load_transcoders(a.transcoders, L)
    with open(a.work) as f:
        work = json.load(f)
    tokens, targets = work["tokens"], work["targets"]
    T = len(tokens)

    t0 = time.perf_counter()
    # ---- clean forward: what is frozen, the transcoders' activations and errors ----
    rec = Recorder()
    forward(model, tokens, rec)
    c = rec.cache

    def norm(x, scale):
        return ((x - x.mean(-1, keepdim=True)) if layer_norm else x) / scale

    acts, errors, mlp_vals = [], [], []
    for l, t in enumerate(tcs):
        pre = c[f"blocks.{l}.ln2.hook_normalized"] @ t["W_enc"] + t["b_enc"]
        if t["arch"] == "topk_transcoder":
            top = torch.topk(pre, t["k"], dim=-1)
            f = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        else:
            f = pre.relu()
        out = f @ t["W_dec"] + t["b_dec"]
        acts.append(f)
        errors.append(c[f"blocks.{l}.hook_mlp_out"] - out)
        mlp_vals.append(c[f"blocks.{l}.hook_mlp_out"])
    emb = c["hook_embed"] + (c["hook_pos_embed"] if "hook_pos_embed" in c else 0)
    active = [f.nonzero() for f in acts]  # (n_l, 2) [pos, latent], row-major = sorted by (pos, latent)
    n_feat = sum(x.shape[0] for x in active)
    S = n_feat + L * T + T
    offsets = [0]
    for x in active:
        offsets.append(offsets[-1] + x.shape[0])
    a_vals = [acts[l][active[l][:, 0], active[l][:, 1]] for l in range(L)]
    wdec_rows = [tcs[l]["W_dec"][active[l][:, 1]] for l in range(L)]  # (n_l, C)
    wf = model["w"]["lnf_w"] if layer_norm else model["w"]["norm"]
    WU = model["w"]["wte"].t() if layer_norm else model["w"]["lm_head"].t()  # (C, V)
    wu_mean = WU.mean(1)

    # ---- the frozen replacement model as one autograd graph over a batch of prompt copies ----
    B = a.batch
    torch.set_grad_enabled(True)
    M = [mlp_vals[l].expand(B, T, C).clone().requires_grad_(True) for l in range(L)]
    E = emb.expand(B, T, C).clone().requires_grad_(True)
    x = E
    tin = []
    for l in range(L):
        Wv, bv, Wo, bo, w1, b1 = weights(model, l)
        h = norm(x, c[f"blocks.{l}.ln1.hook_scale"]) * w1 + (b1 if b1 is not None else 0)
        v = (h @ Wv + (bv if bv is not None else 0)).view(B, T, NKV, HS).repeat_interleave(NH // NKV, dim=2)
        z = torch.matmul(c[f"blocks.{l}.attn.hook_pattern"], v.transpose(1, 2)).transpose(1, 2).reshape(B, T, C)
        x = x + z @ Wo + (bo if bo is not None else 0)
        tin.append(norm(x, c[f"blocks.{l}.ln2.hook_scale"]))
        x = x + M[l]
    final = norm(x, c["ln_final.hook_scale"])

    rows = torch.empty(len(targets), S)
    for b0 in range(0, len(targets), B):
        batch = targets[b0:b0 + B]
        seeds = {}
        for i, (kind, layer, pos, index) in enumerate(batch):
            key = layer if kind == 0 else L
            if key not in seeds:
                seeds[key] = torch.zeros(B, T, C)
            if kind == 0:
                seeds[key][i, pos] = tcs[layer]["W_enc"][:, index]
            else:
                seeds[key][i, T - 1] = wf * (WU[:, index] - wu_mean)
        outs = [tin[k] if k < L else final for k in seeds]
        grads = torch.autograd.grad(outs, M + [E], grad_outputs=list(seeds.values()), retain_graph=True, allow_unused=True)
        with torch.no_grad():
            n = len(batch)
            for l in range(L):
                g = grads[l]
                if g is None:
                    rows[b0:b0 + n, offsets[l]:offsets[l + 1]] = 0
                    rows[b0:b0 + n, n_feat + l * T:n_feat + (l + 1) * T] = 0
                    continue
                g = g[:n]
                G = g[:, active[l][:, 0], :]  # (n, n_l, C)
                rows[b0:b0 + n, offsets[l]:offsets[l + 1]] = (G * wdec_rows[l]).sum(-1) * a_vals[l]
                rows[b0:b0 + n, n_feat + l * T:n_feat + (l + 1) * T] = (g * errors[l]).sum(-1)
            ge = grads[L][:n] if grads[L] is not None else torch.zeros(n, T, C)
            rows[b0:b0 + n, n_feat + L * T:] = (ge * emb).sum(-1)
    seconds = time.perf_counter() - t0

    sample = []
    for i in work.get("sample", []):
        r = rows[i]
        top = torch.topk(r.abs(), min(8, S)).indices.tolist()
        sample.append({"target": i, "sum": r.double().sum().item(), "top": [[j, r[j].item()] for j in top]})
    print(json.dumps({"seconds": seconds, "threads": a.threads, "peak_rss_gib": tf.peak_rss_gib(), "sources": S,
                      "features": n_feat, "rows": len(targets), "sample": sample}))


if __name__ == "__main__":
    main()
