"""The network as the algorithms call it: ``forward(params, x)`` swaps the parameters in as ``functional_call``
does, puts the module's own back, and leaves tied tensors and names without a slot to ``functional_call``."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metarun.models import network
from metarun.models.conv4 import Conv4
from metarun.models.network import functional_forward, tensor_slots


def _conv4(norm: str = "batch") -> nn.Module:
    torch.manual_seed(0)
    return Conv4((1, 28, 28), 5, width=8, max_pool=False, norm=norm)


def _adapted(model: nn.Module) -> dict:
    """The model's parameters one step of a stand-in inner update away, still attached to the originals."""
    return {name: p - 0.1 * torch.randn_like(p) for name, p in model.named_parameters()}


def test_forward_gives_functional_call_s_outputs_and_gradients_and_puts_the_model_s_own_back(monkeypatch):
    model, x = _conv4(), torch.randn(6, 1, 28, 28)
    own = dict(model.named_parameters())
    params = _adapted(model)
    expected = functional_call(model, params, (x,))
    monkeypatch.setattr(network, "functional_call", None)  # the swap itself runs, not its fallback
    outputs = [functional_forward(model)(params, x), expected]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    gradients = [torch.autograd.grad(out.square().sum(), list(own.values())) for out in outputs]
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(p is own[name] for name, p in model.named_parameters())


def test_a_forward_that_fails_still_puts_the_model_s_own_parameters_back():
    model = _conv4()
    own = dict(model.named_parameters())
    with pytest.raises(RuntimeError):
        functional_forward(model)(_adapted(model), torch.randn(6, 3, 28, 28))  # 3 channels into a 1-channel conv
    assert all(p is own[name] for name, p in model.named_parameters())


def test_the_headless_embedding_runs_the_model_s_current_running_averages():
    """``forward.embed`` runs a copy without the head: batch norm's averages must still be the model's own, as they
    are when training records them after the copy was made."""
    model = _conv4("running").eval()
    forward, x = functional_forward(model), torch.randn(4, 1, 28, 28)
    before = forward.embed(dict(model.named_parameters()), x)
    model[1].running_mean.add_(1.0)  # the first batch norm's averages, moved in place
    after = forward.embed(dict(model.named_parameters()), x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, nn.Sequential(*list(model.children())[:-1])(x))


def test_a_tensor_tied_under_two_names_takes_the_value_given_under_either():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    assert tensor_slots(model) is None
    params, x = {name: p + 1.0 for name, p in model.named_parameters()}, torch.randn(2, 3)
    weight = params["0.weight"]
    by_hand = (x @ weight.T + params["0.bias"]) @ weight.T + params["1.bias"]
    torch.testing.assert_close(functional_forward(model)(params, x), by_hand)


def test_a_name_the_model_lacks_runs_through_functional_call_and_a_buffer_given_as_a_parameter_is_refused():
    model, x = _conv4("running"), torch.randn(4, 1, 28, 28)
    params = {**dict(model.named_parameters()), "extra": torch.zeros(1)}
    torch.testing.assert_close(functional_forward(model)(params, x), model(x))
    with pytest.raises(ValueError, match=r"\['1.running_mean'\] are the model's buffers too"):
        functional_forward(model)({**params, "1.running_mean": torch.zeros(8)}, x)
