"""The plain PyTorch peers, the reference the others are checked against: MAML as a hand-written loop over tasks,
iMAML as its authors' code (aravindr93/imaml_dev) computes it, with their conjugate gradient, and ProtoNet's
episode as the paper's code (jakesnell/prototypical-networks) runs it. Each returns the ``backward()`` of one
meta-step on the peer network it is given."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.data.tasks import TaskBatch


def maml(setting: dict, model: nn.Module, batch: TaskBatch):
    """A hand-written loop over tasks: ``autograd.grad(create_graph=True)`` inner steps on the fast weights
    through ``functional_call``, ``backward()`` per task."""
    names = [name for name, _ in model.named_parameters()]

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            fast = list(model.parameters())
            for _ in range(setting["inner_steps"]):
                loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx,)), sy)
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [w - setting["inner_lr"] * g for w, g in zip(fast, grads)]
            query_loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (qx,)), qy)
            (query_loss / batch.num_tasks).backward()  # frees the task's graph

    return backward


def conjugate_gradient(matvec, b: torch.Tensor, steps: int) -> torch.Tensor:
    """CG on flat vectors as the iMAML authors' ``cg_solve``: x = 0, ``steps`` iterations (no early stop here)."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r.dot(r)
    for _ in range(steps):
        ap = matvec(p)
        alpha = rr / p.dot(ap)
        x, r = x + alpha * p, r - alpha * ap
        rr_next = r.dot(r)
        p, rr = r + rr_next / rr * p, rr_next
    return x


def imaml(setting: dict, model: nn.Module, batch: TaskBatch):
    """iMAML as its authors' code computes it: per task, SGD steps on the proximal problem with ``autograd.grad``
    on detached fast weights through ``functional_call``, then CG on (I + H/lam) with Hessian-vector products by
    double backward through the support gradient at the solution, the implicit gradient added into ``.grad``."""
    names = [name for name, _ in model.named_parameters()]
    lam, lr = setting["lam"], setting["inner_lr"]

    def loss_at(weights, x, y):
        return F.cross_entropy(functional_call(model, dict(zip(names, weights)), (x,)), y)

    def backward():
        theta = [p.detach() for p in model.parameters()]
        for sx, sy, qx, qy in zip(*batch.tensors()):
            fast = [w.clone().requires_grad_() for w in theta]
            for _ in range(setting["inner_steps"]):
                proximal = sum(((w - t) ** 2).sum() for w, t in zip(fast, theta))
                grads = torch.autograd.grad(loss_at(fast, sx, sy) + 0.5 * lam * proximal, fast)
                fast = [(w - lr * g).detach().requires_grad_() for w, g in zip(fast, grads)]
            query = torch.autograd.grad(loss_at(fast, qx, qy), fast)
            support = torch.autograd.grad(loss_at(fast, sx, sy), fast, create_graph=True)

            def matvec(v):
                pieces = [piece.view_as(w) for piece, w in zip(v.split([w.numel() for w in fast]), fast)]
                hv = torch.autograd.grad(support, fast, grad_outputs=pieces, retain_graph=True)
                return v + torch.cat([h.reshape(-1) for h in hv]) / lam

            flat = conjugate_gradient(matvec, torch.cat([g.reshape(-1) for g in query]), setting["cg_steps"])
            for p, g in zip(model.parameters(), flat.split([w.numel() for w in fast])):
                g = g.view_as(p) / batch.num_tasks
                p.grad = g if p.grad is None else p.grad + g

    return backward


def protonet(setting: dict, model: nn.Module, batch: TaskBatch):
    """ProtoNet's episode as the paper's code runs it: one forward of support and query together, prototypes the
    mean support embedding per class, logits the negative squared Euclidean distances, ``backward()`` per episode."""
    support = setting["ways"] * setting["shots"]

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            embeddings = model(torch.cat([sx, qx]))
            prototypes = embeddings[:support].view(setting["ways"], setting["shots"], -1).mean(1)
            distances = (embeddings[support:].unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(2)
            (F.cross_entropy(-distances, qy) / batch.num_tasks).backward()

    return backward
