"""The plain PyTorch loops of the algorithms with an inner loop, the reference the others are checked against: MAML
as a hand-written loop over tasks (and FOMAML, ANIL and Meta-SGD as its variants), MAML++ with its learned rates,
per-step batch norm and multi-step loss, Reptile with ``torch.optim.Adam`` per task, and iMAML as its authors' code
(aravindr93/imaml_dev) computes it, with their conjugate gradient. Each returns the ``backward()`` of one meta-step
on the peer network it is given and the tensors it meta-learns beside that network's weights, in the order of
metarun's ``meta/`` tensors."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algos import reptile as metarun_reptile
from metarun.data.tasks import TaskBatch


def maml(setting: dict, model: nn.Module, batch: TaskBatch, first_order: bool = False, head_only: bool = False,
         learned_rates: bool = False):
    """A hand-written loop over tasks: ``autograd.grad(create_graph=True)`` inner steps on the fast weights
    through ``functional_call``, ``backward()`` per task. FOMAML (``first_order``): the inner gradients without a
    graph, constants; ANIL (``head_only``): the inner loop updates the last layer (the head) alone; Meta-SGD
    (``learned_rates``): a learned rate per weight entry, starting at ``inner_lr``, meta-learned with the weights."""
    weights = dict(model.named_parameters())
    adapted = list(weights)[-2:] if head_only else list(weights)  # the head: its Linear's weight and bias
    rates = {name: nn.Parameter(torch.full_like(weights[name], setting["inner_lr"])) for name in adapted} \
        if learned_rates else {}

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            fast = {name: weights[name] for name in adapted}
            for _ in range(setting["inner_steps"]):
                loss = F.cross_entropy(functional_call(model, {**weights, **fast}, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
                fast = {name: w - rates.get(name, setting["inner_lr"]) * g for (name, w), g in zip(fast.items(), grads)}
            query_loss = F.cross_entropy(functional_call(model, {**weights, **fast}, (qx,)), qy)
            (query_loss / batch.num_tasks).backward()  # frees the task's graph

    return backward, list(rates.values())


def mamlpp(setting: dict, model: nn.Module, batch: TaskBatch):
    """MAML++ as a loop over tasks in the second half of its training (AntreasAntoniou/HowToTrainYourMAMLPytorch):
    second-order inner steps through ``functional_call`` with a learned rate per weight tensor and step (LSLR),
    batch-norm weights per step (meta-learned, not adapted), the query loss after every step weighted as its
    annealed multi-step loss (0.03 / steps for each step but the last), ``backward()`` per task."""
    steps = setting["inner_steps"]
    norms = {name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    per_step = {name: nn.Parameter(p.detach().expand(steps + 1, -1).clone()) for name, p in model.named_parameters()
                if name.rsplit(".", 1)[0] in norms}
    weights = {name: p for name, p in model.named_parameters() if name not in per_step}
    rates = {name: nn.Parameter(torch.full((steps,), setting["inner_lr"], device=p.device))
             for name, p in weights.items()}
    importance = [0.03 / steps] * (steps - 1) + [1 - 0.03 / steps * (steps - 1)]

    def forward(fast: dict, step: int, x):
        return functional_call(model, {**fast, **{name: t[step] for name, t in per_step.items()}}, (x,))

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            fast, loss = weights, 0.0
            for step in range(steps):
                grads = torch.autograd.grad(F.cross_entropy(forward(fast, step, sx), sy), list(fast.values()),
                                            create_graph=True)
                fast = {name: w - rates[name][step] * g for (name, w), g in zip(fast.items(), grads)}
                loss = loss + importance[step] * F.cross_entropy(forward(fast, step + 1, qx), qy)
            (loss / batch.num_tasks).backward()

    return backward, [*per_step.values(), *rates.values()]


def reptile(setting: dict, model: nn.Module, batch: TaskBatch):
    """Reptile as a loop over tasks: ``torch.optim.Adam`` (beta1 = 0, as the paper) steps on a copy of the weights
    through ``functional_call``, on metarun's batches of ``inner_batch`` support examples (its ``_batches``, so that
    both compute the same update), then theta - W added into the gradients (the meta-optimiser's step)."""
    names = [name for name, _ in model.named_parameters()]

    def backward():
        for sx, sy, _, _ in zip(*batch.tensors()):
            fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
            inner = torch.optim.Adam(fast, lr=setting["inner_lr"], betas=(0.0, 0.999))
            for index in metarun_reptile._batches(len(sx), setting["inner_batch"], setting["inner_steps"]):
                inner.zero_grad()
                F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx[index],)), sy[index]).backward()
                inner.step()
            for p, w in zip(model.parameters(), fast):
                g = (p.detach() - w.detach()) / batch.num_tasks
                p.grad = g if p.grad is None else p.grad + g

    return backward, []


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

    return backward, []
