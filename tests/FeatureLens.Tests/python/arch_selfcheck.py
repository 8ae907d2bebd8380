#!/usr/bin/python3
"""Self-checks for arch_reference.py (run: /usr/bin/python3 arch_selfcheck.py [--seed S]).

Fresh random configs every run (the seed is printed first; pass --seed to repeat a run).
(a) Old paths: gpt2 and llama folders that torch_reference's legacy forwards already run give the same hooks and
    logits through arch_reference (float32: <= 1e-6 relative; float64 via grad_reference: <= 1e-12).
(b) Finite differences (float64, central) agree with autograd at random entries of every hook of each new family
    (gemma2, gpt_neox parallel and sequential, llama with llama3/linear/dynamic rope and head_dim != hidden/heads,
    qwen2 with biases and sliding window, mistral, gpt2 gelu/relu/quick_gelu/silu), also with the extra mlp hooks.
(c) Properties: Gemma 2 with soft-caps -> huge and windows >= T equals the same model without them (and the real
    caps and windows do change it); GPT-NeoX sequential with no rotary dims and gelu_new equals the legacy GPT-2
    forward on the same weights; partial rotary leaves dims >= rotary_ndims untouched and keeps pair norms;
    parallel NeoX adds both branches to resid_pre; dynamic rope with L <= original max equals plain rope (and
    differs above it); llama3 rope with factor 1 equals plain rope, with every wavelength above O/low equals linear
    scaling, with every wavelength below O/high equals plain, and is continuous across its band edges; masks
    (-inf scores / zero pattern exactly outside 0 <= i-j < window), scores = softcap(rot_q.rot_k * scale) head by
    head with kv head h // rep, Gemma's (1 + w) post-norm and sqrt(d) embedding scale, GPT-2 activations vs
    torch's own gelu/relu/silu.
Prints "N failures" last and exits non-zero when N > 0.
"""

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import arch_reference as ar  # noqa: E402
import grad_reference as gr  # noqa: E402
import torch_reference as tr  # noqa: E402

failures = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        failures.append(msg)


def rel(a, b):
    """max |a - b| over entries finite in b / max |b|; infinities must coincide (else inf)."""
    a, b = a.double(), b.double()
    fin = torch.isfinite(b)
    if not bool((torch.isfinite(a) == fin).all()) or not bool((a[~fin] == b[~fin]).all()):
        return math.inf
    if not fin.any():
        return 0.0
    return ((a[fin] - b[fin]).abs().max() / b[fin].abs().max().clamp_min(1e-30)).item()


def random_config(rng, case):
    """A config.json for one case, small sizes; windows 2..5 so they bite on 3..14 tokens."""
    NKV = rng.choice([1, 2])
    NH = NKV * rng.choice([1, 2, 3])
    HS = 2 * rng.randint(2, 6)
    C = rng.choice([12, 16, 20, 24])
    L = rng.randint(2, 3)
    base = {"num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV, "hidden_size": C,
            "intermediate_size": rng.randint(17, 40), "vocab_size": rng.randint(40, 90), "max_position_embeddings": 32,
            "rope_theta": rng.choice([10000.0, 500.0]), "rms_norm_eps": 1e-6}
    if case == "gemma2":
        base.update(model_type="gemma2", head_dim=HS, query_pre_attn_scalar=rng.choice([HS, 2 * HS, 3 * HS]),
                    attn_logit_softcapping=rng.uniform(5, 20), final_logit_softcapping=rng.uniform(2, 10),
                    sliding_window=rng.randint(2, 5), hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    elif case.startswith("neox"):
        H = rng.randint(2, 4)
        base = {"model_type": "gpt_neox", "hidden_size": H * HS, "num_attention_heads": H, "num_hidden_layers": L,
                "intermediate_size": rng.randint(17, 40), "vocab_size": rng.randint(40, 90), "max_position_embeddings": 32,
                "rotary_pct": rng.choice([0.25, 0.5, 1.0]), "rotary_emb_base": 10000.0, "layer_norm_eps": 1e-5,
                "use_parallel_residual": case == "neox-parallel", "hidden_act": "gelu", "tie_word_embeddings": False}
        if int(HS * base["rotary_pct"]) % 2:
            base["rotary_pct"] = 1.0
    elif case.startswith("llama"):
        base.update(model_type="llama", head_dim=HS, hidden_act="silu", tie_word_embeddings=rng.random() < 0.5,
                    attention_bias=rng.random() < 0.5)
        kind = case.split("-")[1]
        if kind == "llama3":
            base["rope_scaling"] = {"rope_type": "llama3", "factor": rng.uniform(2, 32), "low_freq_factor": rng.uniform(0.5, 2),
                                    "high_freq_factor": rng.uniform(3, 8), "original_max_position_embeddings": rng.randint(16, 64)}
        elif kind == "linear":
            base["rope_scaling"] = {"type": "linear", "factor": rng.uniform(1.5, 8)}
        else:
            base["rope_scaling"] = {"rope_type": "dynamic", "factor": rng.uniform(1.5, 8), "original_max_position_embeddings": rng.randint(3, 6)}
    elif case == "qwen2":
        base.update(model_type="qwen2", hidden_act="silu", tie_word_embeddings=rng.random() < 0.5, use_sliding_window=True,
                    sliding_window=rng.randint(2, 5), max_window_layers=rng.randint(0, L - 1))
        base["hidden_size"] = NH * HS
    elif case == "mistral":
        base.update(model_type="mistral", head_dim=HS, hidden_act="silu", sliding_window=rng.randint(2, 5), tie_word_embeddings=False)
    elif case.startswith("gpt2"):
        H = rng.randint(2, 4)
        base = {"model_type": "gpt2", "n_embd": H * HS, "n_head": H, "n_layer": L, "n_inner": rng.randint(17, 40),
                "vocab_size": rng.randint(40, 90), "n_positions": 32, "layer_norm_epsilon": 1e-5,
                "activation_function": case.split("-")[1]}
    else:
        raise ValueError(case)
    return base


def make(tmp, hf, seed, qk_gain=1.0, dtype="f32", name=None):
    name = name or f"{hf['model_type']}-{seed}"
    cpath = os.path.join(tmp, name + ".json")
    with open(cpath, "w") as f:
        json.dump(hf, f)
    out = os.path.join(tmp, name)
    tr.cmd_make(argparse.Namespace(arch="hf", config=cpath, dtype=dtype, seed=seed, out=out, prefix=False, max_shard_mb=None,
                                   qk_gain=qk_gain))
    return out


def run32(model, toks, extra=False):
    rec = tr.Recorder(None)
    with torch.no_grad():
        if model["arch"] == "generic":
            tr.generic_forward(model, toks, rec, extra=extra)
        else:
            tr.forward(model, toks, rec)
    return rec.cache


def run64(model, toks):
    _, g = gr.run_sequence(model, toks, gr.parse_metric("logit:0"), "logit:0", f64_angles=True, backward=False)
    return {k: v.detach() for k, v in g.nodes.items()}


def compare_all(a, b, label, tol, skip=()):
    names = [n for n in b if n not in skip]
    missing = [n for n in names if n not in a]
    worst, at = 0.0, ""
    for n in names:
        if n in a:
            e = rel(a[n], b[n])
            if e > worst:
                worst, at = e, n
    check(not missing and worst <= tol, f"{label}: {len(names)} hooks agree, worst relative {worst:.1e} at {at}"
          + (f"; missing {missing[:3]}" if missing else ""))
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer finite-difference metrics")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 1_000_000_007
    print(f"seed {seed}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    tmp = tempfile.mkdtemp(prefix="arch_selfcheck_")

    def toks_for(V, n):
        return [rng.randrange(V) for _ in range(n)]

    # (a) legacy paths vs arch_reference on configs both run
    g2 = gr.make_model(tmp, "gpt2", dict(d_model=12, n_layers=2, n_heads=3, d_mlp=20, vocab=23, n_ctx=16), rng.randrange(10**6))
    ll = gr.make_model(tmp, "llama", dict(d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=24, vocab=29, n_ctx=16,
                                          tied=rng.random() < 0.5, rope_theta=500.0), rng.randrange(10**6))
    for label, path, V in (("gpt2", g2, 23), ("llama", ll, 29)):
        toks = toks_for(V, rng.randint(5, 14))
        old32, new32 = run32(tr.load_model(path, torch.float32), toks), run32(tr.load_model(path, torch.float32, generic=True), toks)
        check(set(old32) == set(new32), f"(a) {label}: same hook names legacy vs arch_reference ({len(old32)})")
        compare_all(new32, old32, f"(a) {label} float32 legacy vs arch_reference", 1e-6)
        torch.set_grad_enabled(True)
        old64, new64 = run64(tr.load_model(path, torch.float64), toks), run64(tr.load_model(path, torch.float64, generic=True), toks)
        torch.set_grad_enabled(False)
        compare_all(new64, old64, f"(a) {label} float64 legacy vs arch_reference", 1e-12)

    # (b) finite differences vs autograd for each new family
    cases = ["gemma2", "neox-parallel", "neox-sequential", "llama-llama3", "llama-linear", "llama-dynamic", "qwen2", "mistral",
             "gpt2-gelu", "gpt2-relu", "gpt2-quick_gelu", "gpt2-silu"]
    models = {}
    for case in cases:
        hf = random_config(rng, case)
        path = make(tmp, hf, rng.randrange(10**6), qk_gain=3.0 if case == "gemma2" else 1.0, name=case)
        models[case] = (hf, path)
        model = tr.load_model(path, torch.float64)
        check(model["arch"] == "generic", f"{case}: runs through arch_reference")
        V = ar.parse_config(hf)["V"]
        toks = toks_for(V, rng.randint(6, 12))
        torch.set_grad_enabled(True)
        metrics = ["logprob:%d@-2" % rng.randrange(V)] if args.quick else ["logprob:%d@-2" % rng.randrange(V), "loss"]
        for mt in metrics:
            gr.fd_check(model, toks, mt, [], f"(b) {case} {json.dumps(hf, sort_keys=True)}", n_entries=1)
        torch.set_grad_enabled(False)
    # extra hooks as graph nodes
    model = tr.load_model(models["gemma2"][1], torch.float64)
    model["extra"] = True
    torch.set_grad_enabled(True)
    _, g = gr.fd_check(model, toks_for(ar.parse_config(models["gemma2"][0])["V"], 9), "loss", [], "(b) gemma2 with mlp.hook_in/hook_out", n_entries=1)
    check(all(f"blocks.{L}.mlp.hook_in" in g.nodes and f"blocks.{L}.mlp.hook_out" in g.nodes for L in range(model["cfg"]["L"])),
          "(b) extra hooks are graph nodes when asked for")
    torch.set_grad_enabled(False)

    # (c) properties
    # Gemma 2: caps -> huge and windows >= T equal no caps / no windows; the real ones bite
    hf, path = models["gemma2"]
    V = ar.parse_config(hf)["V"]
    toks = toks_for(V, 12)
    torch.set_grad_enabled(True)
    base = tr.load_model(path, torch.float64)
    plain = dict(base, cfg=dict(base["cfg"], attn_softcap=None, final_softcap=None, windows=[0] * base["cfg"]["L"]))
    limit = dict(base, cfg=dict(base["cfg"], attn_softcap=1e7, final_softcap=1e7, windows=[len(toks) + rng.randint(0, 3)] * base["cfg"]["L"]))
    hp, hl, hb = run64(plain, toks), run64(limit, toks), run64(base, toks)
    compare_all(hl, hp, "(c) gemma2 softcaps 1e7 and windows >= T vs none", 1e-9)
    check(rel(hb["logits"], hp["logits"]) > 1e-3, f"(c) gemma2: the random caps/windows change the logits ({rel(hb['logits'], hp['logits']):.2e})")
    capped = hb["blocks.0.attn.hook_attn_scores"]
    cap = base["cfg"]["attn_softcap"]
    fin = torch.isfinite(capped)
    check(capped[fin].abs().max().item() < cap and capped[fin].abs().max().item() > 0.3 * cap,
          f"(c) gemma2: scores within the cap {cap:.2f} and reaching it (max |s| {capped[fin].abs().max().item():.2f})")
    # Gemma's (1 + w): attn_out = ln1_post.hook_normalized * (1 + w_file); embed = rows * float32(sqrt(C))
    state = tr.load_hf_state(path)
    w1 = state["model.layers.0.post_attention_layernorm.weight"].double()
    check(rel(hb["blocks.0.hook_attn_out"], hb["blocks.0.ln1_post.hook_normalized"] * (1 + w1)) < 1e-12,
          "(c) gemma2: hook_attn_out = ln1_post.hook_normalized * (1 + w)")
    emb = state["model.embed_tokens.weight"].double()[torch.tensor(toks)] * float(torch.tensor(math.sqrt(hf["hidden_size"]), dtype=torch.float32))
    check(rel(hb["hook_embed"], emb) < 1e-15, "(c) gemma2: hook_embed = embed_tokens rows * float32(sqrt(hidden))")
    lnf = hb["ln_final.hook_normalized"] * (1 + state["model.norm.weight"].double())
    fc = base["cfg"]["final_softcap"]
    check(rel(hb["logits"], fc * torch.tanh(lnf @ state["model.embed_tokens.weight"].double().t() / fc)) < 1e-12,
          "(c) gemma2: logits = cap*tanh(ln_final(x) @ unscaled embed^T / cap)")
    torch.set_grad_enabled(False)

    # masks and scores, head by head, for every model with windows or caps
    for case in ("gemma2", "qwen2", "mistral", "neox-parallel", "llama-llama3"):
        hf, path = models[case]
        model = tr.load_model(path, torch.float64)
        c = model["cfg"]
        toks = toks_for(c["V"], 13)
        torch.set_grad_enabled(True)
        h = run64(model, toks)
        torch.set_grad_enabled(False)
        T, rep = len(toks), c["NH"] // c["NKV"]
        worst, mask_ok, sum_ok = 0.0, True, True
        for L in range(c["L"]):
            p = f"blocks.{L}.attn."
            q = h[p + "hook_rot_q"]
            k = h[p + "hook_rot_k"]
            sc, pat = h[p + "hook_attn_scores"], h[p + "hook_pattern"]
            win = c["windows"][L]
            for hh in range(c["NH"]):
                s = q[:, hh] @ k[:, hh // rep].t() * ((c["qpas"] ** -0.5) if c.get("qpas") else 1.0 / math.sqrt(c["HS"]))
                if c.get("attn_softcap"):
                    s = c["attn_softcap"] * torch.tanh(s / c["attn_softcap"])
                for i in range(T):
                    for j in range(T):
                        vis = 0 <= i - j and (win == 0 or i - j < win)
                        if vis:
                            worst = max(worst, abs(sc[hh, i, j].item() - s[i, j].item()) / max(1.0, abs(s[i, j].item())))
                        else:
                            mask_ok &= sc[hh, i, j].item() == -math.inf and pat[hh, i, j].item() == 0
            sum_ok &= bool(((pat.sum(-1) - 1).abs() < 1e-12).all())
        check(worst < 1e-12 and mask_ok and sum_ok, f"(c) {case}: scores = softcap(rot_q.rot_k*scale) with kv head h//{rep}, "
              f"windows {c['windows']} mask exactly, rows sum to 1 (worst {worst:.1e})")

    # NeoX sequential, no rotary dims, gelu_new, tied == the legacy GPT-2 forward on the same weights
    hf = dict(random_config(rng, "neox-sequential"), rotary_pct=0.0, hidden_act="gelu_new", tie_word_embeddings=True)
    path = make(tmp, hf, rng.randrange(10**6), name="neox-as-gpt2")
    nm = tr.load_model(path, torch.float32)
    w, c = nm["w"], nm["cfg"]
    gw = {"wte": w["embed"], "wpe": torch.zeros(c["n_ctx"], c["C"]), "lnf_w": w["lnf_w"], "lnf_b": w["lnf_b"]}
    for L in range(c["L"]):
        gw.update({f"{L}.ln1_w": w[f"{L}.ln1_w"], f"{L}.ln1_b": w[f"{L}.ln1_b"], f"{L}.ln2_w": w[f"{L}.ln2_w"], f"{L}.ln2_b": w[f"{L}.ln2_b"],
                   f"{L}.W_qkv": torch.cat([w[f"{L}.Wq"].t(), w[f"{L}.Wk"].t(), w[f"{L}.Wv"].t()], 1),
                   f"{L}.b_qkv": torch.cat([w[f"{L}.bq"], w[f"{L}.bk"], w[f"{L}.bv"]]), f"{L}.W_o": w[f"{L}.Wo"].t(),
                   f"{L}.b_o": w[f"{L}.bo"], f"{L}.W_fc": w[f"{L}.W_in"].t(), f"{L}.b_fc": w[f"{L}.b_in"],
                   f"{L}.W_proj": w[f"{L}.W_out"].t(), f"{L}.b_proj": w[f"{L}.b_out"]})
    gm = {"arch": "gpt2", "cfg": dict(n_layers=c["L"], d_model=c["C"], n_heads=c["NH"], n_kv_heads=c["NH"], d_mlp=c["M"], vocab=c["V"],
                                      n_ctx=c["n_ctx"], eps=c["eps"]), "w": gw}
    toks = toks_for(c["V"], 11)
    hn, hg = run32(nm, toks), run32(gm, toks)
    compare_all(hn, hg, "(c) neox sequential, rotary_pct 0, gelu_new vs legacy GPT-2 on the same weights", 1e-5,
                skip=("hook_pos_embed",) + tuple(f"blocks.{L}.attn.hook_rot_{x}" for L in range(c["L"]) for x in "qk"))
    # partial rotary and parallel residual
    hf, path = models["neox-parallel"]
    model = tr.load_model(path, torch.float32)
    c = model["cfg"]
    toks = toks_for(c["V"], 10)
    h = run32(model, toks)
    rd = c["rope"]["dim"]
    ok_tail = all(torch.equal(h[f"blocks.{L}.attn.hook_rot_{x}"][..., rd:], h[f"blocks.{L}.attn.hook_{x}"][..., rd:]) for L in range(c["L"]) for x in "qk")
    ok_pairs = all(rel(h[f"blocks.{L}.attn.hook_rot_q"][..., :rd // 2] ** 2 + h[f"blocks.{L}.attn.hook_rot_q"][..., rd // 2:rd] ** 2,
                       h[f"blocks.{L}.attn.hook_q"][..., :rd // 2] ** 2 + h[f"blocks.{L}.attn.hook_q"][..., rd // 2:rd] ** 2) < 1e-5
                   for L in range(c["L"]))
    check(ok_tail and ok_pairs, f"(c) neox rotary_pct {hf['rotary_pct']}: dims >= {rd} untouched, (i, i+{rd // 2}) pairs keep their norm")
    par = max(rel(h[f"blocks.{L}.hook_resid_post"], h[f"blocks.{L}.hook_resid_pre"] + h[f"blocks.{L}.hook_attn_out"] + h[f"blocks.{L}.hook_mlp_out"])
              for L in range(c["L"]))
    check(par < 1e-6 and all(torch.equal(h[f"blocks.{L}.hook_mlp_in"], h[f"blocks.{L}.hook_resid_pre"]) for L in range(c["L"]))
          and not any(f"blocks.{L}.hook_resid_mid" in h for L in range(c["L"])),
          f"(c) neox parallel: resid_post = resid_pre + attn_out + mlp_out ({par:.1e}), mlp_in = resid_pre, no resid_mid")
    # per-head fused qkv layout: the file's rows [h*3HS, h*3HS+HS) are head h's query
    st_ = tr.load_hf_state(path)
    qkv = st_["gpt_neox.layers.0.attention.query_key_value.weight"]
    HS = c["HS"]
    check(all(torch.equal(model["w"]["0.Wq"][hh * HS:(hh + 1) * HS], qkv[hh * 3 * HS:hh * 3 * HS + HS]) and
              torch.equal(model["w"]["0.Wv"][hh * HS:(hh + 1) * HS], qkv[hh * 3 * HS + 2 * HS:hh * 3 * HS + 3 * HS]) for hh in range(c["NH"])),
          "(c) neox: query_key_value rows are per head [q; k; v]")

    # rope scaling identities
    hf, path = models["llama-dynamic"]
    model = tr.load_model(path, torch.float32)
    c = model["cfg"]
    orig = c["rope"]["scaling"]["orig"]
    plain = dict(model, cfg=dict(c, rope=dict(c["rope"], scaling=None)))
    toks = toks_for(c["V"], orig)
    compare_all(run32(model, toks), run32(plain, toks), f"(c) dynamic rope with L = {orig} <= original max equals plain rope", 0.0)
    toks = toks_for(c["V"], orig + rng.randint(2, 8))
    d = rel(run32(model, toks)["logits"], run32(plain, toks)["logits"])
    check(d > 1e-4, f"(c) dynamic rope with L = {len(toks)} > {orig} differs from plain ({d:.1e})")
    sc = c["rope"]["scaling"]
    rd = c["rope"]["dim"]
    Lr = len(toks)
    theta2 = c["rope"]["theta"] * (sc["factor"] * Lr / orig - (sc["factor"] - 1)) ** (rd / (rd - 2))
    check(rel(ar.inv_freq(c["rope"], Lr), ar.inv_freq(dict(c["rope"], theta=theta2, scaling=None), Lr)) == 0,
          "(c) dynamic rope = plain rope with the grown base")
    hf, path = models["llama-llama3"]
    model = tr.load_model(path, torch.float32)
    c = model["cfg"]
    sc3 = c["rope"]["scaling"]
    plain = dict(model, cfg=dict(c, rope=dict(c["rope"], scaling=None)))
    one = dict(model, cfg=dict(c, rope=dict(c["rope"], scaling=dict(sc3, factor=1.0))))
    toks = toks_for(c["V"], 12)
    compare_all(run32(one, toks), run32(plain, toks), "(c) llama3 rope with factor 1 equals plain rope", 0.0)
    # every wavelength (>= 2*pi) above O/low when O/low < 2*pi: every plane is divided by factor = linear scaling
    tiny = dict(c["rope"], scaling=dict(sc3, orig=1, low=1.0, high=max(sc3["high"], 1.5)))
    lin = dict(c["rope"], scaling={"type": "linear", "factor": sc3["factor"]})
    check(rel(ar.inv_freq(tiny, 12), ar.inv_freq(lin, 12)) == 0, "(c) llama3 rope with all wavelengths > O/low equals linear")
    big = dict(c["rope"], scaling=dict(sc3, orig=10**12))
    check(rel(ar.inv_freq(big, 12), ar.inv_freq(dict(c["rope"], scaling=None), 12)) == 0, "(c) llama3 rope with all wavelengths < O/high equals plain")
    worst = 0.0
    for _ in range(400):  # continuity across the band edges: O -> O + dO moves every plane by O(dO)
        o = rng.uniform(1, 4000)
        a = ar.inv_freq(dict(c["rope"], scaling=dict(sc3, orig=o)), 12).double()
        b = ar.inv_freq(dict(c["rope"], scaling=dict(sc3, orig=o * (1 + 1e-7))), 12).double()
        worst = max(worst, ((a - b).abs() / a).max().item())
    check(worst < 1e-5, f"(c) llama3 rope is continuous in original_max_position_embeddings (worst relative jump {worst:.1e})")
    fin = ar.inv_freq(c["rope"], 12).double()
    base_inv = ar.inv_freq(dict(c["rope"], scaling=None), 12).double()
    ratio = fin / base_inv
    check(bool(((ratio >= 1 / sc3["factor"] - 1e-6) & (ratio <= 1 + 1e-6)).all()) and ratio.min() < 0.99,
          f"(c) llama3 rope: every plane scaled by a factor in [1/factor, 1] and some by less than 1 ({ratio.min().item():.3f})")

    # GPT-2 activations vs torch's own
    for case, fn in (("gpt2-gelu", torch.nn.functional.gelu), ("gpt2-relu", torch.relu), ("gpt2-silu", torch.nn.functional.silu),
                     ("gpt2-quick_gelu", lambda x: x * torch.sigmoid(1.702 * x))):
        hf, path = models[case]
        model = tr.load_model(path, torch.float32)
        h = run32(model, toks_for(model["cfg"]["V"], 9))
        worst = max(rel(h[f"blocks.{L}.mlp.hook_post"], fn(h[f"blocks.{L}.mlp.hook_pre"])) for L in range(model["cfg"]["L"]))
        check(worst < 1e-6, f"(c) {case}: mlp.hook_post = act(mlp.hook_pre) ({worst:.1e})")
    # hook set of arch_reference without extras excludes mlp.hook_in/out; with extras mlp.hook_out = hook_mlp_out outside Gemma
    hf, path = models["qwen2"]
    model = tr.load_model(path, torch.float32)
    toks = toks_for(model["cfg"]["V"], 7)
    h0, h1 = run32(model, toks), run32(model, toks, extra=True)
    check(not any(".mlp.hook_in" in n or ".mlp.hook_out" in n for n in h0), "(c) no extra hooks unless asked")
    check(all(torch.equal(h1[f"blocks.{L}.mlp.hook_out"], h1[f"blocks.{L}.hook_mlp_out"]) for L in range(model["cfg"]["L"])),
          "(c) qwen2: mlp.hook_out = hook_mlp_out")
    # bad configs are refused naming the field
    for label, hf, field in (("yarn", dict(random_config(rng, "llama-linear"), rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
                             ("gemma2 no head_dim", {k: v for k, v in random_config(rng, "gemma2").items() if k != "head_dim"}, "head_dim"),
                             ("gemma2 sdpa", dict(random_config(rng, "gemma2"), _attn_implementation="sdpa"), "attn_implementation")):
        try:
            ar.parse_config(hf)
            check(False, f"(c) {label}: refused")
        except ValueError as e:
            check(field in str(e), f"(c) {label}: refused naming {field} ({e})")

    print(f"\n{len(failures)} failures (seed {seed})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
