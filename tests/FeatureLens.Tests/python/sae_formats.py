"""Writes random SAEs in every community format FeatureLens reads, for SaeFormatTests.

usage: sae_formats.py --out DIR --seed S

Each case is written the way its own library lays it out (SAELens cfg.json + sae_weights.safetensors,
sparsify cfg.json + sae.safetensors, Gemma Scope params.npz), in float32, float16 or bfloat16, with
matrices sometimes stored transposed. Beside the SAE files, expected.safetensors holds what the loader
must produce, in float32 and FeatureLens's layout: W_enc (d_in, d_sae), W_dec (d_sae, d_out),
b_enc, b_dec, threshold, b_gate, r_mag, b_mag, W_skip (d_out, d_in). DIR/manifest.json maps each case
name to the path to load and the config the loader must report.

numpy is not needed: .npy files are written byte by byte (header versions 1.0 and 2.0, C and Fortran
order, little- and big-endian), and .npz archives with zipfile (stored and deflated entries).
"""

import argparse
import json
import os
import struct
import zipfile

import torch

from safetensors_lite import save

DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DT_WORDS = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def rand(g, *shape, positive=False):
    t = torch.randn(*shape, generator=g)
    return t.abs() + 0.05 if positive else t


def stored(t, dtype):
    """The tensor as the file stores it, and the float32 value the loader must read back."""
    s = t.to(DT[dtype]).contiguous()
    return s, s.to(torch.float32)


class Case:
    def __init__(self, root, name, rel):
        self.dir = os.path.join(root, rel)
        os.makedirs(self.dir, exist_ok=True)
        self.name, self.rel = name, rel
        self.file = {}       # name -> tensor as stored
        self.expected = {}   # canonical name -> float32, FeatureLens layout

    def put(self, file_name, canonical, t, dtype="F32", transpose=False):
        s, back = stored(t, dtype)
        self.file[file_name] = s.t().contiguous() if transpose else s
        if canonical is not None:
            self.expected[canonical] = back

    def finish(self, weights_name, cfg, expect, manifest, load_rel=None):
        if cfg is not None:
            with open(os.path.join(self.dir, "cfg.json"), "w") as f:
                json.dump(cfg, f, indent=1)
        if weights_name is not None:
            save(os.path.join(self.dir, weights_name), self.file)
        save(os.path.join(self.dir, "expected.safetensors"), self.expected)
        expect["path"] = load_rel or self.rel
        manifest[self.name] = expect


def saelens(root, manifest, g, name, arch, *, dtype="F32", v6=True, d_in=None, d_sae=None, d_out=None,
            transpose=False, log_threshold=False, k=None, extra_cfg=None, extra_meta=None, hook="blocks.1.hook_resid_post",
            drop_dims=False, rel=None, expect_extra=None):
    d_in = d_in or int(torch.randint(8, 20, (1,), generator=g))
    d_sae = d_sae or int(torch.randint(24, 40, (1,), generator=g))
    transcoder = arch in ("transcoder", "skip_transcoder", "jumprelu_transcoder")
    d_out = d_out or (d_in + 3 if transcoder else d_in)
    c = Case(root, name, rel or name)
    c.put("W_enc", "W_enc", rand(g, d_in, d_sae), dtype, transpose)
    c.put("W_dec", "W_dec", rand(g, d_sae, d_out), dtype, transpose)
    c.put("b_dec", "b_dec", rand(g, d_out), dtype)
    if arch == "gated":
        c.put("b_gate", "b_gate", rand(g, d_sae), dtype)
        c.put("r_mag", "r_mag", rand(g, d_sae), dtype)
        c.put("b_mag", "b_mag", rand(g, d_sae), dtype)
    else:
        c.put("b_enc", "b_enc", rand(g, d_sae), dtype)
    if arch in ("jumprelu", "jumprelu_transcoder"):
        if log_threshold:
            lt, back = stored(rand(g, d_sae) * 0.5, dtype)
            c.file["log_threshold"] = lt
            c.expected["threshold"] = torch.exp(back)
        else:
            c.put("threshold", "threshold", rand(g, d_sae, positive=True), dtype)
    if arch == "skip_transcoder":
        c.put("W_skip", "W_skip", rand(g, d_out, d_in), dtype)

    meta = {"model_name": "tiny-stories-1M", "hook_name": hook, "hook_head_index": None, "context_size": 128,
            "prepend_bos": True, "dataset_path": "roneneldan/TinyStories", "neuronpedia_id": f"tiny/{name}",
            "sae_lens_version": "6.5.1"}
    if transcoder:
        meta["hook_name_out"] = "blocks.1.hook_mlp_out"
    meta.update(extra_meta or {})
    top = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": not transcoder,
           "normalize_activations": "none"}
    if v6:
        top["architecture"] = arch
        if transcoder:
            top["d_out"] = d_out
        if k is not None:
            top["k"] = k
        top["metadata"] = meta
        cfg = top
    else:
        cfg = dict(top)
        cfg.update(meta)
        if arch != "standard":
            cfg["architecture"] = arch
    cfg.update(extra_cfg or {})
    if drop_dims:
        cfg.pop("d_in", None)
        cfg.pop("d_sae", None)
    expect = {"format": "SAELens v6" if v6 else "SAELens (flat config)", "architecture": arch, "d_in": d_in, "d_sae": d_sae,
              "d_out": d_out, "k": k or 0, "rescale": False, "apply_b_dec": not transcoder, "normalization": "none",
              "reshape_hook_z": False, "hook_name": hook, "hook_name_out": meta.get("hook_name_out"), "model_name": "tiny-stories-1M",
              "storage_dtype": DT_WORDS[dtype], "context_size": 128, "neuronpedia_id": f"tiny/{name}",
              "dataset_path": "roneneldan/TinyStories", "extra": {"sae_lens_version": "6.5.1"}}
    expect["extra"].update(expect_extra or {})
    return c, cfg, expect


def write_saelens(root, manifest, g, name, arch, tweak=None, **kw):
    c, cfg, expect = saelens(root, manifest, g, name, arch, **kw)
    if tweak:
        tweak(cfg, expect)
    c.finish("sae_weights.safetensors", cfg, expect, manifest)
    return c


def sparsify(root, manifest, g, name, rel, hookpoint_hook, *, dtype="F32", d_in=None, use_expansion=False, square=False):
    d_in = d_in or int(torch.randint(8, 20, (1,), generator=g))
    d_sae = d_in if square else d_in * 2
    c = Case(root, name, rel)
    w_enc = rand(g, d_in, d_sae)
    c.put("encoder.weight", "W_enc", w_enc, dtype, transpose=True)   # sparsify stores the Linear [d_sae, d_in]
    c.put("encoder.bias", "b_enc", rand(g, d_sae), dtype)
    c.put("W_dec", "W_dec", rand(g, d_sae, d_in), dtype)
    c.put("b_dec", "b_dec", rand(g, d_in), dtype)
    k = int(torch.randint(1, d_sae // 2, (1,), generator=g))
    cfg = {"expansion_factor": 2 if use_expansion else 32, "normalize_decoder": True, "num_latents": 0 if use_expansion else d_sae,
           "k": k, "multi_topk": False, "d_in": d_in}
    if square:
        cfg["expansion_factor"], cfg["num_latents"] = 1, 0
    expect = {"format": "sparsify", "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "d_out": d_in, "k": k, "rescale": False,
              "apply_b_dec": True, "normalization": "none", "reshape_hook_z": False, "hook_name": hookpoint_hook, "hook_name_out": None,
              "model_name": None, "storage_dtype": DT_WORDS[dtype], "context_size": None, "neuronpedia_id": None, "dataset_path": None,
              "extra": {"sparsify_hookpoint": os.path.basename(rel), "normalize_decoder": True, "multi_topk": False}}
    c.finish("sae.safetensors", cfg, expect, manifest)


# ─────────────────────────────── .npy / .npz by hand ───────────────────────────────

def npy_bytes(t, descr="<f4", fortran=False, version=(1, 0)):
    """t is float32; descr picks the stored type and byte order."""
    kind = descr[1:]
    src = t.to({"f4": torch.float32, "f2": torch.float16, "f8": torch.float64}[kind])
    data_t = src.t().contiguous() if fortran and src.dim() == 2 else src.contiguous()
    raw = data_t.view(torch.uint8).reshape(-1, src.element_size())
    if descr[0] == ">":
        raw = raw.flip(1)
    data = bytes(raw.contiguous().reshape(-1).tolist())
    shape = f"({src.shape[0]},)" if src.dim() == 1 else "(" + ", ".join(str(s) for s in src.shape) + ")"
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", shape)
    len_size = 2 if version[0] == 1 else 4
    pre = 6 + 2 + len_size
    pad = (64 - (pre + len(header) + 1) % 64) % 64
    header = (header + " " * pad + "\n").encode("latin1")
    out = b"\x93NUMPY" + bytes(version) + (struct.pack("<H", len(header)) if len_size == 2 else struct.pack("<I", len(header)))
    return out + header + data, src.to(torch.float32)


def gemma(root, manifest, g, name, rel, expect_hook, *, compress, fortran=False, version=(1, 0), model=None,
          big_endian_bias=False, w_enc_descr="<f4", b_dec_descr="<f4", reshape=False, transcoder=False, hook_out=None, extra=None):
    d_in = int(torch.randint(8, 20, (1,), generator=g))
    d_sae = int(torch.randint(24, 40, (1,), generator=g))
    c = Case(root, name, rel)
    arrays = {
        "W_enc": (rand(g, d_in, d_sae), w_enc_descr, fortran),
        "W_dec": (rand(g, d_sae, d_in), "<f4", fortran),
        "b_enc": (rand(g, d_sae), ">f4" if big_endian_bias else "<f4", False),
        "b_dec": (rand(g, d_in), b_dec_descr, False),
        "threshold": (rand(g, d_sae, positive=True), "<f4", False),
    }
    path = os.path.join(c.dir, "params.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for n, (t, descr, fo) in arrays.items():
            b, back = npy_bytes(t, descr, fo, version)
            z.writestr(n + ".npy", b)
            c.expected[n] = back
    expect = {"format": "Gemma Scope npz", "architecture": "jumprelu_transcoder" if transcoder else "jumprelu", "d_in": d_in, "d_sae": d_sae,
              "d_out": d_in, "k": 0, "rescale": False, "apply_b_dec": False, "normalization": "none", "reshape_hook_z": reshape,
              "hook_name": expect_hook, "hook_name_out": hook_out, "model_name": model,
              "storage_dtype": {"<f4": "float32", "<f2": "float16"}[w_enc_descr], "context_size": None, "neuronpedia_id": None,
              "dataset_path": None, "extra": extra or {}}
    c.finish(None, None, expect, manifest, load_rel=os.path.join(rel, "params.npz"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    root = a.out
    m = {}

    # SAELens v6, every architecture
    write_saelens(root, m, g, "v6_standard", "standard", extra_meta={"custom_field": "kept"}, expect_extra={"custom_field": "kept"})
    write_saelens(root, m, g, "v6_gated", "gated")
    write_saelens(root, m, g, "v6_jumprelu", "jumprelu")
    write_saelens(root, m, g, "v6_jumprelu_log_threshold_bf16", "jumprelu", dtype="BF16", log_threshold=True)
    write_saelens(root, m, g, "v6_topk_f16", "topk", dtype="F16", k=5,
                  tweak=lambda cfg, e: (cfg.update(rescale_acts_by_decoder_norm=True), e.update(rescale=True)))
    write_saelens(root, m, g, "v6_transcoder", "transcoder")
    write_saelens(root, m, g, "v6_skip_transcoder_bf16", "skip_transcoder", dtype="BF16")

    def out_on_top(cfg, e):
        cfg["hook_name_out"] = cfg["metadata"].pop("hook_name_out")
    write_saelens(root, m, g, "v6_jumprelu_transcoder", "jumprelu_transcoder", tweak=out_on_top)

    def hook_z(cfg, e):
        cfg["normalize_activations"] = "constant_norm_rescale"
        e.update(normalization="constant_norm_rescale", reshape_hook_z=True)
    write_saelens(root, m, g, "v6_hook_z", "standard", hook="blocks.0.attn.hook_z", tweak=hook_z)

    def layer_norm(cfg, e):
        cfg["normalize_activations"] = "layer_norm"
        cfg["reshape_activations"] = "none"
        e.update(normalization="layer_norm")
    write_saelens(root, m, g, "v6_layer_norm", "standard", tweak=layer_norm)
    write_saelens(root, m, g, "v6_transposed", "standard", transpose=True)
    write_saelens(root, m, g, "v6_transposed_transcoder", "transcoder", transpose=True)
    write_saelens(root, m, g, "v6_square", "standard", d_in=16, d_sae=16)
    write_saelens(root, m, g, "v6_no_dims", "jumprelu", drop_dims=True)

    # older flat configs
    def flat_standard(cfg, e):
        cfg["hook_point"] = cfg.pop("hook_name")
        cfg["hook_point_layer"] = 1
        cfg["hook_point_head_index"] = cfg.pop("hook_head_index")
        cfg["activation_fn_str"] = "relu"
        cfg["normalize_activations"] = True
        e.update(normalization="expected_average_only_in")
        e["extra"].update(hook_point_layer=1, normalize_activations_was_bool=True)
    write_saelens(root, m, g, "flat_standard", "standard", v6=False, tweak=flat_standard)

    def flat_topk(cfg, e):
        cfg["architecture"] = "standard"
        cfg["activation_fn"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": 4}
        cfg["normalize_activations"] = False
        cfg["hook_layer"] = 1
        e.update(architecture="topk", k=4)
        e["extra"].update(hook_layer=1, normalize_activations_was_bool=False)
    write_saelens(root, m, g, "flat_topk_f16", "standard", v6=False, dtype="F16", tweak=flat_topk)

    # a suite folder of SAELens SAEs (LoadAll sorts by layer)
    write_saelens(root, m, g, "suite_l3", "standard", hook="blocks.3.hook_resid_pre", rel="suite/b_layer3")
    write_saelens(root, m, g, "suite_l1", "jumprelu", hook="blocks.1.hook_resid_post", rel="suite/a_layer1")
    write_saelens(root, m, g, "suite_l1_mlp", "standard", hook="blocks.1.hook_mlp_out", rel="suite/c_layer1_mlp")

    # a sparsify run: one folder per hook point
    sparsify(root, m, g, "sparsify_layers.1", "sparsify_run/layers.1", "blocks.1.hook_resid_post", use_expansion=True)
    sparsify(root, m, g, "sparsify_layers.0", "sparsify_run/layers.0", "blocks.0.hook_resid_post", dtype="BF16")
    sparsify(root, m, g, "sparsify_embed_tokens", "sparsify_run/embed_tokens", "blocks.0.hook_resid_pre", square=True)
    sparsify(root, m, g, "sparsify_layers.1.mlp", "sparsify_run/layers.1.mlp", "blocks.1.hook_mlp_out", dtype="F16")
    sparsify(root, m, g, "sparsify_custom", "sparsify_run/encoder.custom_block", "")

    # Gemma Scope
    gemma(root, m, g, "gemma_res_stored", "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_5", "blocks.3.hook_resid_post",
          compress=False, model="gemma-2-2b", extra={"width": "16k", "average_l0": 5, "layer": 3, "release": "gemma-scope-2b-pt-res"})
    gemma(root, m, g, "gemma_mlp_deflated_v2", "models--google--gemma-scope-9b-it-mlp/snapshots/abc123/layer_2/width_1m/average_l0_10",
          "blocks.2.hook_mlp_out", compress=True, version=(2, 0), model="gemma-2-9b-it",
          extra={"width": "1m", "average_l0": 10, "layer": 2, "release": "gemma-scope-9b-it-mlp"})
    gemma(root, m, g, "gemma_att_fortran_bigendian", "gemma-scope-2b-pt-att/layer_1/width_16k/average_l0_7", "blocks.1.attn.hook_z",
          compress=True, fortran=True, big_endian_bias=True, reshape=True, model="gemma-2-2b")
    gemma(root, m, g, "gemma_plain_f16_f8", "plain_npz", "", compress=False, w_enc_descr="<f2", b_dec_descr="<f8")

    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)
    print(f"wrote {len(m)} cases to {root}")


if __name__ == "__main__":
    main()
