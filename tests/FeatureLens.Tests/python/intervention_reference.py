#!/usr/bin/python3
"""FeatureLens intervention oracle: the real model with transcoders spliced (error terms) and latents edited, in torch.

Run it with /usr/bin/python3 (Debian python3-torch, CPU). The forward pass and the splice are grad_reference.py's
(imported, float64): every transcoder is spliced WITH its error term, error = true mlp_out - the clean output of the
transcoder on the current input (a separate branch of the graph), so the unedited spliced model is the model. An edit
replaces the value of {hook}.hook_sae_acts_post at (pos, latent) before decoding; everything downstream (attention,
the real MLPs of later layers, later transcoders) is computed from the edited residual stream.

Usage
  intervention_reference.py --model PATH --tokens TOKENS.json --saes SAES.safetensors --edits EDITS.json --out OUT.json

TOKENS.json: one list of token ids. SAES: grad_reference.py's layout, transcoders writing blocks.L.hook_mlp_out.
EDITS.json: [[layer, pos, latent, value], ...] (layer = the layer whose hook_mlp_out the transcoder writes).
OUT.json: {"clean": logits at the last position of the spliced, unedited model (V floats),
           "edited": the same with the edits, "model": the unspliced model's last-position logits}.
"""

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from torch_reference import load_model  # noqa: E402
from grad_reference import load_saes, Graph, forward  # noqa: E402

DT = torch.float64


def last_logits(model, tokens, saes, edits):
    g = Graph(saes, edits=edits, want_result=False)
    with torch.no_grad():
        logits = forward(model, tokens, g)
    return logits[-1].tolist()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--saes", required=True)
    ap.add_argument("--edits", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    model = load_model(args.model, DT)
    with open(args.tokens) as f:
        tokens = [int(t) for t in json.load(f)]
    saes = load_saes(args.saes)
    by_layer = {}
    for s in saes:
        out = s.get("hook_name_out") or ""
        parts = out.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_mlp_out":
            raise ValueError(f"SAE {s['name']}: writes {out!r}, not blocks.L.hook_mlp_out")
        by_layer[int(parts[1])] = s
    with open(args.edits) as f:
        raw = json.load(f)
    per_hook = {}
    for layer, pos, latent, value in raw:
        if layer not in by_layer:
            raise ValueError(f"edit of layer {layer}: no transcoder writes blocks.{layer}.hook_mlp_out")
        hook = by_layer[layer]["hook_name"] + ".hook_sae_acts_post"
        per_hook.setdefault(hook, []).append((int(pos), int(latent), float(value)))

    def make_edit(items):
        def edit(f):
            f = f.clone()
            for pos, latent, value in items:
                f[pos, latent] = value
            return f
        return edit

    edits = {h: make_edit(items) for h, items in per_hook.items()}
    result = {
        "clean": last_logits(model, tokens, saes, None),
        "edited": last_logits(model, tokens, saes, edits),
        "model": last_logits(model, tokens, (), None),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
