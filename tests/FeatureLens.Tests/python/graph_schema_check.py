#!/usr/bin/python3
"""Checks a graph JSON file against the schema circuit-tracer's frontend reads (its frontend/graph_models.py pydantic
models Metadata, QParams, Node, Link, Model), written here independently as required keys and their types, plus the
node-id forms of FeatureLens's contract (CONNECTIONS.md): feature {layer}_{latent}_{pos}, error {layer}_-1_{pos},
embedding E_{token}_{pos}, logit {n_layers+1}_{token}_{pos}; and that every link joins two nodes of the file.

Usage: graph_schema_check.py FILE.json   -> prints "ok N nodes M links" or exits 1 naming the first problem.
"""
import json
import re
import sys

STR, INT, FLOAT, BOOL = "str", "int", "float", "bool"


def is_type(v, t, optional=False):
    if v is None:
        return optional
    if t == STR:
        return isinstance(v, str)
    if t == BOOL:
        return isinstance(v, bool)
    if t == INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if t == FLOAT:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    raise ValueError(t)


def need(obj, where, key, t, optional=False, required=True):
    if key not in obj:
        if required:
            fail(f"{where}.{key} is missing")
        return
    if not is_type(obj[key], t, optional):
        fail(f"{where}.{key} = {obj[key]!r} is not {t}{' or null' if optional else ''}")


def need_list(obj, where, key, t):
    if key not in obj or not isinstance(obj[key], list):
        fail(f"{where}.{key} is not a list")
    for i, v in enumerate(obj[key]):
        if not is_type(v, t):
            fail(f"{where}.{key}[{i}] = {v!r} is not {t}")


def fail(msg):
    print(msg)
    sys.exit(1)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        g = json.load(f)
    for key in ("metadata", "qParams", "nodes", "links"):
        if key not in g:
            fail(f"{key} is missing")
    md = g["metadata"]
    for key in ("slug", "scan", "prompt"):
        need(md, "metadata", key, STR)
    need_list(md, "metadata", "transcoder_list", STR)
    need_list(md, "metadata", "prompt_tokens", STR)
    need(md, "metadata", "node_threshold", FLOAT, optional=True, required=False)
    need(md, "metadata", "schema_version", INT)

    q = g["qParams"]
    need_list(q, "qParams", "pinnedIds", STR)
    if not isinstance(q.get("supernodes"), list) or any(not isinstance(s, list) or any(not isinstance(x, str) for x in s) for s in q["supernodes"]):
        fail("qParams.supernodes is not a list of lists of strings")
    for key in ("linkType", "clickedId", "sg_pos"):
        need(q, "qParams", key, STR)

    n_layers = None
    ids = set()
    n_pos = len(md["prompt_tokens"])
    for i, n in enumerate(g["nodes"]):
        w = f"nodes[{i}]"
        for key, t in (("node_id", STR), ("feature", INT), ("layer", STR), ("ctx_idx", INT), ("feature_type", STR),
                       ("jsNodeId", STR), ("token_prob", FLOAT), ("is_target_logit", BOOL), ("run_idx", INT),
                       ("reverse_ctx_idx", INT), ("clerp", STR)):
            need(n, w, key, t)
        for key in ("influence", "activation", "input", "bias"):
            need(n, w, key, FLOAT, optional=True)
        need(n, w, "latent", INT, optional=True)
        if not 0 <= n["ctx_idx"] < n_pos:
            fail(f"{w}.ctx_idx {n['ctx_idx']} is outside the {n_pos} prompt tokens")
        nid, kind, layer, pos = n["node_id"], n["feature_type"], n["layer"], n["ctx_idx"]
        if kind == "cross layer transcoder":
            ok = re.fullmatch(r"(\d+)_(\d+)_(\d+)", nid) and nid == f"{layer}_{n['latent']}_{pos}" and n["feature"] == n["latent"]
            ok = ok and n["input"] is not None and n["bias"] is not None and n["activation"] is not None
        elif kind == "mlp reconstruction error":
            ok = nid == f"{layer}_-1_{pos}" and n["feature"] == -1 and n["latent"] is None
        elif kind == "embedding":
            ok = layer == "E" and re.fullmatch(rf"E_(\d+)_{pos}", nid) and n["feature"] == pos
        elif kind == "logit":
            ok = nid == f"{layer}_{n['feature']}_{pos}" and pos == n_pos - 1 and n["input"] is not None
            if ok:
                n_layers = int(layer) - 1 if n_layers is None else n_layers
                ok = int(layer) - 1 == n_layers
        else:
            fail(f"{w}.feature_type {kind!r} is not one of the four node types")
        if not ok:
            fail(f"{w}: node_id {nid!r} / fields do not match a {kind} node")
        if nid in ids:
            fail(f"{w}.node_id {nid!r} is repeated")
        ids.add(nid)
    if n_layers is None:
        fail("no logit node")
    for i, n in enumerate(g["nodes"]):
        if n["feature_type"] in ("cross layer transcoder", "mlp reconstruction error") and not 0 <= int(n["layer"]) < n_layers:
            fail(f"nodes[{i}].layer {n['layer']} is outside [0, {n_layers})")

    for i, link in enumerate(g["links"]):
        w = f"links[{i}]"
        need(link, w, "source", STR)
        need(link, w, "target", STR)
        need(link, w, "weight", FLOAT)
        if link["source"] not in ids or link["target"] not in ids:
            fail(f"{w} joins {link['source']!r} -> {link['target']!r}, not both nodes of the file")
    print(f"ok {len(g['nodes'])} nodes {len(g['links'])} links")


if __name__ == "__main__":
    main()
