#!/usr/bin/python3
"""FeatureLens PyTorch reference for every architecture family, written from the formulas (issue 12).

Used by torch_reference.py (float32 forward, hooks recorded) and grad_reference.py (float64 autograd, every
hook a graph node): both call `forward(model, tokens, hook, ...)` with their own `hook(name, tensor)`, which
returns the tensor that flows on. Only torch and the standard library.

Families and what config.json means (Hugging Face's meaning of the checkpoint; hook names as TransformerLens):
  gpt2      (model_type gpt2)  LayerNorm, learned positions, Conv1D weights, tied unembedding; activation_function
            gelu_new | gelu_pytorch_tanh | gelu_fast (tanh approximation), gelu (exact erf), relu, quick_gelu, silu.
  llama     (model_type llama, mistral, qwen2)  RMSNorm x/sqrt(mean(x^2)+eps)*w; rotate-half RoPE; GQA; explicit
            head_dim; SwiGLU act(gate)*up -> down; q/k/v biases (qwen2 always; llama when attention_bias, which also
            adds the o_proj bias); rope_scaling linear | dynamic | llama3; sliding windows (mistral: sliding_window
            on every layer; qwen2: when use_sliding_window, on layers >= max_window_layers).
  gemma2    (model_type gemma2)  RMSNorm with (1 + w); embeddings * sqrt(hidden) (float32 constant); post-norms
            after attention (ln1_post) and MLP (ln2_post); GeGLU (gelu tanh); scores q.k * query_pre_attn_scalar^-1/2,
            then c*tanh(s/c) (attn_logit_softcapping), then the mask; sliding_window on even layers; logits
            c*tanh(l/c) (final_logit_softcapping); unembedding = the UNscaled embed_tokens.
  neox      (model_type gpt_neox)  LayerNorm with bias; fused per-head query_key_value viewed as (NH, 3, HS, C);
            partial rotate-half RoPE on the first int(HS*rotary_pct) dims of each head; exact gelu MLP with biases;
            use_parallel_residual (default true): resid_post = resid_pre + attn(ln1(x)) + mlp(ln2(x)).
Masks: query i sees key j iff 0 <= i - j < window (window 0 = every earlier key); masked scores are -inf.
RoPE frequencies: inv_freq_i = 1/theta^(2i/rd) (rd = rotary dims) computed in float64, then changed by
rope_scaling, then rounded to float32; angle = position * inv_freq in float32 (the checkpoint's definition, as
HF computes it), cos/sin in the compute dtype. rope_scaling:
  linear  inv_freq / factor
  dynamic with L = the run's length (max position + 1; model["rope_len"] overrides a sequence's own length) and
          M = rope_scaling.original_max_position_embeddings (else max_position_embeddings): when L > M,
          theta' = theta * (factor*L/M - (factor-1))^(rd/(rd-2)); otherwise unchanged.
  llama3  with O = original_max_position_embeddings, wavelength w = 2*pi/inv_freq: w < O/high_freq_factor:
          unchanged; w > O/low_freq_factor: inv_freq/factor; between: s = (O/w - low)/(high - low),
          (1-s)*inv_freq/factor + s*inv_freq.
Other rope types (yarn, longrope, ...) are refused naming rope_scaling.

Extra hooks (only when extra=True): blocks.L.mlp.hook_in (ln2's output after weight/bias, the MLP's input) and
blocks.L.mlp.hook_out (the MLP's output, before Gemma 2's ln2_post; elsewhere equal to hook_mlp_out).
"""

import math

import torch

FAMILIES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma2": "gemma2",
            "gpt_neox": "neox"}
ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new", "gelu": "gelu",
               "relu": "relu", "quick_gelu": "quick_gelu", "silu": "silu", "swish": "silu"}


def handles(hf):
    """True when this module (not torch_reference's legacy gpt2/llama paths) must run the config."""
    mt = hf.get("model_type")
    if mt in ("gemma2", "gpt_neox", "mistral", "qwen2"):
        return True
    if mt == "gpt2":
        return hf.get("activation_function", "gelu_new") != "gelu_new"
    if mt == "llama":
        C, NH = hf.get("hidden_size"), hf.get("num_attention_heads")
        return bool(hf.get("rope_scaling")) or bool(hf.get("attention_bias")) or \
            (hf.get("head_dim") is not None and hf["head_dim"] != C // NH) or hf.get("hidden_act", "silu") != "silu"
    return False


def _get(hf, key, where, default=None, required=False):
    if key not in hf or hf[key] is None:
        if required:
            raise ValueError(f"{where}: field '{key}' is required for model_type {hf.get('model_type')!r}")
        return default
    return hf[key]


def _act(name, field, where):
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}: field '{field}' is {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def parse_config(hf, where="config.json"):
    """config.json -> a normalised dict every other function here reads."""
    mt = hf.get("model_type")
    if mt not in FAMILIES:
        raise ValueError(f"{where}: field 'model_type' is {mt!r}; expected one of {sorted(FAMILIES)}")
    fam = FAMILIES[mt]
    c = {"family": fam, "model_type": mt}
    if fam == "gpt2":
        C = _get(hf, "n_embd", where, required=True)
        c.update(C=C, L=_get(hf, "n_layer", where, required=True), NH=_get(hf, "n_head", where, required=True),
                 M=_get(hf, "n_inner", where) or 4 * C, V=_get(hf, "vocab_size", where, required=True),
                 n_ctx=_get(hf, "n_positions", where, required=True), eps=_get(hf, "layer_norm_epsilon", where, 1e-5),
                 act=_act(hf.get("activation_function", "gelu_new"), "activation_function", where), norm="ln",
                 tied=True, rope=None)
        c["NKV"] = c["NH"]
        c["HS"] = C // c["NH"]
        c["windows"] = [0] * c["L"]
    elif fam == "neox":
        C, NH = _get(hf, "hidden_size", where, required=True), _get(hf, "num_attention_heads", where, required=True)
        HS = C // NH
        pct = _get(hf, "rotary_pct", where, None)
        if pct is None:
            pct = _get(hf, "partial_rotary_factor", where, 0.25)
        theta = _get(hf, "rotary_emb_base", where, None) or _get(hf, "rope_theta", where, 10000.0)
        c.update(C=C, L=_get(hf, "num_hidden_layers", where, required=True), NH=NH, NKV=NH, HS=HS,
                 M=_get(hf, "intermediate_size", where, required=True), V=_get(hf, "vocab_size", where, required=True),
                 n_ctx=_get(hf, "max_position_embeddings", where, 2048), eps=_get(hf, "layer_norm_eps", where, 1e-5),
                 act=_act(hf.get("hidden_act", "gelu"), "hidden_act", where), norm="ln",
                 tied=bool(hf.get("tie_word_embeddings", False)), parallel=bool(hf.get("use_parallel_residual", True)),
                 rope={"theta": float(theta), "dim": int(HS * pct), "scaling": _rope_scaling(hf, where)})
        c["windows"] = [0] * c["L"]
    else:
        C, NH = _get(hf, "hidden_size", where, required=True), _get(hf, "num_attention_heads", where, required=True)
        if fam == "gemma2":
            HS = _get(hf, "head_dim", where, required=True)
            act = _act(hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh", "hidden_activation", where)
        else:
            HS = _get(hf, "head_dim", where, None) or C // NH
            act = _act(hf.get("hidden_act", "silu"), "hidden_act", where)
        L = _get(hf, "num_hidden_layers", where, required=True)
        c.update(C=C, L=L, NH=NH, NKV=_get(hf, "num_key_value_heads", where, NH), HS=HS,
                 M=_get(hf, "intermediate_size", where, required=True), V=_get(hf, "vocab_size", where, required=True),
                 n_ctx=_get(hf, "max_position_embeddings", where, 2048), act=act, norm="rms",
                 eps=_get(hf, "rms_norm_eps", where, 1e-6),
                 rope={"theta": float(_get(hf, "rope_theta", where, 10000.0)), "dim": HS, "scaling": _rope_scaling(hf, where)})
        if NH % c["NKV"]:
            raise ValueError(f"{where}: num_key_value_heads {c['NKV']} does not divide num_attention_heads {NH}")
        sw = _get(hf, "sliding_window", where, None)
        if mt == "gemma2":
            c["tied"] = bool(hf.get("tie_word_embeddings", True))
            c["windows"] = [(sw or 0) if l % 2 == 0 else 0 for l in range(L)]
            c["attn_softcap"] = _get(hf, "attn_logit_softcapping", where, None)
            c["final_softcap"] = _get(hf, "final_logit_softcapping", where, None)
            c["qpas"] = _get(hf, "query_pre_attn_scalar", where, 256)
            c["embed_scale"] = True
            c["post_norms"] = True
            impl = hf.get("_attn_implementation") or hf.get("attn_implementation")
            if c["attn_softcap"] and impl in ("sdpa", "flash_attention_2"):
                raise ValueError(f"{where}: field 'attn_implementation' is {impl!r}, which ignores attn_logit_softcapping")
        elif mt == "mistral":
            c["tied"] = bool(hf.get("tie_word_embeddings", False))
            c["windows"] = [sw or 0] * L
        elif mt == "qwen2":
            c["tied"] = bool(hf.get("tie_word_embeddings", False))
            c["qkv_bias"] = True
            mwl = _get(hf, "max_window_layers", where, L)
            c["windows"] = [(sw or 0) if hf.get("use_sliding_window", False) and l >= mwl else 0 for l in range(L)]
        else:
            c["tied"] = bool(hf.get("tie_word_embeddings", False))
            c["windows"] = [0] * L
            if hf.get("attention_bias", False):
                c["qkv_bias"] = True
                c["o_bias"] = True
            if hf.get("mlp_bias", False):
                raise ValueError(f"{where}: field 'mlp_bias' true is not modelled by the reference")
    if c["rope"] and (c["rope"]["dim"] % 2 or c["rope"]["dim"] < 0):
        raise ValueError(f"{where}: rotary dims {c['rope']['dim']} must be even")
    return c


def _rope_scaling(hf, where):
    rs = hf.get("rope_scaling")
    if not rs:
        return None
    kind = rs.get("rope_type") or rs.get("type")
    if kind == "default":
        return None
    if kind not in ("linear", "dynamic", "llama3"):
        raise ValueError(f"{where}: field 'rope_scaling' has type {kind!r}; the reference models linear, dynamic, llama3")
    out = {"type": kind, "factor": float(rs["factor"])}
    if kind == "llama3":
        out.update(low=float(rs.get("low_freq_factor", 1.0)), high=float(rs.get("high_freq_factor", 4.0)),
                   orig=int(rs["original_max_position_embeddings"]))
    elif kind == "dynamic":
        out["orig"] = int(rs.get("original_max_position_embeddings") or hf.get("max_position_embeddings"))
    return out


# ----------------------------------------------------------------------------------------------
# Weights: HF tensor names -> generic names. Linear orientation (out, in) everywhere: y = x @ W.T + b


def load_weights(c, state, where):
    s = dict(state)
    w = {}
    used = set()

    def take(name, optional=False):
        if name not in s:
            if optional:
                return None
            raise ValueError(f"{where}: tensor {name!r} is missing")
        used.add(name)
        return s[name]

    fam = c["family"]
    C, NH, NKV, HS = c["C"], c["NH"], c["NKV"], c["HS"]
    if fam == "gpt2":
        s = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in s.items()}
        w["embed"], w["pos"] = take("wte.weight"), take("wpe.weight")
        w["unembed"] = w["embed"]
        w["lnf_w"], w["lnf_b"] = take("ln_f.weight"), take("ln_f.bias")
        for L in range(c["L"]):
            p = f"h.{L}."
            w[f"{L}.ln1_w"], w[f"{L}.ln1_b"] = take(p + "ln_1.weight"), take(p + "ln_1.bias")
            wqkv, bqkv = take(p + "attn.c_attn.weight"), take(p + "attn.c_attn.bias")  # (C, 3C) Conv1D
            for i, n in enumerate("qkv"):
                w[f"{L}.W{n}"] = wqkv[:, i * C:(i + 1) * C].t()
                w[f"{L}.b{n}"] = bqkv[i * C:(i + 1) * C]
            w[f"{L}.Wo"], w[f"{L}.bo"] = take(p + "attn.c_proj.weight").t(), take(p + "attn.c_proj.bias")
            w[f"{L}.ln2_w"], w[f"{L}.ln2_b"] = take(p + "ln_2.weight"), take(p + "ln_2.bias")
            w[f"{L}.W_in"], w[f"{L}.b_in"] = take(p + "mlp.c_fc.weight").t(), take(p + "mlp.c_fc.bias")
            w[f"{L}.W_out"], w[f"{L}.b_out"] = take(p + "mlp.c_proj.weight").t(), take(p + "mlp.c_proj.bias")
        ignore = (".attn.bias", ".attn.masked_bias", "lm_head.weight")
    elif fam == "neox":
        g = "gpt_neox."
        w["embed"] = take(g + "embed_in.weight")
        w["unembed"] = w["embed"] if c["tied"] else take("embed_out.weight")
        w["lnf_w"], w["lnf_b"] = take(g + "final_layer_norm.weight"), take(g + "final_layer_norm.bias")
        for L in range(c["L"]):
            p = f"{g}layers.{L}."
            w[f"{L}.ln1_w"], w[f"{L}.ln1_b"] = take(p + "input_layernorm.weight"), take(p + "input_layernorm.bias")
            w[f"{L}.ln2_w"], w[f"{L}.ln2_b"] = take(p + "post_attention_layernorm.weight"), take(p + "post_attention_layernorm.bias")
            qkv = take(p + "attention.query_key_value.weight").reshape(NH, 3, HS, C)
            bqkv = take(p + "attention.query_key_value.bias").reshape(NH, 3, HS)
            for i, n in enumerate("qkv"):
                w[f"{L}.W{n}"] = qkv[:, i].reshape(NH * HS, C)
                w[f"{L}.b{n}"] = bqkv[:, i].reshape(NH * HS)
            w[f"{L}.Wo"], w[f"{L}.bo"] = take(p + "attention.dense.weight"), take(p + "attention.dense.bias")
            w[f"{L}.W_in"], w[f"{L}.b_in"] = take(p + "mlp.dense_h_to_4h.weight"), take(p + "mlp.dense_h_to_4h.bias")
            w[f"{L}.W_out"], w[f"{L}.b_out"] = take(p + "mlp.dense_4h_to_h.weight"), take(p + "mlp.dense_4h_to_h.bias")
        ignore = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")
    else:
        gemma = fam == "gemma2"

        def normw(name):  # Gemma's RMSNorm multiplies by (1 + w)
            t = take(name)
            return 1.0 + t if gemma else t

        w["embed"] = take("model.embed_tokens.weight")
        w["unembed"] = w["embed"] if c["tied"] else take("lm_head.weight")
        w["lnf_w"] = normw("model.norm.weight")
        for L in range(c["L"]):
            p = f"model.layers.{L}."
            a = p + "self_attn."
            w[f"{L}.ln1_w"] = normw(p + "input_layernorm.weight")
            for n in "qkv":
                w[f"{L}.W{n}"] = take(a + f"{n}_proj.weight")
                if c.get("qkv_bias"):
                    w[f"{L}.b{n}"] = take(a + f"{n}_proj.bias")
            w[f"{L}.Wo"] = take(a + "o_proj.weight")
            if c.get("o_bias"):
                w[f"{L}.bo"] = take(a + "o_proj.bias")
            if gemma:
                w[f"{L}.ln1p_w"] = normw(p + "post_attention_layernorm.weight")
                w[f"{L}.ln2_w"] = normw(p + "pre_feedforward_layernorm.weight")
                w[f"{L}.ln2p_w"] = normw(p + "post_feedforward_layernorm.weight")
            else:
                w[f"{L}.ln2_w"] = normw(p + "post_attention_layernorm.weight")
            w[f"{L}.W_in"] = take(p + "mlp.gate_proj.weight")
            w[f"{L}.W_up"] = take(p + "mlp.up_proj.weight")
            w[f"{L}.W_out"] = take(p + "mlp.down_proj.weight")
        ignore = (".rotary_emb.inv_freq",) + (("lm_head.weight",) if c["tied"] else ())
    extra = [k for k in s if k not in used and not k.endswith(ignore)]
    if extra:
        raise ValueError(f"{where}: unexpected tensors {sorted(extra)[:5]}")
    expect = {"Wq": (NH * HS, C), "Wk": (NKV * HS, C), "Wv": (NKV * HS, C), "Wo": (C, NH * HS),
              "W_in": (c["M"], C), "W_out": (C, c["M"])}
    for L in range(c["L"]):
        for k, shape in expect.items():
            if tuple(w[f"{L}.{k}"].shape) != shape:
                raise ValueError(f"{where}: layer {L} {k} has shape {list(w[f'{L}.{k}'].shape)}, config.json implies {list(shape)}")
    return w


# ----------------------------------------------------------------------------------------------
# Building blocks (x is (T, C) for one sequence)


def activation(name, x):
    if name == "gelu_new":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "relu":
        return torch.clamp_min(x, 0.0)
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "silu":
        return x * torch.sigmoid(x)
    raise ValueError(name)


def norm(hook, x, w, b, eps, kind, prefix):
    if kind == "ln":
        x = x - x.mean(dim=-1, keepdim=True)
    scale = hook(prefix + ".hook_scale", torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps))
    normalized = hook(prefix + ".hook_normalized", x / scale)
    out = normalized * w
    return out + b if b is not None else out


def inv_freq(rope, L, exact=False):
    """float32 inverse frequencies of the rotary planes for a run of length L (see the module doc); exact=True:
    float64, not rounded (only to compare with exact references)."""
    rd, theta, sc = rope["dim"], rope["theta"], rope["scaling"]
    if sc is not None and sc["type"] == "dynamic" and L > sc["orig"]:
        f = sc["factor"]
        theta = theta * (f * L / sc["orig"] - (f - 1.0)) ** (rd / (rd - 2.0))
    inv = [1.0 / theta ** (2.0 * i / rd) for i in range(rd // 2)]
    if sc is not None and sc["type"] == "linear":
        inv = [v / sc["factor"] for v in inv]
    if sc is not None and sc["type"] == "llama3":
        f, lo, hi, orig = sc["factor"], sc["low"], sc["high"], sc["orig"]
        out = []
        for v in inv:
            wl = 2.0 * math.pi / v
            if wl < orig / hi:
                out.append(v)
            elif wl > orig / lo:
                out.append(v / f)
            else:
                s = (orig / wl - lo) / (hi - lo)
                out.append((1.0 - s) * v / f + s * v)
        inv = out
    t = torch.tensor(inv, dtype=torch.float64)
    return t if exact else t.to(torch.float32)


def rope_tables(rope, T, L, dtype, f64_angles=False):
    inv = inv_freq(rope, L, exact=f64_angles)
    if f64_angles:  # exact angles (only to compare with exact references)
        angle = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    else:
        angle = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    angle = angle.to(dtype)
    return torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]  # (T, 1, rd/2)


def apply_rope(x, cos, sin):
    """rotate-half on the first rd = 2*cos.shape[-1] dims of each head; the rest pass through."""
    half = cos.shape[-1]
    a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def visible(T, window):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    ok = j <= i
    if window:
        ok = ok & (i - j < window)
    return ok


def forward(model, tokens, hook, want_result=True, extra=False, f64_angles=False):
    """One sequence; returns logits (T, V). hook(name, t) -> the tensor that flows on."""
    c, w = model["cfg"], model["w"]
    T, NH, NKV, HS, C = len(tokens), c["NH"], c["NKV"], c["HS"], c["C"]
    if T > c["n_ctx"]:
        raise ValueError(f"sequence of {T} tokens is longer than the context {c['n_ctx']}")
    if any(t < 0 or t >= c["V"] for t in tokens):
        raise ValueError(f"token id outside [0, {c['V']})")
    dt = w["embed"].dtype
    grad = torch.is_grad_enabled()
    idx = torch.tensor(tokens, dtype=torch.long)
    e = w["embed"][idx]
    if c.get("embed_scale"):
        e = e * torch.tensor(math.sqrt(C), dtype=torch.float32).to(dt)  # a float32 constant
    x = hook("hook_embed", e.detach().clone().requires_grad_(grad))
    if c["family"] == "gpt2":
        x = x + hook("hook_pos_embed", w["pos"][:T].detach().clone().requires_grad_(grad))
    if c["rope"]:
        cos, sin = rope_tables(c["rope"], T, model.get("rope_len") or T, dt, f64_angles)
    rep = NH // NKV
    scale = (c["qpas"] ** -0.5) if c.get("qpas") else 1.0 / math.sqrt(HS)
    ln_b = c["norm"] == "ln"
    parallel = c.get("parallel", False)
    for L in range(c["L"]):
        b = f"blocks.{L}"
        x = hook(b + ".hook_resid_pre", x)
        h = norm(hook, x, w[f"{L}.ln1_w"], w.get(f"{L}.ln1_b"), c["eps"], c["norm"], b + ".ln1")
        qkv = {}
        for n, heads in (("q", NH), ("k", NKV), ("v", NKV)):
            t = h @ w[f"{L}.W{n}"].t()
            if f"{L}.b{n}" in w:
                t = t + w[f"{L}.b{n}"]
            qkv[n] = hook(f"{b}.attn.hook_{n}", t.reshape(T, heads, HS))
        q, k, v = qkv["q"], qkv["k"], qkv["v"]
        if c["rope"]:
            q = hook(b + ".attn.hook_rot_q", apply_rope(q, cos, sin))
            k = hook(b + ".attn.hook_rot_k", apply_rope(k, cos, sin))
        kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # query head h reads kv head h // rep
        s = torch.einsum("qhd,khd->hqk", q, kr) * scale
        if c.get("attn_softcap"):
            cap = c["attn_softcap"]
            s = cap * torch.tanh(s / cap)
        s = s.masked_fill(~visible(T, c["windows"][L]), float("-inf"))
        s = hook(b + ".attn.hook_attn_scores", s)
        pattern = hook(b + ".attn.hook_pattern", torch.softmax(s, dim=-1))
        z = hook(b + ".attn.hook_z", torch.einsum("hqk,khd->qhd", pattern, vr))
        Wo = w[f"{L}.Wo"]  # (C, NH*HS)
        if want_result:
            result = hook(b + ".attn.hook_result", torch.einsum("thd,chd->thc", z, Wo.reshape(C, NH, HS)))
            attn = result.sum(dim=1)
        else:
            attn = z.reshape(T, NH * HS) @ Wo.t()
        if f"{L}.bo" in w:
            attn = attn + w[f"{L}.bo"]
        if c.get("post_norms"):
            attn = norm(hook, attn, w[f"{L}.ln1p_w"], None, c["eps"], "rms", b + ".ln1_post")
        attn = hook(b + ".hook_attn_out", attn)
        if parallel:
            mlp_in = hook(b + ".hook_mlp_in", x)
        else:
            x = hook(b + ".hook_resid_mid", x + attn)
            mlp_in = hook(b + ".hook_mlp_in", x)
        h = norm(hook, mlp_in, w[f"{L}.ln2_w"], w.get(f"{L}.ln2_b"), c["eps"], c["norm"], b + ".ln2")
        if extra:
            h = hook(b + ".mlp.hook_in", h)
        pre = h @ w[f"{L}.W_in"].t()
        if f"{L}.b_in" in w:
            pre = pre + w[f"{L}.b_in"]
        pre = hook(b + ".mlp.hook_pre", pre)
        if f"{L}.W_up" in w:
            lin = hook(b + ".mlp.hook_pre_linear", h @ w[f"{L}.W_up"].t())
            post = activation(c["act"], pre) * lin
        else:
            post = activation(c["act"], pre)
        post = hook(b + ".mlp.hook_post", post)
        out = post @ w[f"{L}.W_out"].t()
        if f"{L}.b_out" in w:
            out = out + w[f"{L}.b_out"]
        if extra:
            out = hook(b + ".mlp.hook_out", out)
        if c.get("post_norms"):
            out = norm(hook, out, w[f"{L}.ln2p_w"], None, c["eps"], "rms", b + ".ln2_post")
        out = hook(b + ".hook_mlp_out", out)
        x = hook(b + ".hook_resid_post", (x + attn + out) if parallel else (x + out))
    h = norm(hook, x, w["lnf_w"], w.get("lnf_b") if ln_b else None, c["eps"], c["norm"], "ln_final")
    logits = h @ w["unembed"].t()
    if c.get("final_softcap"):
        cap = c["final_softcap"]
        logits = cap * torch.tanh(logits / cap)
    return logits


# ----------------------------------------------------------------------------------------------
# make: tensor specs (name, shape, init) for a config.json, in file order


def make_specs(c, qk_gain=1.0):
    C, NH, NKV, HS, M, V = c["C"], c["NH"], c["NKV"], c["HS"], c["M"], c["V"]
    mat = 1.0 / math.sqrt(C)
    qk = qk_gain * 1.5 / math.sqrt(C)
    out_std = 0.5 / math.sqrt(NH * HS)
    fam = c["family"]
    specs = []
    if fam == "neox":
        g = "gpt_neox."
        specs.append((g + "embed_in.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
        for L in range(c["L"]):
            p = f"{g}layers.{L}."
            specs += [(p + "input_layernorm.weight", [C], ("norm_weight",)), (p + "input_layernorm.bias", [C], ("normal", 0.05)),
                      (p + "post_attention_layernorm.weight", [C], ("norm_weight",)),
                      (p + "post_attention_layernorm.bias", [C], ("normal", 0.05)),
                      (p + "attention.query_key_value.weight", [3 * NH * HS, C], ("neox_qkv", NH, HS, qk, mat)),
                      (p + "attention.query_key_value.bias", [3 * NH * HS], ("normal", 0.1)),
                      (p + "attention.dense.weight", [C, NH * HS], ("normal", out_std)),
                      (p + "attention.dense.bias", [C], ("normal", 0.05)),
                      (p + "mlp.dense_h_to_4h.weight", [M, C], ("normal", mat)), (p + "mlp.dense_h_to_4h.bias", [M], ("normal", 0.1)),
                      (p + "mlp.dense_4h_to_h.weight", [C, M], ("normal", 0.5 / math.sqrt(M))),
                      (p + "mlp.dense_4h_to_h.bias", [C], ("normal", 0.05))]
        specs += [(g + "final_layer_norm.weight", [C], ("norm_weight",)), (g + "final_layer_norm.bias", [C], ("normal", 0.05))]
        if not c["tied"]:
            specs.append(("embed_out.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
        return specs
    gemma = fam == "gemma2"
    nw = ("normal", 0.1) if gemma else ("norm_weight",)  # Gemma stores w of (1 + w)
    specs.append(("model.embed_tokens.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
    for L in range(c["L"]):
        p = f"model.layers.{L}."
        a = p + "self_attn."
        specs.append((p + "input_layernorm.weight", [C], nw))
        for n, rows, std in (("q", NH * HS, qk), ("k", NKV * HS, qk), ("v", NKV * HS, mat)):
            specs.append((a + f"{n}_proj.weight", [rows, C], ("normal", std)))
            if c.get("qkv_bias"):
                specs.append((a + f"{n}_proj.bias", [rows], ("normal", 0.2)))
        specs.append((a + "o_proj.weight", [C, NH * HS], ("normal", out_std)))
        if c.get("o_bias"):
            specs.append((a + "o_proj.bias", [C], ("normal", 0.05)))
        if gemma:
            specs += [(p + "post_attention_layernorm.weight", [C], nw), (p + "pre_feedforward_layernorm.weight", [C], nw),
                      (p + "post_feedforward_layernorm.weight", [C], nw)]
        else:
            specs.append((p + "post_attention_layernorm.weight", [C], nw))
        specs += [(p + "mlp.gate_proj.weight", [M, C], ("normal", mat)), (p + "mlp.up_proj.weight", [M, C], ("normal", mat)),
                  (p + "mlp.down_proj.weight", [C, M], ("normal", 0.5 / math.sqrt(M)))]
    specs.append(("model.norm.weight", [C], nw))
    if not c["tied"]:
        specs.append(("lm_head.weight", [V, C], ("normal", 3.0 / math.sqrt(C))))
    return specs


def init_tensor(shape, init, g):
    if init[0] == "neox_qkv":  # (NH, 3, HS, C): q and k rows get the larger scale
        _, NH, HS, qk, v = init
        t = torch.randn(shape, generator=g).reshape(NH, 3, HS, -1)
        t[:, :2] *= qk
        t[:, 2] *= v
        return t.reshape(shape)
    return None
