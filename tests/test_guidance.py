"""Classifier-free guidance: the end points, linearity in the scale, one batched forward."""

from __future__ import annotations

import pytest
import torch

from diffcore.guidance import ClassifierFreeGuidance
from diffcore.denoiser import VPDenoiser
from diffcore.discretization import respaced
from diffcore.samplers import ddim_sample
from diffcore.schedule import NoiseSchedule
from gaussian_refs import torch_single_thread  # noqa: F401  (autouse fixture)

NULL = 10  # label index reserved for "no class"


class LabelModel(torch.nn.Module):
    """eps = x * a[label] + b[label]; label NULL is the unconditional embedding. Records batch sizes."""

    def __init__(self, channels: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(11, generator=g))
        self.b = torch.nn.Parameter(torch.randn(11, channels, generator=g))
        self.batches: list[int] = []

    def forward(self, x_t, t, cond=None):
        self.batches.append(x_t.shape[0])
        label = torch.full((x_t.shape[0],), NULL) if cond is None else cond
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        bias = self.b[label].reshape(label.shape[0], -1, *([1] * (x_t.ndim - 2)))
        return x_t * self.a[label].reshape(shape) + bias + 0.001 * t.float().reshape(shape)


def inputs(shape=(4, 2, 5)):
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g), torch.tensor([0, 3, 7, 9]), torch.tensor([1, 2, 3, 4])


def test_scale_zero_and_one_are_the_unconditional_and_conditional_outputs():
    model = LabelModel()
    x, t, cond = inputs()
    cond_out = model(x, t, cond=cond)
    uncond_out = model(x, t, cond=torch.full((4,), NULL))
    with torch.no_grad():
        assert torch.equal(ClassifierFreeGuidance(model, 1.0, null_cond=NULL)(x, t, cond), cond_out)
        assert torch.equal(ClassifierFreeGuidance(model, 0.0, null_cond=NULL)(x, t, cond), uncond_out)


@pytest.mark.parametrize("shape", [(4, 2), (4, 2, 5), (4, 2, 3, 3)])
def test_guidance_is_linear_in_the_scale_and_uses_one_batched_forward(shape):
    model = LabelModel()
    x, t, cond = inputs(shape)
    cond_out = model(x, t, cond=cond).detach()
    uncond_out = model(x, t, cond=torch.full((4,), NULL)).detach()
    for scale in (-1.0, 0.5, 3.0, 7.5):
        model.batches.clear()
        out = ClassifierFreeGuidance(model, scale, null_cond=NULL)(x, t, cond)
        assert model.batches == [8]  # cond and null concatenated, one call
        torch.testing.assert_close(out, uncond_out + scale * (cond_out - uncond_out))
    # linearity: guided(s1) + guided(s2) = guided(s1 + s2) + uncond
    g = lambda s: ClassifierFreeGuidance(model, s, null_cond=torch.tensor(NULL))(x, t, cond)  # noqa: E731
    torch.testing.assert_close(g(2.0) + g(5.0), g(7.0) + uncond_out)


def test_none_null_cond_calls_the_model_without_condition():
    model = LabelModel()
    x, t, cond = inputs()
    model.batches.clear()
    out = ClassifierFreeGuidance(model, 4.0)(x, t, cond)
    assert model.batches == [4, 4]  # two passes: None cannot be concatenated with labels
    uncond = model(x, t, cond=None)
    torch.testing.assert_close(out, uncond + 4.0 * (model(x, t, cond=cond) - uncond))
    # no condition at all: passes straight through
    torch.testing.assert_close(ClassifierFreeGuidance(model, 4.0, NULL)(x, t), uncond)


def test_learned_variance_guides_only_the_eps_half():
    model = LabelModel(channels=4)
    x, t, cond = inputs((4, 4, 3))
    cond_out, uncond_out = model(x, t, cond=cond), model(x, t, cond=torch.full((4,), NULL))
    out = ClassifierFreeGuidance(model, 3.0, NULL, learned_variance=True)(x, t, cond)
    torch.testing.assert_close(out[:, :2], uncond_out[:, :2] + 3.0 * (cond_out[:, :2] - uncond_out[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond_out[:, 2:])


def test_guided_model_drives_a_sampler_and_moves_with_the_module():
    model = LabelModel()
    guided = ClassifierFreeGuidance(model, 2.0, null_cond=torch.tensor(NULL))
    assert any(p is model.a for p in guided.parameters())
    sched = NoiseSchedule.linear(100)
    sample = ddim_sample(VPDenoiser(guided, sched), (4, 2, 5), respaced(sched, 5), cond=torch.tensor([1, 2, 3, 4]),
                         generator=torch.Generator().manual_seed(0))
    assert sample.shape == (4, 2, 5) and torch.isfinite(sample).all()
    assert guided.to(torch.float64).null_cond.dtype == torch.int64  # integer buffers keep their dtype
