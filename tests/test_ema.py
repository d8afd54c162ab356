"""EMA: the warm-up formula against an independent float64 recursion, buffers, copy_to, state round trip, unwrap."""

import io

import pytest
import torch
from torch import nn

from diffcore.ema import EMA, unwrap_model


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def _set_params(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("warmup", [True, False])
def test_update_matches_float64_recursion(warmup):
    torch.manual_seed(0)
    model = Tiny()
    decay = 0.9
    ema = EMA(model, decay=decay, warmup=warmup)
    ref = {k: v.double().clone() for k, v in model.named_parameters()}
    for n in range(12):
        _set_params(model, seed=n)
        d_expected = min(decay, (1 + n) / (10 + n)) if warmup else decay
        assert ema.decay_at(n) == pytest.approx(d_expected)
        assert ema.update(model) == pytest.approx(d_expected)
        for k, p in model.named_parameters():
            ref[k] = d_expected * ref[k] + (1 - d_expected) * p.detach().double()
    shadow = dict(ema.module.named_parameters())
    for k in ref:
        torch.testing.assert_close(shadow[k].double(), ref[k], rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 12


def test_warmup_decay_values():
    ema = EMA(Tiny(), decay=0.9999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10**6) == pytest.approx(0.9999)  # capped at the target decay


def test_buffers_are_copied_not_averaged_and_shadow_is_float32():
    model = Tiny().to(torch.bfloat16)
    ema = EMA(model, decay=0.5, warmup=False)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    model.running.fill_(4.0)
    model.count.fill_(7)
    ema.update(model)
    assert torch.equal(ema.module.running, torch.full((2,), 4.0))
    assert ema.module.count.item() == 7
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_shadow_is_independent_and_copy_to_copies():
    torch.manual_seed(0)
    model = Tiny()
    ema = EMA(model, decay=0.5, warmup=False)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    _set_params(model, 1)  # changing the live model does not touch the shadow until update()
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, before[k])
    ema.update(model)
    other = Tiny()
    ema.copy_to(other)
    for k, v in ema.module.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_state_dict_round_trip_through_weights_only_load():
    torch.manual_seed(0)
    model = Tiny()
    ema = EMA(model, decay=0.8)
    for n in range(3):
        _set_params(model, n)
        ema.update(model)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    ema2 = EMA(Tiny(), decay=0.8)
    ema2.load_state_dict(state)
    assert ema2.num_updates == 3
    _set_params(model, 99)
    ema.update(model)
    ema2.update(model)  # continues identically: same n, same shadow
    for (k, a), (_, b) in zip(ema.module.state_dict().items(), ema2.module.state_dict().items()):
        assert torch.equal(a, b), k


def test_unwraps_compiled_and_data_parallel_models():
    model = Tiny()
    compiled = torch.compile(model)  # not called: creating the wrapper compiles nothing
    wrapped = nn.DataParallel(compiled)
    assert unwrap_model(wrapped) is model
    ema = EMA(wrapped, decay=0.5, warmup=False)
    assert set(ema.module.state_dict()) == set(model.state_dict())  # no "module." / "_orig_mod." prefixes
    _set_params(model, 3)
    ema.update(wrapped)
    w = dict(ema.module.named_parameters())["lin.weight"]
    assert not torch.equal(w, model.lin.weight)


def test_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(Tiny(), decay=1.0)
