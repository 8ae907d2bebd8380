#!/usr/bin/python3
"""FeatureLens PyTorch reference: the test oracle for the C# forward pass.

Run it with /usr/bin/python3 (Debian python3-torch 1.13, CPU). Needs only torch and the standard
library (safetensors_lite.py beside this file reads and writes .safetensors).

Subcommands
  make   --arch gpt2|llama|hf --config CFG.json --dtype f32|bf16|f16 --seed S --out DIR
         [--prefix] [--max-shard-mb M] [--qk-gain G] [--then-run TOKENS.json OUT.safetensors
         [--extra-hooks] [--rope-len L]]
      --arch hf: CFG is a config.json (model_type gpt2, llama, mistral, qwen2, gemma2, gpt_neox; see
      arch_reference.py), written as given; weights follow it (--qk-gain scales q/k so soft-caps bite).
      --then-run runs the new folder like `run` in the same process.
      Writes a Hugging Face model folder (config.json + model.safetensors, or sharded
      model-0000i-of-0000n.safetensors + model.safetensors.index.json) with deterministic random
      weights. CFG keys: d_model, n_layers, n_heads, n_kv_heads (llama), d_mlp, vocab, n_ctx,
      tied (llama), rope_theta (llama), optional rms_norm_eps (llama, default 1e-5).
      --prefix writes GPT-2 names under "transformer." (as GPT2LMHeadModel.save_pretrained does).
  run    --model PATH --tokens TOKENS.json --out OUT.safetensors [--hooks all|h1,h2,...]
         [--compute f32|f64] [--extra-hooks] [--rope-len L] [--generic]
      Configs the legacy gpt2/llama code below does not cover run through arch_reference.py (every
      family of issue 12); --generic sends plain gpt2/llama folders there too. --extra-hooks adds
      blocks.L.mlp.hook_in / mlp.hook_out; --rope-len fixes dynamic rope_scaling's run length L.
      PATH is an HF folder or a llama2.c .bin file. TOKENS.json is a list of token-id lists; each
      sequence is run on its own (no padding). Writes `{b}/{hook}` (float32, TransformerLens shape
      without the batch dim) and `{b}/tokens` (int64) for each sequence b.
  generate --model stories260K.bin [--steps 200]
      Greedy decoding from BOS (id 1) like llama2.c's run.c with temperature 0: runs `steps`
      forward passes (positions 0..steps-1), stops early if BOS is produced, prints the generated
      ids (BOS excluded) comma-separated.
  convert-llama2c --bin X.bin --out DIR
      Writes the llama2.c checkpoint as an HF Llama folder (float32), permuting the q/k rows of
      every head from the interleaved RoPE layout to HF's rotate-half layout, as Hugging Face's
      conversion script does.

Numerics: everything is computed in float32 (bf16/f16 weights are upcast exactly) with plain
torch ops, one sequence at a time; --compute f64 runs the same code in float64 (outputs are still
written as float32) to measure how far float32 itself is from the exact result.

Hook semantics (shapes without batch; T = positions, NH = heads, NKV = key/value heads,
HS = head size, C = d_model, M = d_mlp, V = vocab):
  hook_embed [T,C]                 token embedding rows (wte / embed_tokens)
  hook_pos_embed [T,C]             gpt2 only: wpe[0..T-1]
  blocks.L.hook_resid_pre [T,C]    input of block L (block 0: embed + pos_embed)
  blocks.L.ln1.hook_scale [T,1]    LayerNorm: sqrt(mean((x-mean(x))^2) + eps) (biased variance);
                                   RMSNorm:   sqrt(mean(x^2) + eps)
  blocks.L.ln1.hook_normalized [T,C]  the normalised input BEFORE the norm's weight (and bias), as in
                                   TransformerLens 3.x: LayerNorm (x-mean)/scale; RMSNorm x/scale.
  blocks.L.attn.hook_q [T,NH,HS], hook_k / hook_v [T,NKV,HS]  projections (+ bias for gpt2);
                                   k/v are NOT repeated for grouped-query attention. For a llama2.c
                                   .bin model q/k are in the checkpoint's interleaved layout; for an
                                   HF folder in HF's rotate-half layout.
  blocks.L.attn.hook_rot_q [T,NH,HS], hook_rot_k [T,NKV,HS]  llama only: after RoPE.
      RoPE: plane i (i < HS/2) turns by pos * theta^(-2i/HS). inv_freq = 1/theta^(2i/HS) and
      angle = pos*inv_freq are computed in float32 (as Hugging Face does), then cos/sin.
      rotate-half (HF): pairs (i, i+HS/2); interleaved (llama2.c): pairs (2i, 2i+1).
  blocks.L.attn.hook_attn_scores [NH,Tq,Tk]  q.k/sqrt(HS); query head h uses kv head
                                   h // (NH/NKV); entries with k > q are -inf.
  blocks.L.attn.hook_pattern [NH,Tq,Tk]  softmax over k of the scores (masked entries are 0).
  blocks.L.attn.hook_z [T,NH,HS]   pattern @ v.
  blocks.L.attn.hook_result [T,NH,C]  z[:,h,:] @ W_O[h] (per-head output, no bias).
  blocks.L.hook_attn_out [T,C]     z.flatten() @ W_O + b_O (one matmul; = sum_h result + b_O up
                                   to float32 rounding). llama has no b_O.
  blocks.L.hook_resid_mid [T,C]    resid_pre + attn_out
  blocks.L.hook_mlp_in [T,C]       = resid_mid (TransformerLens use_hook_mlp_in)
  blocks.L.ln2.hook_scale / hook_normalized   as ln1, on resid_mid
  blocks.L.mlp.hook_pre [T,M]      gpt2: ln2 @ W_fc + b_fc; llama: ln2 @ gate_proj^T
  blocks.L.mlp.hook_pre_linear [T,M]  llama only: ln2 @ up_proj^T
  blocks.L.mlp.hook_post [T,M]     gpt2: gelu_new(pre) = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)));
                                   llama: silu(pre) * pre_linear, silu(x) = x * sigmoid(x)
  blocks.L.hook_mlp_out [T,C]      gpt2: post @ W_proj + b_proj; llama: post @ down_proj^T
  blocks.L.hook_resid_post [T,C]   resid_mid + mlp_out
  ln_final.hook_scale [T,1], ln_final.hook_normalized [T,C]   as ln1, on the last resid_post
  logits [T,V]                     ln_final output @ W_U (gpt2: wte^T; llama: lm_head^T or
                                   embed^T when tied)
"""

import argparse
import json
import math
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arch_reference as ar  # noqa: E402
import safetensors_lite as st  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Loading checkpoints into one plain dict of float32 tensors per architecture


def load_hf_state(folder):
    """All tensors of an HF folder (single file or sharded via model.safetensors.index.json)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(st.load(os.path.join(folder, shard)))
        missing = set(weight_map) - set(state)
        if missing:
            raise ValueError(f"{index}: tensors listed but not found in shards: {sorted(missing)[:5]}")
        return state
    if os.path.exists(single):
        return st.load(single)
    raise FileNotFoundError(f"{folder}: neither model.safetensors nor model.safetensors.index.json")


def load_model(path, compute_dtype, generic=False):
    """Returns a model dict: {"arch", "cfg": {...}, "w": {name: tensor}} with weights in compute_dtype.
    Configs the legacy gpt2/llama paths do not cover (and every config with generic=True) load as
    arch "generic" for arch_reference.py; their weights are upcast before Gemma's (1 + w) is folded."""
    if os.path.isfile(path):
        model = load_llama2c(path)
    else:
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        state = load_hf_state(path)
        if generic or ar.handles(hf):
            cfg = ar.parse_config(hf, os.path.join(path, "config.json"))
            state = {k: v.to(compute_dtype) for k, v in state.items()}
            model = {"arch": "generic", "cfg": cfg, "w": ar.load_weights(cfg, state, path)}
        elif hf.get("model_type") == "gpt2":
            model = gpt2_from_hf(hf, state)
        elif hf.get("model_type") == "llama":
            model = llama_from_hf(hf, state)
        else:
            raise ValueError(f"{path}/config.json: model_type {hf.get('model_type')!r} is not gpt2 or llama")
    model["w"] = {k: v.to(compute_dtype) for k, v in model["w"].items()}
    return model


def gpt2_from_hf(hf, state):
    # strip the optional "transformer." prefix; drop attention-mask buffers
    s = {}
    for k, v in state.items():
        if k.startswith("transformer."):
            k = k[len("transformer."):]
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias") or k == "lm_head.weight":
            continue
        s[k] = v
    C = hf["n_embd"]
    cfg = dict(n_layers=hf["n_layer"], d_model=C, n_heads=hf["n_head"], n_kv_heads=hf["n_head"],
               d_mlp=hf.get("n_inner") or 4 * C, vocab=hf["vocab_size"], n_ctx=hf["n_positions"],
               eps=hf.get("layer_norm_epsilon", 1e-5))
    act = hf.get("activation_function", "gelu_new")
    if act != "gelu_new":
        raise ValueError(f"config.json: activation_function {act!r}; only gelu_new is supported")
    w = {"wte": s["wte.weight"], "wpe": s["wpe.weight"], "lnf_w": s["ln_f.weight"], "lnf_b": s["ln_f.bias"]}
    for L in range(cfg["n_layers"]):
        p = f"h.{L}."
        w[f"{L}.ln1_w"] = s[p + "ln_1.weight"]
        w[f"{L}.ln1_b"] = s[p + "ln_1.bias"]
        w[f"{L}.W_qkv"] = s[p + "attn.c_attn.weight"]  # (C, 3C), Conv1D: y = x @ W + b
        w[f"{L}.b_qkv"] = s[p + "attn.c_attn.bias"]
        w[f"{L}.W_o"] = s[p + "attn.c_proj.weight"]  # (C, C)
        w[f"{L}.b_o"] = s[p + "attn.c_proj.bias"]
        w[f"{L}.ln2_w"] = s[p + "ln_2.weight"]
        w[f"{L}.ln2_b"] = s[p + "ln_2.bias"]
        w[f"{L}.W_fc"] = s[p + "mlp.c_fc.weight"]  # (C, M)
        w[f"{L}.b_fc"] = s[p + "mlp.c_fc.bias"]
        w[f"{L}.W_proj"] = s[p + "mlp.c_proj.weight"]  # (M, C)
        w[f"{L}.b_proj"] = s[p + "mlp.c_proj.bias"]
    return {"arch": "gpt2", "cfg": cfg, "w": w}


def llama_from_hf(hf, state):
    C = hf["hidden_size"]
    NH = hf["num_attention_heads"]
    if hf.get("rope_scaling"):
        raise ValueError("config.json: rope_scaling is not supported by the reference")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r}; only silu is supported")
    cfg = dict(n_layers=hf["num_hidden_layers"], d_model=C, n_heads=NH,
               n_kv_heads=hf.get("num_key_value_heads") or NH, head_dim=hf.get("head_dim") or C // NH,
               d_mlp=hf["intermediate_size"], vocab=hf["vocab_size"],
               n_ctx=hf.get("max_position_embeddings", 2048), eps=hf.get("rms_norm_eps", 1e-6),
               rope_theta=hf.get("rope_theta", 10000.0), rope_layout="rotate_half")
    w = {"embed": state["model.embed_tokens.weight"], "norm": state["model.norm.weight"]}
    tied = hf.get("tie_word_embeddings", False) or "lm_head.weight" not in state
    w["lm_head"] = w["embed"] if tied else state["lm_head.weight"]
    for L in range(cfg["n_layers"]):
        p = f"model.layers.{L}."
        w[f"{L}.rms1"] = state[p + "input_layernorm.weight"]
        w[f"{L}.wq"] = state[p + "self_attn.q_proj.weight"]  # (NH*HS, C), Linear: y = x @ W^T
        w[f"{L}.wk"] = state[p + "self_attn.k_proj.weight"]  # (NKV*HS, C)
        w[f"{L}.wv"] = state[p + "self_attn.v_proj.weight"]  # (NKV*HS, C)
        w[f"{L}.wo"] = state[p + "self_attn.o_proj.weight"]  # (C, NH*HS)
        w[f"{L}.rms2"] = state[p + "post_attention_layernorm.weight"]
        w[f"{L}.w_gate"] = state[p + "mlp.gate_proj.weight"]  # (M, C)
        w[f"{L}.w_up"] = state[p + "mlp.up_proj.weight"]  # (M, C)
        w[f"{L}.w_down"] = state[p + "mlp.down_proj.weight"]  # (C, M)
    return {"arch": "llama", "cfg": cfg, "w": w}


def load_llama2c(path):
    """llama2.c version-0 checkpoint: 7 int32 header then float32 arrays (see stories260K README)."""
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) <= 0 or dim % n_heads or n_heads % n_kv:
        raise ValueError(f"{path}: implausible llama2.c header {dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len}")
    hs = dim // n_heads
    kv_dim = n_kv * hs
    floats = torch.frombuffer(bytearray(data[28:]), dtype=torch.float32)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = st.numel(shape)
        if pos + n > floats.numel():
            raise ValueError(f"{path}: file ends inside the weights")
        t = floats[pos:pos + n].reshape(shape).clone()
        pos += n
        return t

    embed = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    pos += seq_len * hs // 2 * 2  # legacy freq_cis_real and freq_cis_imag
    wcls = embed if shared else take(vocab, dim)
    cfg = dict(n_layers=n_layers, d_model=dim, n_heads=n_heads, n_kv_heads=n_kv, head_dim=hs, d_mlp=hidden,
               vocab=vocab, n_ctx=seq_len, eps=1e-5, rope_theta=10000.0, rope_layout="interleaved",
               tied=shared)
    w = {"embed": embed, "norm": rms_final, "lm_head": wcls}
    for L in range(n_layers):
        w[f"{L}.rms1"] = rms_att[L]
        w[f"{L}.wq"] = wq[L]
        w[f"{L}.wk"] = wk[L]
        w[f"{L}.wv"] = wv[L]
        w[f"{L}.wo"] = wo[L]
        w[f"{L}.rms2"] = rms_ffn[L]
        w[f"{L}.w_gate"] = w1[L]
        w[f"{L}.w_down"] = w2[L]
        w[f"{L}.w_up"] = w3[L]
    return {"arch": "llama", "cfg": cfg, "w": w}


# ----------------------------------------------------------------------------------------------
# Building blocks. x is (T,C) for one sequence. `rec(name, tensor)` records a hook value.


def layer_norm(x, w, b, eps, rec, prefix):
    # x is (T,C), w and b are (C,)
    xc = x - x.mean(dim=-1, keepdim=True)
    scale = torch.sqrt((xc * xc).mean(dim=-1, keepdim=True) + eps)  # (T,1)
    rec(prefix + ".hook_scale", scale)
    normalized = xc / scale
    out = normalized * w + b
    rec(prefix + ".hook_normalized", normalized)
    return out


def rms_norm(x, w, eps, rec, prefix):
    # x is (T,C), w is (C,)
    scale = torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)  # (T,1)
    rec(prefix + ".hook_scale", scale)
    normalized = x / scale
    out = normalized * w
    rec(prefix + ".hook_normalized", normalized)
    return out


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def rope(x, theta, layout):
    # x is (T,NH,HS); plane i of position p turns by p * theta^(-2i/HS)
    T, _, HS = x.shape
    half = HS // 2
    if x.dtype == torch.float64:
        inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
        angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    else:  # as Hugging Face: inverse frequencies and angles in float32
        inv_freq = 1.0 / (theta ** (torch.arange(0, HS, 2, dtype=torch.int64).float() / HS))
        angle = torch.arange(T, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    cos = torch.cos(angle).to(x.dtype)[:, None, :]  # (T,1,HS/2)
    sin = torch.sin(angle).to(x.dtype)[:, None, :]
    if layout == "rotate_half":
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # interleaved: pairs (2i, 2i+1)
    out = torch.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def attention(q, k, v, rec, prefix):
    # q is (T,NH,HS), k and v are (T,NKV,HS); returns z (T,NH,HS)
    T, NH, HS = q.shape
    rep = NH // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)  # query head h reads kv head h // rep
    v = v.repeat_interleave(rep, dim=1)
    scores = torch.matmul(q.transpose(0, 1), k.permute(1, 2, 0)) / math.sqrt(HS)  # (NH,T,T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    rec(prefix + ".hook_attn_scores", scores)
    pattern = torch.softmax(scores, dim=-1)  # exp(-inf) = 0 for masked entries
    rec(prefix + ".hook_pattern", pattern)
    z = torch.matmul(pattern, v.transpose(0, 1)).transpose(0, 1).contiguous()  # (T,NH,HS)
    rec(prefix + ".hook_z", z)
    return z


def head_results(z, W_o_in_out, rec, prefix):
    # z is (T,NH,HS), W_o_in_out is (NH*HS, C); result[t,h,:] = z[t,h,:] @ W_o[h]  -> (T,NH,C)
    T, NH, HS = z.shape
    if rec.wants(prefix + ".hook_result"):
        W = W_o_in_out.reshape(NH, HS, -1)
        rec(prefix + ".hook_result", torch.einsum("thd,hdc->thc", z, W))


# ----------------------------------------------------------------------------------------------
# Forward passes for one sequence


def gpt2_forward(model, tokens, rec):
    cfg, w = model["cfg"], model["w"]
    T, NH, C = len(tokens), cfg["n_heads"], cfg["d_model"]
    HS = C // NH
    if T > cfg["n_ctx"]:
        raise ValueError(f"sequence of {T} tokens is longer than n_positions {cfg['n_ctx']}")
    idx = torch.tensor(tokens, dtype=torch.long)
    embed = w["wte"][idx]  # (T,C)
    pos_embed = w["wpe"][:T]
    rec("hook_embed", embed)
    rec("hook_pos_embed", pos_embed)
    x = embed + pos_embed
    for L in range(cfg["n_layers"]):
        b = f"blocks.{L}"
        rec(b + ".hook_resid_pre", x)
        h = layer_norm(x, w[f"{L}.ln1_w"], w[f"{L}.ln1_b"], cfg["eps"], rec, b + ".ln1")
        qkv = h @ w[f"{L}.W_qkv"] + w[f"{L}.b_qkv"]  # (T,3C)
        q, k, v = [t.reshape(T, NH, HS) for t in qkv.split(C, dim=-1)]
        rec(b + ".attn.hook_q", q)
        rec(b + ".attn.hook_k", k)
        rec(b + ".attn.hook_v", v)
        z = attention(q, k, v, rec, b + ".attn")
        head_results(z, w[f"{L}.W_o"], rec, b + ".attn")
        attn_out = z.reshape(T, C) @ w[f"{L}.W_o"] + w[f"{L}.b_o"]
        rec(b + ".hook_attn_out", attn_out)
        x = x + attn_out
        rec(b + ".hook_resid_mid", x)
        rec(b + ".hook_mlp_in", x)
        h = layer_norm(x, w[f"{L}.ln2_w"], w[f"{L}.ln2_b"], cfg["eps"], rec, b + ".ln2")
        pre = h @ w[f"{L}.W_fc"] + w[f"{L}.b_fc"]  # (T,M)
        rec(b + ".mlp.hook_pre", pre)
        post = gelu_new(pre)
        rec(b + ".mlp.hook_post", post)
        mlp_out = post @ w[f"{L}.W_proj"] + w[f"{L}.b_proj"]
        rec(b + ".hook_mlp_out", mlp_out)
        x = x + mlp_out
        rec(b + ".hook_resid_post", x)
    h = layer_norm(x, w["lnf_w"], w["lnf_b"], cfg["eps"], rec, "ln_final")
    logits = h @ w["wte"].t()  # (T,V)
    rec("logits", logits)
    return logits


def llama_forward(model, tokens, rec):
    cfg, w = model["cfg"], model["w"]
    T, NH, NKV, HS = len(tokens), cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    if T > cfg["n_ctx"]:
        raise ValueError(f"sequence of {T} tokens is longer than the context {cfg['n_ctx']}")
    x = w["embed"][torch.tensor(tokens, dtype=torch.long)]  # (T,C)
    rec("hook_embed", x)
    for L in range(cfg["n_layers"]):
        b = f"blocks.{L}"
        rec(b + ".hook_resid_pre", x)
        h = rms_norm(x, w[f"{L}.rms1"], cfg["eps"], rec, b + ".ln1")
        q = (h @ w[f"{L}.wq"].t()).reshape(T, NH, HS)
        k = (h @ w[f"{L}.wk"].t()).reshape(T, NKV, HS)
        v = (h @ w[f"{L}.wv"].t()).reshape(T, NKV, HS)
        rec(b + ".attn.hook_q", q)
        rec(b + ".attn.hook_k", k)
        rec(b + ".attn.hook_v", v)
        q = rope(q, cfg["rope_theta"], cfg["rope_layout"])
        k = rope(k, cfg["rope_theta"], cfg["rope_layout"])
        rec(b + ".attn.hook_rot_q", q)
        rec(b + ".attn.hook_rot_k", k)
        z = attention(q, k, v, rec, b + ".attn")
        wo_t = w[f"{L}.wo"].t()  # (NH*HS, C)
        head_results(z, wo_t, rec, b + ".attn")
        attn_out = z.reshape(T, NH * HS) @ wo_t
        rec(b + ".hook_attn_out", attn_out)
        x = x + attn_out
        rec(b + ".hook_resid_mid", x)
        rec(b + ".hook_mlp_in", x)
        h = rms_norm(x, w[f"{L}.rms2"], cfg["eps"], rec, b + ".ln2")
        pre = h @ w[f"{L}.w_gate"].t()  # (T,M)
        pre_linear = h @ w[f"{L}.w_up"].t()
        rec(b + ".mlp.hook_pre", pre)
        rec(b + ".mlp.hook_pre_linear", pre_linear)
        post = pre * torch.sigmoid(pre) * pre_linear
        rec(b + ".mlp.hook_post", post)
        mlp_out = post @ w[f"{L}.w_down"].t()
        rec(b + ".hook_mlp_out", mlp_out)
        x = x + mlp_out
        rec(b + ".hook_resid_post", x)
    h = rms_norm(x, w["norm"], cfg["eps"], rec, "ln_final")
    logits = h @ w["lm_head"].t()
    rec("logits", logits)
    return logits


def forward(model, tokens, rec):
    if model["arch"] == "generic":
        return generic_forward(model, tokens, rec)
    if any(t < 0 or t >= model["cfg"]["vocab"] for t in tokens):
        raise ValueError(f"token id outside [0, {model['cfg']['vocab']})")
    fn = gpt2_forward if model["arch"] == "gpt2" else llama_forward
    return fn(model, tokens, rec)


def generic_forward(model, tokens, rec, extra=False):
    """arch_reference's forward for every family (gpt2 variants, llama/mistral/qwen2, gemma2, gpt_neox)."""
    def hook(name, t):
        rec(name, t)
        return t
    want_result = any(rec.wants(f"blocks.{L}.attn.hook_result") for L in range(model["cfg"]["L"]))
    logits = ar.forward(model, tokens, hook, want_result=want_result, extra=extra or model.get("extra", False))
    rec("logits", logits)
    return logits


class Recorder:
    """Collects hook values (as float32 copies) whose names pass the filter (None = all)."""

    def __init__(self, names=None):
        self.names = names
        self.cache = {}

    def wants(self, name):
        return self.names is None or name in self.names

    def __call__(self, name, t):
        if self.wants(name):
            self.cache[name] = t.detach().to(torch.float32).contiguous().clone()


class NoRecord(Recorder):
    def wants(self, name):
        return False

    def __call__(self, name, t):
        pass


# ----------------------------------------------------------------------------------------------
# make: deterministic random HF folders

GPT2_TENSORS = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias"]


def make_specs(arch, c, prefix):
    """[(name, shape, init)] in file order; init is ("normal", std) | ("norm_weight",) | ("qkv", C)."""
    C, L, NH, M, V = c["d_model"], c["n_layers"], c["n_heads"], c["d_mlp"], c["vocab"]
    mat = 1.0 / math.sqrt(C)  # activations stay O(1) for inputs with unit RMS
    qk = 1.5 / math.sqrt(C)  # q.k/sqrt(HS) has std ~2: peaked, not uniform, attention patterns
    specs = []
    if arch == "gpt2":
        p = "transformer." if prefix else ""
        specs.append((p + "wte.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
        specs.append((p + "wpe.weight", [c["n_ctx"], C], ("normal", 1.0 / math.sqrt(C))))
        for i in range(L):
            h = f"{p}h.{i}."
            specs += [(h + "ln_1.weight", [C], ("norm_weight",)), (h + "ln_1.bias", [C], ("normal", 0.02)),
                      (h + "attn.c_attn.weight", [C, 3 * C], ("qkv", C, qk, mat)),
                      (h + "attn.c_attn.bias", [3 * C], ("normal", 0.02)),
                      (h + "attn.c_proj.weight", [C, C], ("normal", 0.5 / math.sqrt(C))),
                      (h + "attn.c_proj.bias", [C], ("normal", 0.02)),
                      (h + "ln_2.weight", [C], ("norm_weight",)), (h + "ln_2.bias", [C], ("normal", 0.02)),
                      (h + "mlp.c_fc.weight", [C, M], ("normal", mat)), (h + "mlp.c_fc.bias", [M], ("normal", 0.02)),
                      (h + "mlp.c_proj.weight", [M, C], ("normal", 0.5 / math.sqrt(M))),
                      (h + "mlp.c_proj.bias", [C], ("normal", 0.02))]
        specs += [(p + "ln_f.weight", [C], ("norm_weight",)), (p + "ln_f.bias", [C], ("normal", 0.02))]
    else:
        NKV = c.get("n_kv_heads", NH)
        HS = C // NH
        specs.append(("model.embed_tokens.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
        for i in range(L):
            h = f"model.layers.{i}."
            specs += [(h + "input_layernorm.weight", [C], ("norm_weight",)),
                      (h + "self_attn.q_proj.weight", [NH * HS, C], ("normal", qk)),
                      (h + "self_attn.k_proj.weight", [NKV * HS, C], ("normal", qk)),
                      (h + "self_attn.v_proj.weight", [NKV * HS, C], ("normal", mat)),
                      (h + "self_attn.o_proj.weight", [C, NH * HS], ("normal", 0.5 / math.sqrt(C))),
                      (h + "post_attention_layernorm.weight", [C], ("norm_weight",)),
                      (h + "mlp.gate_proj.weight", [M, C], ("normal", mat)),
                      (h + "mlp.up_proj.weight", [M, C], ("normal", mat)),
                      (h + "mlp.down_proj.weight", [C, M], ("normal", 0.5 / math.sqrt(M)))]
        specs.append(("model.norm.weight", [C], ("norm_weight",)))
        if not c.get("tied", False):
            specs.append(("lm_head.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
    return specs


def init_tensor(shape, init, g):
    if init[0] == "normal":
        return torch.randn(shape, generator=g) * init[1]
    if init[0] == "norm_weight":
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if init[0] == "qkv":  # GPT-2 c_attn (C, 3C): q and k columns get the larger scale
        _, C, qk, v = init
        t = torch.randn(shape, generator=g)
        t[:, :2 * C] *= qk
        t[:, 2 * C:] *= v
        return t
    raise ValueError(init)


def hf_config(arch, c, dtype_name):
    torch_dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype_name]
    if arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": c["d_model"],
                "n_layer": c["n_layers"], "n_head": c["n_heads"], "n_inner": c["d_mlp"],
                "vocab_size": c["vocab"], "n_positions": c["n_ctx"], "n_ctx": c["n_ctx"],
                "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "bos_token_id": 50256,
                "eos_token_id": 50256, "torch_dtype": torch_dtype}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c["d_model"],
            "num_hidden_layers": c["n_layers"], "num_attention_heads": c["n_heads"],
            "num_key_value_heads": c.get("n_kv_heads", c["n_heads"]), "intermediate_size": c["d_mlp"],
            "vocab_size": c["vocab"], "max_position_embeddings": c["n_ctx"],
            "rms_norm_eps": c.get("rms_norm_eps", 1e-5), "rope_theta": c.get("rope_theta", 10000.0),
            "hidden_act": "silu", "tie_word_embeddings": bool(c.get("tied", False)), "bos_token_id": 1,
            "eos_token_id": 2, "torch_dtype": torch_dtype}


def write_hf_folder(out, config, specs, tensor_for, dtype, max_shard_bytes=None):
    """specs: [(name, shape)] in order; tensor_for(i) returns tensor i (any float dtype; cast to dtype)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    esize = torch.empty((), dtype=dtype).element_size()
    shards, cur, cur_bytes = [], [], 0
    for i, (name, shape) in enumerate(specs):
        nbytes = st.numel(shape) * esize
        if max_shard_bytes and cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nbytes
    shards.append(cur)
    dname = st.DTYPE_NAMES[dtype]
    weight_map = {}
    for s, idxs in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = st.StreamingWriter(os.path.join(out, fname), [(specs[i][0], dname, specs[i][1]) for i in idxs],
                                    {"format": "pt"})
        for i in idxs:
            writer.write(specs[i][0], tensor_for(i).to(dtype).contiguous())
            weight_map[specs[i][0]] = fname
        writer.close()
    if len(shards) > 1:
        total = sum(st.numel(shape) * esize for _, shape in specs)
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def cmd_make(args):
    with open(args.config) as f:
        c = json.load(f)
    if args.arch == "hf":
        return make_hf(args, c)
    for key in ["d_model", "n_layers", "n_heads", "d_mlp", "vocab", "n_ctx"]:
        if key not in c:
            raise ValueError(f"{args.config}: missing {key}")
    if c["d_model"] % c["n_heads"]:
        raise ValueError(f"{args.config}: d_model must be a multiple of n_heads")
    if args.arch == "llama" and c["n_heads"] % c.get("n_kv_heads", c["n_heads"]):
        raise ValueError(f"{args.config}: n_heads must be a multiple of n_kv_heads")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    specs = make_specs(args.arch, c, args.prefix)
    g = torch.Generator().manual_seed(args.seed)
    # tensors are generated in spec order from one generator, so the weights depend only on
    # (arch, config, seed) -- not on dtype, prefix or sharding
    write_hf_folder(args.out, hf_config(args.arch, c, args.dtype), [(n, s) for n, s, _ in specs],
                    lambda i: init_tensor(specs[i][1], specs[i][2], g), dtype,
                    int(args.max_shard_mb * 2**20) if args.max_shard_mb else None)


def make_hf(args, hf):
    """--arch hf: CFG is the config.json itself (any model_type arch_reference knows); weights follow it."""
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    c = ar.parse_config(hf, args.config)
    if c["family"] == "gpt2":
        specs = make_specs("gpt2", dict(d_model=c["C"], n_layers=c["L"], n_heads=c["NH"], d_mlp=c["M"], vocab=c["V"],
                                        n_ctx=c["n_ctx"]), args.prefix)
    else:
        specs = ar.make_specs(c, args.qk_gain)
    config = dict(hf)
    config["torch_dtype"] = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[args.dtype]
    g = torch.Generator().manual_seed(args.seed)

    def tensor(i):
        t = ar.init_tensor(specs[i][1], specs[i][2], g)
        return t if t is not None else init_tensor(specs[i][1], specs[i][2], g)
    write_hf_folder(args.out, config, [(n, s) for n, s, _ in specs], tensor, dtype,
                    int(args.max_shard_mb * 2**20) if args.max_shard_mb else None)
    if getattr(args, "then_run", None):  # one Python start for make + run
        cmd_run(argparse.Namespace(model=args.out, tokens=args.then_run[0], out=args.then_run[1], hooks="all", compute="f32",
                                   extra_hooks=args.extra_hooks, rope_len=args.rope_len, generic=False))


# ----------------------------------------------------------------------------------------------
# convert-llama2c


def interleaved_to_rotate_half(wt, n_heads):
    # wt is (n_heads*HS, C) in llama2.c/Meta row order; within each head, rows [0,2,4,..,1,3,5,..]
    rows, cols = wt.shape
    hs = rows // n_heads
    return wt.reshape(n_heads, hs // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def cmd_convert_llama2c(args):
    m = load_llama2c(args.bin)
    c, w = m["cfg"], m["w"]
    config = hf_config("llama", dict(d_model=c["d_model"], n_layers=c["n_layers"], n_heads=c["n_heads"],
                                     n_kv_heads=c["n_kv_heads"], d_mlp=c["d_mlp"], vocab=c["vocab"],
                                     n_ctx=c["n_ctx"], tied=c["tied"], rope_theta=c["rope_theta"],
                                     rms_norm_eps=c["eps"]), "f32")
    tensors = {"model.embed_tokens.weight": w["embed"]}
    for L in range(c["n_layers"]):
        p = f"model.layers.{L}."
        tensors[p + "input_layernorm.weight"] = w[f"{L}.rms1"]
        tensors[p + "self_attn.q_proj.weight"] = interleaved_to_rotate_half(w[f"{L}.wq"], c["n_heads"])
        tensors[p + "self_attn.k_proj.weight"] = interleaved_to_rotate_half(w[f"{L}.wk"], c["n_kv_heads"])
        tensors[p + "self_attn.v_proj.weight"] = w[f"{L}.wv"]
        tensors[p + "self_attn.o_proj.weight"] = w[f"{L}.wo"]
        tensors[p + "post_attention_layernorm.weight"] = w[f"{L}.rms2"]
        tensors[p + "mlp.gate_proj.weight"] = w[f"{L}.w_gate"]
        tensors[p + "mlp.up_proj.weight"] = w[f"{L}.w_up"]
        tensors[p + "mlp.down_proj.weight"] = w[f"{L}.w_down"]
    tensors["model.norm.weight"] = w["norm"]
    if not c["tied"]:
        tensors["lm_head.weight"] = w["lm_head"]
    names = list(tensors)
    write_hf_folder(args.out, config, [(n, list(tensors[n].shape)) for n in names],
                    lambda i: tensors[names[i]], torch.float32)


# ----------------------------------------------------------------------------------------------
# run / generate


def cmd_run(args):
    compute = torch.float64 if args.compute == "f64" else torch.float32
    model = load_model(args.model, compute, generic=args.generic)
    with open(args.tokens) as f:
        batch = json.load(f)
    if not isinstance(batch, list) or not all(isinstance(s, list) and s for s in batch):
        raise ValueError(f"{args.tokens}: expected a list of non-empty lists of token ids")
    names = None if args.hooks == "all" else set(h.strip() for h in args.hooks.split(",") if h.strip())
    if args.extra_hooks or (names and any(n.endswith((".mlp.hook_in", ".mlp.hook_out")) for n in names)):
        if model["arch"] != "generic":
            raise ValueError("--extra-hooks (mlp.hook_in / mlp.hook_out) needs a model arch_reference runs (--generic)")
        model["extra"] = True
    if args.rope_len:
        model["rope_len"] = args.rope_len
    out = {}
    with torch.no_grad():
        for b, seq in enumerate(batch):
            rec = Recorder(names)
            forward(model, [int(t) for t in seq], rec)
            for name, t in rec.cache.items():
                out[f"{b}/{name}"] = t
            out[f"{b}/tokens"] = torch.tensor(seq, dtype=torch.int64)
    if names is not None:
        found = {k.split("/", 1)[1] for k in out}
        missing = names - found
        if missing:
            raise ValueError(f"unknown hook names for a {model['arch']} model: {sorted(missing)}")
    st.save(args.out, out, {"format": "pt", "model": os.path.basename(os.path.normpath(args.model)),
                            "compute": args.compute})


def cmd_generate(args):
    model = load_model(args.model, torch.float32)
    tokens = [1]  # BOS
    generated = []
    with torch.no_grad():
        for _ in range(args.steps):
            logits = forward(model, tokens, NoRecord())
            nxt = int(torch.argmax(logits[-1]).item())
            if nxt == 1:  # run.c stops when BOS comes out
                break
            generated.append(nxt)
            tokens.append(nxt)
    print(",".join(str(t) for t in generated))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a random HF model folder")
    m.add_argument("--arch", choices=["gpt2", "llama", "hf"], required=True,
                   help="hf: --config is a config.json (gpt2, llama, mistral, qwen2, gemma2, gpt_neox)")
    m.add_argument("--qk-gain", type=float, default=1.0, help="hf: multiply the q/k weights' scale (softcaps bite)")
    m.add_argument("--then-run", nargs=2, metavar=("TOKENS", "OUT"), help="hf: then `run` the new folder (all hooks, f32)")
    m.add_argument("--extra-hooks", action="store_true", help="--then-run: also mlp.hook_in / mlp.hook_out")
    m.add_argument("--rope-len", type=int, default=None, help="--then-run: see run --rope-len")
    m.add_argument("--config", required=True)
    m.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--prefix", action="store_true", help="gpt2: write names under 'transformer.'")
    m.add_argument("--max-shard-mb", type=float, default=None, help="split into shards of at most this size")
    r = sub.add_parser("run", help="run sequences and write every hook to a safetensors file")
    r.add_argument("--model", required=True)
    r.add_argument("--tokens", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--hooks", default="all")
    r.add_argument("--compute", choices=["f32", "f64"], default="f32")
    r.add_argument("--extra-hooks", action="store_true", help="also blocks.L.mlp.hook_in / mlp.hook_out")
    r.add_argument("--rope-len", type=int, default=None,
                   help="dynamic rope_scaling: the run's length L for every sequence (default: each sequence's own)")
    r.add_argument("--generic", action="store_true", help="run gpt2/llama folders through arch_reference too")
    gen = sub.add_parser("generate", help="greedy decoding from BOS")
    gen.add_argument("--model", required=True)
    gen.add_argument("--steps", type=int, default=200)
    cv = sub.add_parser("convert-llama2c", help="llama2.c .bin -> HF Llama folder (q/k permuted)")
    cv.add_argument("--bin", required=True)
    cv.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    {"make": cmd_make, "run": cmd_run, "generate": cmd_generate, "convert-llama2c": cmd_convert_llama2c}[args.cmd](args)


if __name__ == "__main__":
    main()
