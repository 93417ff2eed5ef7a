"""A functional LSTM cell for the algorithms built on LSTMs (Matching Networks' full context embeddings, Meta-LSTM):
pure over its weight tensors, so it runs in a loop, in threads and under vmap like the rest of an algorithm."""

import torch


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
              bias: torch.Tensor) -> tuple:
    """One step of ``torch.nn.LSTMCell`` (``bias``: its bias_ih + bias_hh, or one bias for both): (h, c)."""
    i, f, g, o = (x @ weight_ih.T + h @ weight_hh.T + bias).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
