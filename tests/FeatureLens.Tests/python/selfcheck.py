#!/usr/bin/python3
"""Self-checks for torch_reference.py (run: /usr/bin/python3 selfcheck.py [--shared /work/shared]).

1. GPT-2 made by `make` (f32, bf16 with a `transformer.` prefix and shards), then `run`: hook
   invariants (resid_post = resid_mid + mlp_out, resid_mid = resid_pre + attn_out,
   attn_out = sum(result) + b_O, pattern rows sum to 1, masked scores are -inf, resid_pre[L+1] =
   resid_post[L], hook shapes), and batch independence (a sequence's hooks do not depend on the
   other sequences in the file).
2. Llama with grouped-query attention (6 heads, 2 and 3 kv heads), rotate-half RoPE: same
   invariants, plus an independent check that rot_q/rot_k rotate every (i, i+HS/2) pair without
   changing its norm, and that scores = rot_q . rot_k / sqrt(HS) with kv head h // (NH/NKV).
3. llama2.c layout: stories260K.bin run directly (interleaved RoPE) vs converted to an HF folder
   (q/k rows permuted, rotate-half RoPE): logits and all non-q/k hooks must agree.
4. generate on stories260K.bin reproduces llama2.c's greedy-n200-ids.csv.
5. f32 vs f64 distance (how precise float32 is for these models).
Exits non-zero on any failure.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_lite as st  # noqa: E402

REF = os.path.join(HERE, "torch_reference.py")
failures = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        failures.append(msg)


def ref(*args):
    r = subprocess.run([sys.executable, REF, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"torch_reference {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def maxdiff(a, b):
    """Largest |a-b|; equal entries (including equal infinities) count as 0, NaN counts as inf."""
    a, b = a.double(), b.double()
    d = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    d = torch.nan_to_num(d, nan=math.inf)
    return d.max().item() if d.numel() else 0.0


def rel(a, b):
    """maxdiff relative to the largest finite |b|."""
    fin = b.double()[torch.isfinite(b)]
    return maxdiff(a, b) / max(fin.abs().max().item() if fin.numel() else 0.0, 1e-30)


def invariants(h, b, n_layers, arch, n_heads, n_kv, hs, d, tokens, tag, o_bias=None):
    T = len(tokens)
    g = lambda n: h[f"{b}/{n}"]  # noqa: E731
    check(g("tokens").tolist() == tokens, f"{tag}: tokens stored")
    check(list(g("logits").shape)[0] == T, f"{tag}: logits shape {list(g('logits').shape)}")
    worst = 0.0
    for L in range(n_layers):
        p = f"blocks.{L}."
        worst = max(worst, rel(g(p + "hook_resid_post"), g(p + "hook_resid_mid") + g(p + "hook_mlp_out")))
        worst = max(worst, rel(g(p + "hook_resid_mid"), g(p + "hook_resid_pre") + g(p + "hook_attn_out")))
        bias = o_bias[L] if o_bias is not None else 0
        worst = max(worst, rel(g(p + "hook_attn_out"), g(p + "attn.hook_result").sum(1) + bias))
        check(torch.equal(g(p + "hook_mlp_in"), g(p + "hook_resid_mid")), f"{tag} L{L}: mlp_in == resid_mid")
        if L + 1 < n_layers:
            check(torch.equal(g(p + "hook_resid_post"), g(f"blocks.{L + 1}.hook_resid_pre")),
                  f"{tag} L{L}: resid_post == next resid_pre")
        pat = g(p + "attn.hook_pattern")
        sc = g(p + "attn.hook_attn_scores")
        check(list(pat.shape) == [n_heads, T, T] and list(sc.shape) == [n_heads, T, T], f"{tag} L{L}: pattern shape")
        check(maxdiff(pat.sum(-1), torch.ones(n_heads, T)) < 1e-5, f"{tag} L{L}: pattern rows sum to 1")
        fut = torch.ones(T, T, dtype=torch.bool).triu(1)
        check(bool(torch.isneginf(sc[:, fut]).all()) and bool(torch.isfinite(sc[:, ~fut]).all())
              and bool((pat[:, fut] == 0).all()), f"{tag} L{L}: causal mask (-inf scores, 0 pattern)")
        check(list(g(p + "attn.hook_q").shape) == [T, n_heads, hs] and list(g(p + "attn.hook_k").shape) == [T, n_kv, hs]
              and list(g(p + "attn.hook_v").shape) == [T, n_kv, hs] and list(g(p + "attn.hook_z").shape) == [T, n_heads, hs]
              and list(g(p + "attn.hook_result").shape) == [T, n_heads, d], f"{tag} L{L}: q/k/v/z/result shapes")
        check(list(g(p + "ln1.hook_scale").shape) == [T, 1] and list(g(p + "ln2.hook_normalized").shape) == [T, d],
              f"{tag} L{L}: ln shapes")
        # z = pattern @ v (kv head h // rep)
        rep = n_heads // n_kv
        v = g(p + "attn.hook_v").repeat_interleave(rep, 1).transpose(0, 1)
        check(rel(g(p + "attn.hook_z"), (pat @ v).transpose(0, 1)) < 1e-5, f"{tag} L{L}: z = pattern @ v")
        # scores = q.k / sqrt(HS) on the un-masked part, computed head by head
        qn, kn = ("attn.hook_rot_q", "attn.hook_rot_k") if arch == "llama" else ("attn.hook_q", "attn.hook_k")
        q, k = g(p + qn), g(p + kn)
        s2 = torch.stack([q[:, hh] @ k[:, hh // rep].t() for hh in range(n_heads)]) / math.sqrt(hs)
        check(rel(sc[:, ~fut], s2[:, ~fut]) < 1e-5, f"{tag} L{L}: scores = q.k/sqrt(HS), kv head h//rep")
        # attention is not uniform: the max pattern entry of the last row is well above 1/T
        if T >= 8:
            check(pat[:, -1].max(-1).values.mean().item() > 3.0 / T, f"{tag} L{L}: patterns are peaked "
                  f"(mean max of last row {pat[:, -1].max(-1).values.mean().item():.3f}, uniform {1.0 / T:.3f})")
        if arch == "llama":
            for nm, raw in (("attn.hook_rot_q", "attn.hook_q"), ("attn.hook_rot_k", "attn.hook_k")):
                a, r = g(p + nm), g(p + raw)
                # position 0 is not rotated; each (i, i+HS/2) pair keeps its norm
                check(maxdiff(a[0], r[0]) == 0, f"{tag} L{L}: {nm} at position 0 equals the unrotated value")
                half = hs // 2
                na = a[..., :half] ** 2 + a[..., half:] ** 2
                nr = r[..., :half] ** 2 + r[..., half:] ** 2
                check(rel(na, nr) < 1e-5, f"{tag} L{L}: {nm} preserves the norm of rotate-half pairs")
            pre, lin, post = g(p + "mlp.hook_pre"), g(p + "mlp.hook_pre_linear"), g(p + "mlp.hook_post")
            check(rel(post, torch.nn.functional.silu(pre) * lin) < 1e-6, f"{tag} L{L}: post = silu(pre)*pre_linear")
        else:
            pre, post = g(p + "mlp.hook_pre"), g(p + "mlp.hook_post")
            check(rel(post, torch.nn.functional.gelu(pre, approximate="tanh")) < 1e-5, f"{tag} L{L}: post = gelu_new(pre)")
    check(worst < 1e-5, f"{tag}: residual and attn_out sum invariants (worst relative diff {worst:.2e})")
    if arch == "gpt2":
        check(torch.equal(g("blocks.0.hook_resid_pre"), g("hook_embed") + g("hook_pos_embed")), f"{tag}: resid_pre0 = embed + pos")
    else:
        check(torch.equal(g("blocks.0.hook_resid_pre"), g("hook_embed")), f"{tag}: resid_pre0 = embed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.normpath(os.path.join(HERE, "../../../../shared")))
    args = ap.parse_args()
    bin_path = os.path.join(args.shared, "models/stories260K/stories260K.bin")
    ids_csv = os.path.join(args.shared, "reference/stories260K/greedy-n200-ids.csv")
    tmp = tempfile.mkdtemp(prefix="flref-")
    gen = torch.Generator().manual_seed(1234)

    def rand_tokens(vocab, lengths):
        return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]

    # 1. GPT-2
    cfg = {"d_model": 64, "n_layers": 3, "n_heads": 4, "d_mlp": 256, "vocab": 97, "n_ctx": 64}
    with open(os.path.join(tmp, "gpt2.json"), "w") as f:
        json.dump(cfg, f)
    ref("make", "--arch", "gpt2", "--config", os.path.join(tmp, "gpt2.json"), "--dtype", "f32", "--seed", "7",
        "--out", os.path.join(tmp, "gpt2"))
    ref("make", "--arch", "gpt2", "--config", os.path.join(tmp, "gpt2.json"), "--dtype", "bf16", "--seed", "7",
        "--out", os.path.join(tmp, "gpt2bf"), "--prefix", "--max-shard-mb", "0.05")
    check(os.path.exists(os.path.join(tmp, "gpt2bf/model.safetensors.index.json")), "gpt2 bf16: sharded with index")
    hdr, _, _ = st.read_header(os.path.join(tmp, "gpt2/model.safetensors"))
    check(hdr["h.0.attn.c_attn.weight"]["shape"] == [64, 192] and hdr["h.0.mlp.c_proj.weight"]["shape"] == [256, 64]
          and "lm_head.weight" not in hdr, "gpt2: HF tensor names and Conv1D [in,out] shapes")
    w = st.load(os.path.join(tmp, "gpt2/model.safetensors"))
    o_bias = [w[f"h.{L}.attn.c_proj.bias"] for L in range(3)]
    toks = rand_tokens(97, [12, 5, 1])
    with open(os.path.join(tmp, "t.json"), "w") as f:
        json.dump(toks, f)
    ref("run", "--model", os.path.join(tmp, "gpt2"), "--tokens", os.path.join(tmp, "t.json"), "--out",
        os.path.join(tmp, "gpt2.out.safetensors"))
    h = st.load(os.path.join(tmp, "gpt2.out.safetensors"))
    for b, t in enumerate(toks):
        invariants(h, b, 3, "gpt2", 4, 4, 16, 64, t, "gpt2", o_bias)
    # batch independence: sequence 1 alone gives bit-identical hooks
    with open(os.path.join(tmp, "t1.json"), "w") as f:
        json.dump([toks[1]], f)
    ref("run", "--model", os.path.join(tmp, "gpt2"), "--tokens", os.path.join(tmp, "t1.json"), "--out",
        os.path.join(tmp, "gpt2.one.safetensors"), "--hooks", "logits,blocks.2.hook_resid_post")
    h1 = st.load(os.path.join(tmp, "gpt2.one.safetensors"))
    check(sorted(h1) == ["0/blocks.2.hook_resid_post", "0/logits", "0/tokens"], "gpt2: --hooks filter")
    check(torch.equal(h1["0/logits"], h["1/logits"]), "gpt2: sequences are independent (bitwise)")
    # the bf16 copy with prefix + shards: weights are the f32 ones rounded to bf16
    wb = {}
    for fn in os.listdir(os.path.join(tmp, "gpt2bf")):
        if fn.endswith(".safetensors"):
            wb.update(st.load(os.path.join(tmp, "gpt2bf", fn)))
    check(all(k.startswith("transformer.") for k in wb) and len(wb) == len(w), "gpt2 bf16: transformer. prefix, same tensors")
    check(all(torch.equal(wb["transformer." + k], v.to(torch.bfloat16)) for k, v in w.items()),
          "gpt2 bf16: weights = f32 weights rounded to bf16 (same seed)")
    ref("run", "--model", os.path.join(tmp, "gpt2bf"), "--tokens", os.path.join(tmp, "t.json"), "--out",
        os.path.join(tmp, "gpt2bf.out.safetensors"), "--hooks", "logits")
    hb = st.load(os.path.join(tmp, "gpt2bf.out.safetensors"))
    check(hb["0/logits"].dtype == torch.float32 and 0 < rel(hb["0/logits"], h["0/logits"]) < 0.1,
          f"gpt2 bf16: runs (logits differ from f32 model by {rel(hb['0/logits'], h['0/logits']):.3f} relative)")
    print("gpt2 logit std", h["0/logits"].std().item(), "resid_post[-1] rms",
          h["0/blocks.2.hook_resid_post"].pow(2).mean().sqrt().item())

    # 2. Llama with GQA
    for nkv, tied in ((2, False), (3, True)):
        cfg = {"d_model": 96, "n_layers": 2, "n_heads": 6, "n_kv_heads": nkv, "d_mlp": 160, "vocab": 101,
               "n_ctx": 128, "tied": tied, "rope_theta": 10000.0}
        cj = os.path.join(tmp, f"llama{nkv}.json")
        with open(cj, "w") as f:
            json.dump(cfg, f)
        d = os.path.join(tmp, f"llama{nkv}")
        ref("make", "--arch", "llama", "--config", cj, "--dtype", "f32", "--seed", "11", "--out", d)
        hdr, _, _ = st.read_header(os.path.join(d, "model.safetensors"))
        check(hdr["model.layers.0.self_attn.k_proj.weight"]["shape"] == [nkv * 16, 96]
              and ("lm_head.weight" in hdr) == (not tied), f"llama kv{nkv}: k_proj shape, lm_head iff untied")
        toks = rand_tokens(101, [20, 3])
        with open(os.path.join(tmp, "tl.json"), "w") as f:
            json.dump(toks, f)
        ref("run", "--model", d, "--tokens", os.path.join(tmp, "tl.json"), "--out", d + ".out.safetensors")
        h = st.load(d + ".out.safetensors")
        for b, t in enumerate(toks):
            invariants(h, b, 2, "llama", 6, nkv, 16, 96, t, f"llama{nkv}")
        print(f"llama kv{nkv} logit std", h["0/logits"].std().item())

    # 3. llama2.c layout vs converted HF folder
    conv = os.path.join(tmp, "stories_hf")
    ref("convert-llama2c", "--bin", bin_path, "--out", conv)
    toks = rand_tokens(512, [40, 7])
    toks[0][0] = 1
    with open(os.path.join(tmp, "ts.json"), "w") as f:
        json.dump(toks, f)
    ref("run", "--model", bin_path, "--tokens", os.path.join(tmp, "ts.json"), "--out", os.path.join(tmp, "bin.out.safetensors"))
    ref("run", "--model", conv, "--tokens", os.path.join(tmp, "ts.json"), "--out", os.path.join(tmp, "hf.out.safetensors"))
    hb, hh = st.load(os.path.join(tmp, "bin.out.safetensors")), st.load(os.path.join(tmp, "hf.out.safetensors"))
    check(sorted(hb) == sorted(hh), "stories: same hook set from .bin and HF folder")
    worst_logit = max(rel(hh[f"{b}/logits"], hb[f"{b}/logits"]) for b in range(2))
    check(worst_logit < 1e-5, f"stories: logits .bin (interleaved) vs HF (rotate-half): rel diff {worst_logit:.2e}")
    worst = max(rel(hh[k], hb[k]) for k in hb if not any(s in k for s in ("hook_q", "hook_k", "hook_rot_")))
    check(worst < 1e-5, f"stories: every non-q/k hook agrees (worst rel diff {worst:.2e})")
    # q/k hooks agree after the per-head permutation
    perm = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])
    wq = max(rel(hh[k], hb[k][..., perm]) for k in hb if any(s in k for s in ("hook_q", "hook_k", "hook_rot_")))
    check(wq < 1e-5, f"stories: q/k/rot_q/rot_k agree up to the [0,2,4,..,1,3,5,..] permutation ({wq:.2e})")
    check(hb["0/blocks.0.attn.hook_k"].shape[1] == 4, "stories: k has 4 kv heads (not repeated)")

    # hook_normalized is taken before the norm's weight and bias: mean 0, mean square ~1 (LayerNorm)
    ref("run", "--model", os.path.join(tmp, "gpt2"), "--tokens", os.path.join(tmp, "t.json"), "--out",
        os.path.join(tmp, "g3.safetensors"), "--hooks", "blocks.0.ln1.hook_normalized")
    n3 = st.load(os.path.join(tmp, "g3.safetensors"))["0/blocks.0.ln1.hook_normalized"]
    check(maxdiff(n3.mean(-1), torch.zeros(n3.shape[0])) < 1e-5 and maxdiff(n3.pow(2).mean(-1), torch.ones(n3.shape[0])) < 1e-3,
          "gpt2: ln1.hook_normalized has mean 0 and mean square ~1 (before weight and bias)")

    # 4. generate
    out = ref("generate", "--model", bin_path, "--steps", "200").strip().split(",")
    expect = [x.strip() for x in open(ids_csv).read().split(",") if x.strip().isdigit()]
    check(out == expect, f"stories: greedy 200 steps reproduce llama2.c ({len(out)} ids, expected {len(expect)})")

    # 5. f32 vs f64
    ref("run", "--model", bin_path, "--tokens", os.path.join(tmp, "ts.json"), "--out", os.path.join(tmp, "bin64.safetensors"),
        "--compute", "f64", "--hooks", "logits")
    h64 = st.load(os.path.join(tmp, "bin64.safetensors"))
    d = rel(hb["0/logits"], h64["0/logits"])
    check(d < 1e-4, f"stories: f32 vs f64 logits rel diff {d:.2e}")

    if not failures:
        shutil.rmtree(tmp)
    print(f"\n{len(failures)} failures" + (f"; scratch folder kept: {tmp}" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
