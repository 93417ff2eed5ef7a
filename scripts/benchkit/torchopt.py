"""The torchopt peer: MAML's meta-step as its MAML example writes it (``MetaSGD`` with the module's state
extracted and recovered per task) and iMAML's as its ``examples/iMAML/imaml_omniglot.py`` (an
``ImplicitMetaGradientModule`` per task, implicit gradients by its conjugate-gradient solver)."""

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.tasks import TaskBatch

from .impl import require


def maml(setting: dict, model: nn.Module, batch: TaskBatch):
    """torchopt's MAML example: ``MetaSGD`` steps on the module, its state restored with ``recover_state_dict``
    after each task, one ``backward()`` of the mean query loss (every task's graph alive until then)."""
    torchopt = require("torchopt")
    inner = torchopt.MetaSGD(model, lr=setting["inner_lr"])

    def backward():
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        inner_state = torchopt.extract_state_dict(inner, by="reference")
        losses = []
        for sx, sy, qx, qy in zip(*batch.tensors()):
            for _ in range(setting["inner_steps"]):
                inner.step(F.cross_entropy(model(sx), sy))
            losses.append(F.cross_entropy(model(qx), qy))
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner, inner_state)
        torch.stack(losses).mean().backward()

    return backward, []


def imaml(setting: dict, model: nn.Module, batch: TaskBatch):
    """torchopt's iMAML example: an ``ImplicitMetaGradientModule`` per task whose ``solve`` takes ``torchopt.SGD``
    steps on the proximal objective, reset to the meta-parameters before each task, implicit gradients by its
    linear solver (``solve_cg``, ``cg_steps`` iterations), one ``backward()`` of the mean query loss."""
    torchopt = require("torchopt")
    lam, steps = setting["lam"], setting["inner_steps"]
    solver = torchopt.linear_solve.solve_cg(maxiter=setting["cg_steps"], rtol=0.0, atol=0.0)

    class InnerNet(torchopt.diff.implicit.ImplicitMetaGradientModule, linear_solve=solver):
        def __init__(self, meta_net):
            super().__init__()
            self.meta_net = meta_net
            self.net = torchopt.module_clone(meta_net, by="deepcopy", detach_buffers=True)

        def reset_parameters(self):
            with torch.no_grad():
                for p1, p2 in zip(self.parameters(), self.meta_parameters()):
                    p1.data.copy_(p2.data)
                    p1.detach_().requires_grad_()

        def forward(self, x):
            return self.net(x)

        def objective(self, x, y):
            pairs = zip(self.parameters(), self.meta_parameters())
            proximal = sum(torch.sum(torch.square(p1 - p2)) for p1, p2 in pairs)
            return F.cross_entropy(self(x), y) + 0.5 * lam * proximal

        def solve(self, x, y):
            params = tuple(self.parameters())
            inner = torchopt.SGD(params, lr=setting["inner_lr"])
            with torch.enable_grad():
                for _ in range(steps):
                    loss = self.objective(x, y)
                    inner.zero_grad()
                    loss.backward(inputs=params)
                    inner.step()
            return self

    inner_nets = [InnerNet(model) for _ in range(batch.num_tasks)]

    def backward():
        losses = []
        for inner, (sx, sy, qx, qy) in zip(inner_nets, zip(*batch.tensors())):
            inner.reset_parameters()
            losses.append(F.cross_entropy(inner.solve(sx, sy)(qx), qy))
        torch.stack(losses).mean().backward()

    return backward, []
