#!/usr/bin/python3
"""FeatureLens graph oracle: influence and pruning of attribution graphs (CONNECTIONS.md, "Attribution graphs"),
computed densely with numpy float64 straight from the definitions.

Node order: [features, errors, embeddings, logits]; A[target, source] dense (n x n), rows of error/embedding nodes and
columns of logit nodes zero.

  normalise   Ahat = |A| with each row divided by its sum (rows summing to 0 stay 0)
  influence   w . (Ahat + Ahat^2 + ...) = w . ((I - Ahat)^-1 - I), w = logit probabilities on logit nodes
  keep(frac)  of a list of scores: sort by decreasing score, take scores until their running sum reaches frac of the
              total; keep every score >= the last one taken, ties within 1e-9 relative included (all when the total is 0)
  prune       1. nodes: keep(node_threshold) over every node's influence; embeddings and logits always kept
              2. A' = A with rows and columns of dropped nodes zeroed; score = normalise(A') * (influence(A') + w)[:, None];
                 edges are the non-zero entries of A'; keep(edge_threshold) over their scores
              3. repeat until nothing changes: drop edges touching dropped nodes; drop feature and error nodes without
                 a kept outgoing edge, feature nodes without a kept incoming edge
  cumulative  per node: sum of the influences >= its own (ties within 1e-9 relative included) / total (0 if total 0)

Usage: graph_reference.py --job JOB.json --out OUT.json
JOB.json: list of {"A": [[...]], "n_features", "n_errors", "n_embeddings", "n_logits", "probs": [...],
"node_threshold", "edge_threshold"}; OUT.json: list of {"influence", "cumulative", "node_kept", "edges": [[t, s]...]}.
"""
import argparse
import json

import numpy as np


def normalise(a):
    m = np.abs(a)
    s = m.sum(axis=1, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m), where=s > 0)


def influence(a, w):
    n = a.shape[0]
    ahat = normalise(a)
    total = np.linalg.inv(np.eye(n) - ahat) - np.eye(n)
    infl = w @ total
    # the inverse leaves round-off (~1e-16) where no path exists; those influences are exactly 0
    infl[np.abs(infl) <= 1e-13 * max(1.0, np.abs(infl).max())] = 0.0
    return infl


TIE = 1e-9  # scores within this relative distance are ties


def keep(scores, frac):
    if scores.size == 0:
        return np.zeros(0, dtype=bool)
    desc = np.sort(scores)[::-1]
    running = np.cumsum(desc)
    total = running[-1]
    if total <= 0:
        return np.ones(scores.shape, dtype=bool)
    reached = np.nonzero(running / total >= frac)[0]
    cut = desc[reached[0]] if reached.size else desc[-1]
    return scores >= cut * (1 - TIE)


def cumulative(infl):
    total = infl.sum()
    if total <= 0:
        return np.zeros_like(infl)
    return np.array([infl[infl >= x * (1 - TIE)].sum() / total for x in infl])


def prune(job):
    a = np.array(job["A"], dtype=np.float64)
    nf, ne, nt, nl = job["n_features"], job["n_errors"], job["n_embeddings"], job["n_logits"]
    n = nf + ne + nt + nl
    assert a.shape == (n, n), a.shape
    w = np.zeros(n)
    w[n - nl:] = job["probs"]
    infl = influence(a, w)

    node_kept = keep(infl, job["node_threshold"])
    node_kept[nf + ne:] = True

    both = np.outer(node_kept, node_kept)
    ap = np.where(both, a, 0.0)
    infl_p = influence(ap, w)
    score = normalise(ap) * (infl_p + w)[:, None]
    cand = ap != 0
    edge_kept = np.zeros((n, n), dtype=bool)
    edge_kept[cand] = keep(score[cand], job["edge_threshold"])

    while True:
        edge_kept &= np.outer(node_kept, node_kept)
        has_out = edge_kept.any(axis=0)
        has_in = edge_kept.any(axis=1)
        new = node_kept.copy()
        new[: nf + ne] &= has_out[: nf + ne]
        new[:nf] &= has_in[:nf]
        if (new == node_kept).all():
            break
        node_kept = new
    t, s = np.nonzero(edge_kept)
    return {
        "influence": infl.tolist(),
        "cumulative": cumulative(infl).tolist(),
        "node_kept": node_kept.tolist(),
        "edges": [[int(i), int(j)] for i, j in zip(t, s)],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.job) as f:
        jobs = json.load(f)
    with open(args.out, "w") as f:
        json.dump([prune(j) for j in jobs], f)


if __name__ == "__main__":
    main()
