"""Independent PyTorch (float32) reference for SAE / transcoder encode and decode, after SAELens's formulas.

Usage: /usr/bin/python3 sae_reference.py IN.safetensors OUT.safetensors

IN holds one or more cases. Its __metadata__ has "cases" (comma-separated case names) and, for each
case name C, a JSON config under key C:
  {"architecture": standard|gated|jumprelu|topk|transcoder|skip_transcoder|jumprelu_transcoder,
   "normalize_activations": none|expected_average_only_in|constant_norm_rescale|layer_norm,
   "apply_b_dec_to_input": bool, "rescale_acts_by_decoder_norm": bool, "k": int}
and tensors "C/x" (n, d_in), "C/W_enc" (d_in, d_sae), "C/b_enc" (d_sae), "C/W_dec" (d_sae, d_out),
"C/b_dec" (d_out), plus "C/threshold" (jumprelu*), "C/b_gate", "C/r_mag", "C/b_mag" (gated; no b_enc)
and "C/W_skip" (d_out, d_in) (skip_transcoder).

OUT gets, per case:
  "C/sae_in"  (n, d_in)   the encoder's input: normalised x, minus b_dec when apply_b_dec_to_input
  "C/pre"     (n, d_sae)  hook_sae_acts_pre (gated: the magnitude path)
  "C/gate"    (n, d_sae)  gated only: the gate path's pre-activations
  "C/acts"    (n, d_sae)  hook_sae_acts_post
  "C/recons"  (n, d_out)  hook_sae_recons: acts·W_dec + b_dec (acts ÷ ‖W_dec_j‖ for rescaling TopK)
  "C/output"  (n, d_out)  hook_sae_output: recons with the normalisation undone (not for transcoders),
                          plus x·W_skipᵀ (raw x) for skip transcoders

Formulas (SAELens v6):
  constant_norm_rescale: x·√d_in/‖x‖, undone by dividing by that factor
  layer_norm: (x − mean)/(std + 1e-5) with the unbiased std, undone by ·std + mean
  none, expected_average_only_in: nothing at inference
  pre = x'·W_enc + b_enc; standard/transcoder: ReLU; jumprelu: ReLU(pre)·[pre > threshold]
  topk: ranked on pre·‖W_dec_j‖ when rescale_acts_by_decoder_norm, torch.topk then ReLU, scattered
  gated: gate = x'·W_enc + b_gate, mag = x'·(W_enc·exp(r_mag)) + b_mag, acts = [gate > 0]·ReLU(mag)
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_lite as st  # noqa: E402

TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder")


def normalise(x, mode):
    """Returns (normalised x, function that undoes it on the decoder's output)."""
    d_in = x.shape[-1]
    if mode == "constant_norm_rescale":
        factor = math.sqrt(d_in) / x.norm(dim=-1, keepdim=True)
        return x * factor, lambda y: y / factor
    if mode == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)  # unbiased, as torch's default
        return centred / (std + 1e-5), lambda y: y * std + mu
    if mode in ("none", "expected_average_only_in"):
        return x, lambda y: y
    raise ValueError(f"unknown normalize_activations {mode!r}")


def run_case(cfg, t):
    arch = cfg["architecture"]
    x = t["x"].float()
    w_enc, w_dec, b_dec = t["W_enc"].float(), t["W_dec"].float(), t["b_dec"].float()
    sae_in, undo = normalise(x, cfg["normalize_activations"])
    if cfg.get("apply_b_dec_to_input", False):
        sae_in = sae_in - b_dec
    out = {"sae_in": sae_in}
    dec_norm = w_dec.norm(dim=-1)  # (d_sae,)

    if arch == "gated":
        gate = sae_in @ w_enc + t["b_gate"].float()
        pre = sae_in @ (w_enc * t["r_mag"].float().exp()) + t["b_mag"].float()
        acts = (gate > 0).float() * torch.relu(pre)
        out["gate"] = gate
    else:
        pre = sae_in @ w_enc + t["b_enc"].float()
        if arch in ("standard", "transcoder", "skip_transcoder"):
            acts = torch.relu(pre)
        elif arch in ("jumprelu", "jumprelu_transcoder"):
            acts = torch.relu(pre) * (pre > t["threshold"].float()).float()
        elif arch == "topk":
            ranked = pre * dec_norm if cfg.get("rescale_acts_by_decoder_norm", False) else pre
            top = torch.topk(ranked, k=int(cfg["k"]), dim=-1)
            acts = torch.zeros_like(ranked).scatter_(-1, top.indices, top.values.relu())
        else:
            raise ValueError(f"unknown architecture {arch!r}")
    out["pre"] = pre
    out["acts"] = acts

    dec_in = acts / dec_norm if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False) else acts
    recons = dec_in @ w_dec + b_dec
    out["recons"] = recons
    output = recons if arch in TRANSCODERS else undo(recons)
    if arch == "skip_transcoder":
        output = output + x @ t["W_skip"].float().T
    out["output"] = output
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: sae_reference.py IN.safetensors OUT.safetensors")
    torch.set_num_threads(1)
    src, dst = sys.argv[1], sys.argv[2]
    _, metadata, _ = st.read_header(src)
    tensors = st.load(src)
    result = {}
    with torch.no_grad():
        for case in metadata["cases"].split(","):
            cfg = json.loads(metadata[case])
            prefix = case + "/"
            local = {name[len(prefix):]: v for name, v in tensors.items() if name.startswith(prefix)}
            for name, v in run_case(cfg, local).items():
                result[prefix + name] = v.contiguous()
    st.save(dst, result)
    print(json.dumps({"cases": len(metadata["cases"].split(",")), "tensors": len(result)}))


if __name__ == "__main__":
    main()
