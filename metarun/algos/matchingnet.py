"""Matching Networks: Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), "Matching Networks for One Shot
Learning", NeurIPS.

Protocol: the backbone without its classifier head embeds every image (f = g, one network, as the paper's
Omniglot and miniImageNet models); a query's attention over the support set is the softmax of the cosine
similarities of its embedding to each support example's (eq. 2), and its class distribution is the attention
summed over each class's examples, P(y = c | x) = sum_i a(x, x_i) [y_i = c] (eq. 1). Training minimises the
negative log-likelihood of the query labels, with training episodes drawn like the test ones (section 2.2: train
as you test). There is no inner loop and no head (``has_head=False``), so the number of ways may differ between
meta-training and meta-test.

Full context embeddings (``fce=true``, section 2.1.2 and appendix A): each support embedding g'(x_i) is read in
the context of the whole support set by a bidirectional LSTM, g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i); each query
embedding f'(x) by an LSTM that attends over g(S) for ``fce_steps`` steps ("K reads"):
    r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i, S)) g(x_i, S),   (h^_k, c_k) = LSTM([f'(x), r_{k-1}], h_{k-1}, c_{k-1}),
    h_k = h^_k + f'(x),   f(x, S) = h_K,
starting from h_0 = f'(x) (the skip connection with h^_0 = 0) and c_0 = 0. The paper writes r_{k-1} into the
LSTM's hidden state beside h_{k-1}; as the gates are linear in the concatenation, feeding it with the input is the
same function. Both LSTMs have ``model.embedding_dim`` units (the sums need it) and are meta-learned tensors
``meta/fce/g/*`` (``torch.nn.LSTM``'s names and initialisation) and ``meta/fce/f/*`` (``torch.nn.LSTMCell``'s).
The support set's order is the episode's (class by class); the paper does not say which order it uses.
"""

import torch
import torch.nn.functional as F

from metarun.algos import from_logits
from metarun.algos.base import Algorithm
from metarun.algos.classes import support_onehot
from metarun.algos.embedding import embed_episode
from metarun.algos.inner_loop import Params
from metarun.algos.lstm import lstm_cell
from metarun.algos.maml import META
from metarun.config.algos import MatchingNetConfig

FCE = f"{META}fce/"
SUPPORT_LSTM, QUERY_LSTM = f"{FCE}g/", f"{FCE}f/"
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch's LSTM tensors


def meta_params(model: torch.nn.Module, settings) -> Params:
    """The embedding network's parameters and, with ``fce``, the two LSTMs sized by ``model.embedding_dim`` on the
    model's device, initialised as torch's LSTM modules are (U(-1/sqrt(D), 1/sqrt(D)))."""
    params = dict(model.named_parameters())
    if settings.fce:
        like, dim = next(iter(params.values())), model.embedding_dim
        support = torch.nn.LSTM(dim, dim, bidirectional=True).to(like)
        query = torch.nn.LSTMCell(2 * dim, dim).to(like)
        params.update({f"{SUPPORT_LSTM}{name}": p for name, p in support.named_parameters()})
        params.update({f"{QUERY_LSTM}{name}": p for name, p in query.named_parameters()})
    return params


def cell_weights(params: Params, prefix: str, suffix: str = "") -> tuple:
    """(weight_ih, weight_hh, bias) of the LSTM whose torch-named tensors are ``<prefix><name><suffix>``."""
    weight_ih, weight_hh, bias_ih, bias_hh = (params[f"{prefix}{name}{suffix}"] for name in WEIGHTS)
    return weight_ih, weight_hh, bias_ih + bias_hh


def support_context(params: Params, support: torch.Tensor) -> torch.Tensor:
    """g(x_i, S) [S, D]: the support embeddings plus both directions' hidden states of the bidirectional LSTM."""
    def direction(suffix: str, sequence: torch.Tensor) -> torch.Tensor:
        weights = cell_weights(params, SUPPORT_LSTM, f"_l0{suffix}")
        h = c = torch.zeros_like(support[0])
        states = []
        for x in sequence.unbind(0):  # a Python loop over the (static) support size, so it runs under vmap
            h, c = lstm_cell(x, h, c, *weights)
            states.append(h)
        return torch.stack(states)

    return support + direction("", support) + direction("_reverse", support.flip(0)).flip(0)


def query_context(params: Params, query: torch.Tensor, support: torch.Tensor, steps: int) -> torch.Tensor:
    """f(x, S) [Q, D]: ``steps`` reads of the attention LSTM over the contextual support embeddings ``support``."""
    weights = cell_weights(params, QUERY_LSTM)
    h, c = query, torch.zeros_like(query)
    for _ in range(steps):
        read = torch.softmax(h @ support.T, -1) @ support
        h, c = lstm_cell(torch.cat([query, read], -1), h, c, *weights)
        h = h + query
    return h


def log_probabilities(forward, params: Params, support_x, support_y, query_x, settings) -> torch.Tensor:
    """log P(y = c | x) [Q, S] of each query under the attention over the support set.

    Labels are 0..N-1; column c is class c, and columns past the last class present are -inf (log 0; the support
    size S bounds the number of classes and keeps shapes static under vmap). As the rows are log-probabilities
    that sum to one, cross-entropy on them (log-softmax, then NLL) is the paper's NLL.
    """
    support, query = embed_episode(forward, params, support_x, query_x, settings.embedding_pass)
    if settings.fce:
        support = support_context(params, support)
        query = query_context(params, query, support, settings.fce_steps)
    cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).T  # [Q, S]
    members = support_onehot(support_y, torch.bool).T  # [class, i]
    present = members.any(1)
    # log sum_{i in c} a_i = logsumexp over c's examples - logsumexp over all. An absent class sums over every
    # example instead (finite) and is masked to -inf after, so no NaN reaches the gradient through log 0
    within = torch.where(members | ~present.unsqueeze(1), cosine.unsqueeze(1), float("-inf")).logsumexp(-1)
    return torch.where(present, within - cosine.logsumexp(-1, keepdim=True), float("-inf"))


meta_loss, evaluate_task, predict = from_logits.per_task(log_probabilities)

ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, MatchingNetConfig, meta_params=meta_params, has_head=False,
                      objectives=("classification",))
