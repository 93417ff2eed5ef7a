"""Meta-LSTM: Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot Learning", ICLR.

Protocol: the learner (the model with its classifier head) is trained on a task's support set by a learned
optimiser, an LSTM whose cell state is the learner's parameters (eq. 1): theta_t = f_t * theta_{t-1} - i_t * grad_t,
with the forget gate f_t and the input gate i_t (the learning rate) computed per parameter coordinate by weights
shared across all coordinates (section 3.2). Each update sees the loss L_t and gradient grad_t of the whole support
set (section 4: training sets of 5 or 25 examples), preprocessed as in Andrychowicz et al. (2016, appendix A, p = 10)
and fed to a first, standard LSTM layer (``hidden_size`` units, 20 in the paper); its hidden state h_t stands for
[grad_t, L_t] in the gates of eq. 2-3, which also see theta_{t-1} and their own previous value (the pre-activation,
as the reference code twitter/meta-learning-lstm feeds it): gate_t = sigmoid(W . [h_t, theta_{t-1}, gate_{t-1}] + b).
The initial cell state theta_0 is meta-learned: the model's own parameters in the dict. After ``inner_steps``
updates, the query loss of the learner is the meta-loss; the meta-learner (``meta/lstm/*``, the first layer;
``meta/cell/*``, the gates: sizes independent of the model's) and theta_0 are trained by backpropagating it
through the updates under the paper's gradient independence assumption (section 3.2): L_t and grad_t are
computed at the detached parameters, so no second derivatives are taken. Meta-test runs ``test_inner_steps``
updates (the paper: as many as in training).

Differences: the gate biases start at fixed values, logit(``inner_lr``) for the input gate and ``forget_bias``
for the forget gate (the reference code draws them from U(-5, -4) and U(4, 5)), so that the first updates are
SGD at about ``inner_lr`` with f close to 1; the other meta-learner weights are drawn from U(-0.01, 0.01) as there.
The paper's learner keeps batch-norm running averages per task, collected on the support set and used for the
query set at meta-test; metarun normalises with batch statistics (``model.norm=batch``, transductive by default;
``eval.transductive=false`` normalises each query with the support set's statistics plus its own).
"""

import math

import torch
from torch.func import grad_and_value

from metarun.algos.base import Algorithm
from metarun.algos.inner_loop import Forward, Params
from metarun.algos.lstm import lstm_cell
from metarun.algos.maml import META
from metarun.algos.objectives import Objective
from metarun.config.algos import MetaLSTMConfig

LSTM, CELL = f"{META}lstm/", f"{META}cell/"
P = 10.0  # the preprocessing's exponent (Andrychowicz et al., 2016, appendix A)


def meta_params(model: torch.nn.Module, settings) -> Params:
    """theta_0 (the model's parameters) and the meta-learner: the first LSTM layer (``meta/lstm/*``, input 4:
    the preprocessed loss and gradient) and the gates' weights over [h, theta, previous gate] and biases
    (``meta/cell/*``, row 0 the forget gate, row 1 the input gate)."""
    params = dict(model.named_parameters())
    like = next(iter(params.values()))
    hidden = settings.hidden_size

    def small(*shape):  # the reference code's U(-0.01, 0.01)
        return torch.nn.Parameter(torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(-0.01, 0.01))

    biases = torch.tensor([settings.forget_bias, math.log(settings.inner_lr / (1 - settings.inner_lr))],
                          dtype=like.dtype, device=like.device)
    params.update({f"{LSTM}weight_ih": small(4 * hidden, 4), f"{LSTM}weight_hh": small(4 * hidden, hidden),
                   f"{LSTM}bias": small(4 * hidden), f"{CELL}weight": small(2, hidden + 2),
                   f"{CELL}bias": torch.nn.Parameter(biases)})
    return params


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Each entry as (log|x| / p, sign x) when |x| >= e^-p, else (-1, e^p x): [..., 2], so that inputs of any
    magnitude reach the LSTM on one scale (Andrychowicz et al., 2016)."""
    large = x.abs() >= math.exp(-P)
    magnitude = torch.where(large, x.abs().clamp_min(math.exp(-P)).log() / P, -1.0)
    return torch.stack([magnitude, torch.where(large, x.sign(), math.exp(P) * x)], -1)


def update(meta: Params, state: tuple, theta: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor):
    """One meta-learner step on the flat learner parameters ``theta`` [P] given the support ``loss`` and ``grad``.

    ``state``: the first layer's (h, c) [P, H] and the gates' previous pre-activations [P, 2] (forget, input).
    Returns the next theta and state.
    """
    h, c, gates = state
    x = torch.cat([preprocess(loss).expand(grad.shape[0], 2), preprocess(grad)], -1)
    h, c = lstm_cell(x, h, c, meta[f"{LSTM}weight_ih"], meta[f"{LSTM}weight_hh"], meta[f"{LSTM}bias"])
    weight = meta[f"{CELL}weight"]  # [2, H + 2]: columns h, theta, the gate's own previous value
    gates = torch.cat([h, theta.unsqueeze(-1)], -1) @ weight[:, :-1].T + gates * weight[:, -1] + meta[f"{CELL}bias"]
    forget, rate = torch.sigmoid(gates).unbind(-1)
    return forget * theta - rate * grad, (h, c, gates)


def trajectory(meta: Params, theta: Params, steps: int, observe) -> list:
    """The learner's parameters after 0, 1, ..., ``steps`` updates; ``observe(params)`` gives the support loss and
    flat gradient [P] there, which the meta-learner takes as inputs."""
    flat = torch.cat([t.reshape(-1) for t in theta.values()])
    hidden = meta[f"{LSTM}weight_hh"].shape[1]
    zeros = lambda *shape: torch.zeros(shape, dtype=flat.dtype, device=flat.device)  # noqa: E731
    state = (zeros(flat.shape[0], hidden), zeros(flat.shape[0], hidden), zeros(flat.shape[0], 2))
    path = [theta]
    for _ in range(steps):
        flat, state = update(meta, state, flat, *observe(path[-1]))
        pieces = flat.split([t.numel() for t in theta.values()])
        path.append({name: piece.reshape(t.shape) for (name, t), piece in zip(theta.items(), pieces)})
    return path


def adapt(forward: Forward, params: Params, x, y, steps: int, loss) -> list:
    """The learner's parameters after 0 .. ``steps`` meta-learner updates on (x, y).

    The loss and gradient are taken at the detached parameters: the gradient independence assumption (section
    3.2), so the meta-gradient flows through the updates' theta and gates but not into the gradients.
    """
    meta = {name: t for name, t in params.items() if name.startswith(META)}
    theta = {name: t for name, t in params.items() if not name.startswith(META)}

    def observe(current: Params):
        grads, value = grad_and_value(lambda p: loss(forward(p, x), y))({n: t.detach() for n, t in current.items()})
        return value, torch.cat([g.reshape(-1) for g in grads.values()])

    return trajectory(meta, theta, steps, observe)


def meta_loss(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings, objective: Objective):
    """Query loss and metric of the learner after ``inner_steps`` meta-learner updates on the support set."""
    adapted = adapt(forward, params, support_x, support_y, settings.inner_steps, objective.loss)[-1]
    predictions = forward(adapted, query_x)
    return objective.loss(predictions, query_y), objective.metric(predictions, query_y)


def evaluate_task(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings,
                  objective: Objective):
    """Query metric after 0, 1, ..., ``test_inner_steps`` meta-learner updates: [steps + 1]."""
    path = adapt(forward, params, support_x, support_y, settings.test_inner_steps, objective.loss)
    return torch.stack([objective.metric(forward(theta, query_x), query_y) for theta in path])


def predict(forward: Forward, params: Params, support_x, support_y, query_x, settings, objective: Objective):
    """Query outputs after ``test_inner_steps`` meta-learner updates on the support set."""
    return forward(adapt(forward, params, support_x, support_y, settings.test_inner_steps, objective.loss)[-1], query_x)


def check(run_cfg) -> None:
    """Refuse an initial learning rate the input gate (a sigmoid) cannot take."""
    if run_cfg.algo.inner_lr >= 1:
        raise ValueError(f"algo.inner_lr={run_cfg.algo.inner_lr} is metalstm's initial input gate, a sigmoid below 1; "
                         "set e.g. algo.inner_lr=0.01")


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, MetaLSTMConfig, meta_params=meta_params, check=check)
