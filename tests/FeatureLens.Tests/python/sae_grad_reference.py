"""Independent PyTorch reference for SAE training gradients and one Adam step.

Usage: sae_grad_reference.py IN.safetensors OUT.safetensors

IN holds W_enc [d,m], b_enc [m], W_dec [m,d], b_dec [d], x [n,d], optional log_threshold [m] (jumprelu)
and dead_mask [m] (topk, 1 = dead). A transcoder adds its target y [n,d_out] (W_dec [m,d_out], b_dec [d_out]; the
losses below then compare x_hat with y instead of x) and, with a skip connection, W_skip [d_out,d]: x_hat gains
x @ W_skip.T and W_skip is trained too. Its metadata: arch (standard|topk|jumprelu), k, coef (L1 or L0
coefficient), bandwidth, aux_coef, apply_b_dec (0/1), lr, beta1, beta2, eps.

The losses are written out from their definitions with torch autograd (float64):
  mse      = mean over rows of sum over d of (x_hat - x)^2
  standard: f = relu(pre); + coef * mean_r sum_j f_rj * ||W_dec_j||
  jumprelu: theta = exp(log_threshold); f = pre * [pre > theta] with the rectangle straight-through
            estimator for theta (custom autograd Functions); + coef * mean_r #{pre_rj > theta_j}
  topk:     f = relu of the k largest pre, 0 elsewhere; + aux_coef * min(1, dead/k_aux_base) *
            mean_r ||e_hat_r - (x_r - x_hat_r).detach()||^2, e_hat = relu(top k_aux pre among dead) @ W_dec,
            k_aux_base = d_out // 2, k_aux = min(k_aux_base, dead)
OUT holds grad.<name>, loss/mse/sparsity/aux (shape [1]) and after.<name>: the parameters after one
torch.optim.Adam step (float32) on those gradients; for topk the W_dec gradient first loses its component
along each W_dec row and the rows are renormalised after the step.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_lite as st  # noqa: E402


def rectangle(u):
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = (pre > theta).to(pre.dtype) * grad
        grad_theta = (-(theta / bw) * rectangle((pre - theta) / bw) * grad).sum(0)
        return grad_pre, grad_theta, None


class HeavisideFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, bandwidth):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_theta = (-(1.0 / bw) * rectangle((pre - theta) / bw) * grad).sum(0)
        return torch.zeros_like(pre), grad_theta, None


def main():
    src, dst = sys.argv[1], sys.argv[2]
    t = st.load(src)
    _, meta, _ = st.read_header(src)
    arch = meta["arch"]
    k = int(meta.get("k", "0"))
    coef = float(meta.get("coef", "0"))
    bw = float(meta.get("bandwidth", "0"))
    aux_coef = float(meta.get("aux_coef", "0"))
    apply_b_dec = meta.get("apply_b_dec", "0") == "1"

    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["log_threshold"] if arch == "jumprelu" else [])
    names += ["W_skip"] if "W_skip" in t else []
    p = {nm: t[nm].double().clone().requires_grad_(True) for nm in names}
    x = t["x"].double()
    y = t["y"].double() if "y" in t else x  # what x_hat is fitted to
    d_out = y.shape[1]

    sae_in = x - p["b_dec"] if apply_b_dec else x
    pre = sae_in @ p["W_enc"] + p["b_enc"]
    sparsity = torch.zeros((), dtype=torch.float64)
    aux = torch.zeros((), dtype=torch.float64)
    if arch == "standard":
        f = torch.relu(pre)
        sparsity = coef * (f * p["W_dec"].norm(dim=1)).abs().sum(-1).mean()
    elif arch == "jumprelu":
        theta = torch.exp(p["log_threshold"])
        f = JumpReLUFn.apply(pre, theta, bw)
        sparsity = coef * HeavisideFn.apply(pre, theta, bw).sum(-1).mean()
    elif arch == "topk":
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        raise ValueError(arch)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    if "W_skip" in p:
        x_hat = x_hat + x @ p["W_skip"].T
    mse = (x_hat - y).pow(2).sum(-1).mean()
    if arch == "topk" and aux_coef > 0:
        dead = t["dead_mask"] > 0.5
        num_dead = int(dead.sum())
        if num_dead > 0:
            base = max(1, d_out // 2)
            k_aux = min(base, num_dead)
            scale = aux_coef * min(1.0, num_dead / base)
            masked = torch.where(dead[None, :], pre, torch.full_like(pre, float("-inf")))
            top_aux = masked.topk(k_aux, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top_aux.indices, torch.relu(top_aux.values))
            e_hat = acts @ p["W_dec"]
            residual = (y - x_hat).detach()
            aux = scale * (e_hat - residual).pow(2).sum(-1).mean()
    loss = mse + sparsity + aux
    loss.backward()

    out = {f"grad.{nm}": p[nm].grad.float().contiguous() for nm in names}
    for nm, v in [("loss", loss), ("mse", mse), ("sparsity", sparsity), ("aux", aux)]:
        out[nm] = v.detach().float().reshape(1)

    # one Adam step in float32 on the reference gradients
    q = {nm: t[nm].float().clone().requires_grad_(True) for nm in names}
    for nm in names:
        q[nm].grad = p[nm].grad.float().clone()
    if arch == "topk":
        w = q["W_dec"].detach()
        g = q["W_dec"].grad
        g -= ((g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
    opt = torch.optim.Adam([q[nm] for nm in names], lr=float(meta["lr"]),
                           betas=(float(meta["beta1"]), float(meta["beta2"])), eps=float(meta["eps"]))
    opt.step()
    with torch.no_grad():
        if arch == "topk":
            q["W_dec"] /= q["W_dec"].norm(dim=1, keepdim=True)
    for nm in names:
        out[f"after.{nm}"] = q[nm].detach().contiguous()
    st.save(dst, out, {})


if __name__ == "__main__":
    main()
