"""diffimage's training task through the one engine: resume, label dropout + guidance through the API, and the
bits/dim of a model whose output is known, against a closed form computed independently in float64."""

import math

import numpy as np
import pytest
import torch
from scipy.special import log_ndtr
from torch import nn

from diffcore.config import ConfigError, DiffusionConfig
from diffcore.denoiser import VPDenoiser
from diffcore.discretization import respaced
from diffcore.samplers import ddim_sample
from diffcore.train import Trainer, read_log
from diffimage.api import ImageModel, load, nll_bits_per_dim
from diffimage.cli import main
from diffimage.data import build_datasets, dataset_images
from diffimage.model import UNet
from diffimage.recipe import ImageRecipe, holdout_indices
from diffimage.task import ImageTask


def tiny_recipe(**sections) -> ImageRecipe:
    """An 8×8 U-Net with T = 20 on 48 synthetic images: a training step takes milliseconds."""
    base = {
        "model": {"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
                  "scale_shift_norm": True, "diffusion": {"num_steps": 20}},
        "data": {"num_synthetic": 48, "holdout": 4},
        "train": {"max_steps": 4, "batch_size": 8, "num_workers": 0, "device": "cpu", "log_every": 1,
                  "ckpt_every": 0, "progress": False, "tensorboard": False},
        "sample": {"num_images": 4, "steps": 3},
    }
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return ImageRecipe.from_dict(base)


# --------------------------------------------------------------------------------------------------------------
# Data split and resume


def test_holdout_is_spread_and_disjoint_from_training():
    assert holdout_indices(10, 2) == [2, 7]
    recipe = tiny_recipe()
    train, held = build_datasets(recipe.data, recipe.model)
    assert len(train) == 44 and len(held) == 4
    tr, _ = dataset_images(train)
    he, _ = dataset_images(held)
    # no held-out image appears in the training set
    for img in he:
        assert not (tr == img).flatten(1).all(1).any()


def test_resumed_run_continues_at_the_right_step_with_identical_weights(tmp_path):
    """4 steps in one go == 2 steps + resume + 2 steps, with flips and label dropout drawing from the RNG."""
    recipe_file = tmp_path / "r.yaml"
    recipe = tiny_recipe(model={"num_classes": 4, "class_dropout": 0.3}, data={"random_flip": True})
    import yaml

    recipe_file.write_text(yaml.safe_dump(recipe.to_dict()))
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--recipe", str(recipe_file), "--run-dir", str(straight)]) == 0
    assert main(["train", "--recipe", str(recipe_file), "--run-dir", str(split), "train.max_steps=2"]) == 0
    assert main(["train", "--run-dir", str(split), "train.max_steps=4"]) == 0  # recipe read back from config.yaml

    resumes = read_log(split, "resume")
    assert [e["step"] for e in resumes] == [2]
    assert [r["step"] for r in read_log(split)] == [1, 2, 3, 4]
    a = torch.load(straight / "checkpoints" / "step_00000004.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k


def test_init_from_warm_starts_from_an_export_and_refuses_another_network(tmp_path):
    """``init_from``: a new run starts from an export's weights (EMA + model), at step 0; a different network is a
    ConfigError naming the source; a resumed run keeps its checkpoint's weights."""
    from diffcore.checkpoint import write_export

    recipe = tiny_recipe()
    source = UNet(recipe.model)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.02)
    write_export(tmp_path / "exp", source.state_dict(), recipe.to_dict(), dtype=torch.float16)
    warm = ImageRecipe.from_dict({**recipe.to_dict(), "init_from": str(tmp_path / "exp")})
    model = ImageTask(warm).build_model()
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v.half().float(), rtol=0, atol=0)

    run = tmp_path / "run"
    cfg = {**warm.to_dict(), "train": {**warm.to_dict()["train"], "max_steps": 2}}
    r = ImageRecipe.from_dict(cfg)
    Trainer(ImageTask(r), r.train, run).fit()
    assert [r["step"] for r in read_log(run)] == [1, 2]

    other = tiny_recipe(model={"channel_mult": [1, 2]})
    with pytest.raises(ConfigError, match="init_from .*differs from this recipe"):
        ImageTask(ImageRecipe.from_dict({**other.to_dict(), "init_from": str(tmp_path / "exp")})).build_model()


def test_init_from_a_conditional_export_starts_an_unconditional_run_at_its_null_label(tmp_path):
    """An unconditional recipe warm-started from the class-conditional version of its network computes, at step 0,
    what the conditional network computes with the null label (the label embedding's null row folded into the time
    embedding's bias); a class label other than null, or any other difference, is refused."""
    from diffcore.checkpoint import write_export

    cond_recipe = tiny_recipe(model={"num_classes": 3, "class_dropout": 0.2})
    source = UNet(cond_recipe.model)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.05)
    write_export(tmp_path / "cond", source.state_dict(), cond_recipe.to_dict(), dtype=torch.float32)
    uncond = tiny_recipe()
    assert uncond.model.num_classes is None
    model = ImageTask(ImageRecipe.from_dict({**uncond.to_dict(), "init_from": str(tmp_path / "cond")})).build_model()
    assert not any(k.startswith("label_embed") for k in model.state_dict())
    source.eval()
    model.eval()
    c = uncond.model
    x = torch.randn(3, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3.0, 250.0, 900.0])
    with torch.no_grad():
        want = source(x, t, None)
        got = model(x, t)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
        # it is the null label's branch, not a class's
        assert (model(x, t) - source(x, t, torch.tensor([0, 0, 0]))).abs().max() > 1e-3

    other = tiny_recipe(model={"channel_mult": [1, 2]})
    with pytest.raises(ConfigError, match="init_from .*differs from this recipe"):
        ImageTask(ImageRecipe.from_dict({**other.to_dict(), "init_from": str(tmp_path / "cond")})).build_model()


def test_init_from_an_unconditional_export_starts_a_conditional_run_that_computes_the_same(tmp_path):
    """A class-conditional recipe (here with a class prior, as a cluster-conditioned model has) warm-started from
    the unconditional version of its network computes at step 0, for every label and the null label, what the
    unconditional network computes (diffimage.model.conditional_from_unconditional: the label table starts at
    zero); the label table then learns. Another network is refused."""
    from diffcore.checkpoint import write_export

    uncond = tiny_recipe()
    source = UNet(uncond.model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.05, generator=g)
    write_export(tmp_path / "uncond", source.state_dict(), uncond.to_dict(), dtype=torch.float32)
    cond = tiny_recipe(model={"num_classes": 4, "class_dropout": 0.1, "class_prior": [0.1, 0.2, 0.3, 0.4]})
    model = ImageTask(ImageRecipe.from_dict({**cond.to_dict(), "init_from": str(tmp_path / "uncond")})).build_model()
    source.eval()
    model.eval()
    c = cond.model
    x = torch.randn(5, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([3.0, 40.0, 250.0, 600.0, 900.0])
    with torch.no_grad():
        want = source(x, t)
        assert want.abs().max() > 0.05
        for labels in (torch.tensor([0, 1, 2, 3, -1]), None):
            torch.testing.assert_close(model(x, t, labels), want, rtol=0, atol=0)
    model.train()
    model(x, t, torch.tensor([0, 1, 2, 3, 3])).square().mean().backward()
    assert model.label_embed.weight.grad.abs().max() > 0

    other = tiny_recipe(model={"channel_mult": [1, 2], "num_classes": 4})
    with pytest.raises(ConfigError, match="init_from .*differs from this recipe"):
        ImageTask(ImageRecipe.from_dict({**other.to_dict(), "init_from": str(tmp_path / "uncond")})).build_model()


@pytest.mark.parametrize("blocks", [2, 3])
def test_init_from_a_shallower_export_starts_a_deeper_run_that_computes_the_same(tmp_path, blocks):
    """A recipe with more residual blocks per level, warm-started from the shallower network, computes at step 0
    exactly what that network computes (diffimage.model.deepened: the new blocks are the identity), keeps every
    stored weight, and the new blocks learn: their last convolutions get gradients. A shallower target is
    refused. Two levels with attention at the lower one, so the down- and upsamplers and attention move too."""
    from diffcore.checkpoint import write_export

    shallow = tiny_recipe(model={"channel_mult": [1, 2], "attention_resolutions": [4], "num_res_blocks": 1})
    source = UNet(shallow.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in source.parameters():  # no zero weights, so a block left out or misplaced would show
            p.normal_(0, 0.1, generator=g)
    write_export(tmp_path / "shallow", source.state_dict(), shallow.to_dict(), dtype=torch.float32)
    deep = tiny_recipe(model={"channel_mult": [1, 2], "attention_resolutions": [4], "num_res_blocks": blocks})
    model = ImageTask(ImageRecipe.from_dict({**deep.to_dict(), "init_from": str(tmp_path / "shallow")})).build_model()
    assert len(model.down) > len(source.down) and len(model.up) > len(source.up)

    stored = sorted(v.flatten()[0].item() for v in source.state_dict().values())
    kept = [v.flatten()[0].item() for v in model.state_dict().values()]
    assert all(value in kept for value in stored)  # every stored tensor landed somewhere

    source.eval()
    model.eval()
    c = deep.model
    x = torch.randn(3, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 250.0, 900.0])
    with torch.no_grad():
        want = source(x, t)
        assert want.abs().max() > 0.05
        torch.testing.assert_close(model(x, t), want, rtol=0, atol=1e-6 * float(want.abs().max()))

    model.train()
    model(x, t).square().mean().backward()
    new_blocks = [i for i in range(len(model.up)) if 0 < i % (blocks + 1) <= blocks - 1]
    assert new_blocks
    for i in new_blocks:
        assert model.up[i][0].conv2.weight.grad.abs().max() > 0

    write_export(tmp_path / "deep", model.state_dict(), deep.to_dict(), dtype=torch.float32)
    with pytest.raises(ConfigError, match="init_from .*differs from this recipe"):
        ImageTask(ImageRecipe.from_dict({**shallow.to_dict(), "init_from": str(tmp_path / "deep")})).build_model()
    wider = tiny_recipe(model={"channel_mult": [1, 3], "attention_resolutions": [4], "num_res_blocks": blocks})
    with pytest.raises(ConfigError, match="init_from .*differs from this recipe"):
        ImageTask(ImageRecipe.from_dict({**wider.to_dict(), "init_from": str(tmp_path / "shallow")})).build_model()


# --------------------------------------------------------------------------------------------------------------
# Class conditioning: label dropout in training, guidance through the API


def test_label_dropout_in_training_and_guidance_through_the_api(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    original = UNet._labels

    def spy(self, cond, batch, device):
        labels = original(self, cond, batch, device)
        if self.training:
            seen.append(labels.clone())
        return labels

    monkeypatch.setattr(UNet, "_labels", spy)
    recipe = tiny_recipe(model={"num_classes": 4, "class_dropout": 0.5},
                         train={"batch_size": 16, "max_steps": 3, "lr": 0.01, "ema_decay": 0.0})
    Trainer(ImageTask(recipe), recipe.train, tmp_path / "run").fit()
    labels = torch.cat(seen)
    assert labels.numel() == 48
    null = int((labels == 4).sum())
    assert 10 <= null <= 38  # Binomial(48, 1/2): the null label replaces real ones at random
    assert set(labels.tolist()) - {4}  # and real labels remain

    monkeypatch.setattr(UNet, "_labels", original)
    m = load(tmp_path / "run", "cpu")
    assert m.num_classes == 4
    # the network itself drops nothing in evaluation mode
    assert torch.equal(m.model._labels(torch.arange(4), 4, torch.device("cpu")), torch.arange(4))

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    classes = [0, 1, 2, 3]
    s = 3.0
    guided = m.sample(4, sampler="ddim", steps=5, guidance_scale=s, classes=classes, generator=gen(0))
    # independent guidance: two separate forward passes mixed by hand, through the same DDIM sampler
    net = m.model
    null = torch.full((4,), 4)

    def by_hand(x, t, cond=None):
        return (1 - s) * net(x, t, null) + s * net(x, t, cond)

    ref = ddim_sample(VPDenoiser(by_hand, m.schedule), (4, 3, 8, 8), respaced(m.schedule, 5),
                      cond=torch.tensor(classes), generator=gen(0), clip_denoised=True).clamp(-1, 1)
    assert torch.allclose(guided, ref, atol=1e-4)
    # scale 1 is the plain conditional model; scale 0 the unconditional one (the null label, class -1)
    plain = m.sample(4, sampler="ddim", steps=5, guidance_scale=1.0, classes=classes, generator=gen(0))
    cond_only = ddim_sample(VPDenoiser(net, m.schedule), (4, 3, 8, 8), respaced(m.schedule, 5),
                            cond=torch.tensor(classes), generator=gen(0), clip_denoised=True).clamp(-1, 1)
    assert torch.equal(plain, cond_only)
    zero = m.sample(4, sampler="ddim", steps=5, guidance_scale=0.0, classes=classes, generator=gen(0))
    uncond = m.sample(4, sampler="ddim", steps=5, guidance_scale=1.0, classes=[-1] * 4, generator=gen(0))
    assert torch.equal(zero, uncond)
    assert (guided - plain).abs().max() > 1e-2  # guidance changes the images far beyond the tolerance above
    # a class the model does not have is refused
    with pytest.raises(ValueError, match="classes must lie in"):
        m.sample(2, classes=4)


# --------------------------------------------------------------------------------------------------------------
# Bits/dim of a model with a known output, against a closed form


class Oracle(nn.Module):
    """ε_θ(x_t, t) = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t) for the known data x_0: the exact noise, so x̂_0 = x_0."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: np.ndarray) -> None:
        super().__init__()
        self.x0 = x0
        self.abar = torch.tensor(np.array(alphas_cumprod, dtype=np.float64))
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_t, t, cond=None):
        abar = self.abar[t.long()].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()


def closed_form_bits_per_dim(u8: np.ndarray, betas: np.ndarray, variance: str) -> np.ndarray:
    """The bound of Ho et al. (eq. 5) for a model with x̂_0 = x_0, in float64 with numpy/scipy alone.

    Every reverse mean equals the true posterior mean, so L_{t−1} = D · ½(log σ_t² − log β̃_t + β̃_t/σ_t² − 1),
    L_0 = −Σ log P(bin of x | N(x, σ_1²)) with P = Φ(h/σ) − Φ(−h/σ) inside and Φ(h/σ) at ±1 (h = 1/255), and
    L_T = Σ KL(N(√ᾱ_T x, 1 − ᾱ_T) ‖ N(0, 1)).
    """
    x = u8.astype(np.float64) / 127.5 - 1.0
    n, d = x.shape[0], x[0].size
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    beta_tilde = betas * (1.0 - abar_prev) / (1.0 - abar)
    sigma2 = betas if variance == "beta" else np.append(beta_tilde[1], beta_tilde[1:])  # clipped β̃ at t = 1
    kl = 0.5 * (np.log(sigma2[1:]) - np.log(beta_tilde[1:]) + beta_tilde[1:] / sigma2[1:] - 1.0)
    l_mid = d * kl.sum()
    h_over_s = (1.0 / 255.0) / math.sqrt(sigma2[0])
    inside = np.log(np.exp(log_ndtr(h_over_s)) - np.exp(log_ndtr(-h_over_s)))
    edge = log_ndtr(h_over_s)
    is_edge = (u8 == 0) | (u8 == 255)
    l0 = -np.where(is_edge, edge, inside).reshape(n, -1).sum(1)
    a_t = abar[-1]
    lt = 0.5 * (-np.log(1 - a_t) + (1 - a_t) + a_t * x**2 - 1.0).reshape(n, -1).sum(1)
    return (lt + l_mid + l0) / (d * math.log(2.0))


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_bits_per_dim_of_a_known_model_equals_its_closed_form(variance):
    diffusion = DiffusionConfig(num_steps=12, beta_start=1e-4, beta_end=0.2)
    schedule = diffusion.build()
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, 2, 5, 4)).astype(np.uint8)
    u8[0, 0, 0, :2] = [0, 255]  # both edge bins
    x0 = torch.from_numpy(u8).double() / 127.5 - 1.0
    oracle = Oracle(x0, schedule.alphas_cumprod)
    got = nll_bits_per_dim(VPDenoiser(oracle, schedule), x0, variance=variance,
                           generator=torch.Generator().manual_seed(0))
    expected = closed_form_bits_per_dim(u8, np.asarray(schedule.betas, dtype=np.float64), variance)
    assert got.dtype == torch.float64 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_validation_hook_reports_the_api_bits_per_dim(tmp_path):
    """val/bits_per_dim of the engine's validation equals ImageModel.bits_per_dim on the same held-out images."""
    recipe = tiny_recipe(train={"max_steps": 2, "val_every": 2}, sample={"nll_images": 2})
    task = ImageTask(recipe)
    Trainer(task, recipe.train, tmp_path / "run").fit()
    logged = [r for r in read_log(tmp_path / "run") if "val/bits_per_dim" in r]
    assert len(logged) == 1 and logged[0]["step"] == 2
    m = load(tmp_path / "run", "cpu")
    images, _ = dataset_images(task.heldout, limit=2)
    bpd = m.bits_per_dim(images, generator=torch.Generator().manual_seed(4321))
    assert logged[0]["val/bits_per_dim"] == pytest.approx(float(bpd.mean()), rel=1e-5)
    assert 0 < logged[0]["val/bits_per_dim"] < 30
    assert isinstance(m, ImageModel) and m.image_shape == (3, 8, 8)


def test_learned_variance_trains_with_the_hybrid_loss_and_samples(tmp_path):
    """A learned-variance network: the task's loss is L_simple + λ T L_vlb with the discretised decoder (Nichol &
    Dhariwal 2021), its bits/dim uses the learned variance, and every sampler takes its ε half."""
    from diffcore.losses import hybrid_loss_terms

    recipe = tiny_recipe(model={"learned_variance": True, "num_classes": 4, "class_dropout": 0.2},
                         train={"max_steps": 2})
    task = ImageTask(recipe)
    model = task.build_model()
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    got = task.loss(model.eval(), {"image": x0, "label": y})
    torch.manual_seed(3)
    t = torch.randint(0, 20, (4,))
    terms = hybrid_loss_terms(VPDenoiser(model, task.schedule, learned_variance=True), x0, y, t=t,
                              vlb_weight=recipe.model.diffusion.vlb_weight, decoder="discretized")
    assert torch.allclose(got, terms["simple"] + 1e-3 * 20 * terms["vlb"], rtol=1e-5, atol=1e-6)

    Trainer(task, recipe.train, tmp_path / "run").fit()
    m = load(tmp_path / "run", "cpu")
    for sampler in ("ddim", "ddpm", "heun"):
        x = m.sample(3, sampler=sampler, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
        assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all()
    images = ((x0[:2] + 1) * 127.5).round().to(torch.uint8)
    g = torch.Generator().manual_seed(0)
    den = VPDenoiser(m.model, m.schedule, learned_variance=True)
    learned = nll_bits_per_dim(den, images, y[:2], generator=g)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(m.bits_per_dim(images, y[:2], generator=g), learned)
    g = torch.Generator().manual_seed(0)
    fixed = nll_bits_per_dim(den, images, y[:2], variance="beta", generator=g)  # σ_t² = β_t, not its own
    assert not torch.allclose(learned, fixed)


# --------------------------------------------------------------------------------------------------------------
# EDM preconditioning from a recipe


def test_edm_recipe_trains_and_samples_with_heun(tmp_path, capsys):
    """``diffusion.edm`` makes the task train with EDM's loss through the one engine; the run loads, samples with
    Heun (2N - 1 network calls at float c_noise steps) and refuses the VP-only operations with clear errors."""
    from diffcore.denoiser import EDMDenoiser
    from diffcore.losses import edm_loss
    from diffimage.sample import denoiser_of

    edm = {"sigma_data": 0.5, "time_scale": 250.0}
    recipe = tiny_recipe(model={"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [8],
                                "scale_shift_norm": True, "diffusion": {"edm": edm}},
                         sample={"sampler": "heun", "steps": 3, "num_images": 4})
    task = ImageTask(recipe)
    assert task.schedule is None
    model = task.build_model()
    den = denoiser_of(model)
    assert isinstance(den, EDMDenoiser) and den.params.time_scale == 250.0
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    torch.manual_seed(5)
    got = task.loss(model, {"image": x0})
    torch.manual_seed(5)  # the same sigma and noise draws from the global generator
    want = edm_loss(den, x0)
    assert torch.allclose(got, want) and got.shape == (4,)

    Trainer(task, recipe.train, tmp_path / "run").fit()
    m = load(tmp_path / "run", "cpu")
    seen = []
    m.model.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    x = m.sample(2, sampler="heun", steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
    assert len(seen) == 5 and all(t.dtype == torch.float32 for t in seen)
    # the first call is at sigma_max = 80: c_noise * time_scale = 250 ln(80) / 4
    assert seen[0][0].item() == pytest.approx(250 * math.log(80.0) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="heun"):
        m.sample(2, sampler="ddim", steps=3)
    with pytest.raises(ValueError, match="VP"):
        m.bits_per_dim(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert "EDM" in repr(m)
    # the command line refuses the VP-only options in one line, before any work
    assert main(["sample", "--model", str(tmp_path / "run"), "--n", "2", "--sampler", "ddim",
                 "--out", str(tmp_path / "o")]) == 2
    assert "use --sampler heun" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["sample", "--model", str(tmp_path / "run"), "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "o")]) == 0  # the recipe's default sampler: heun
    assert (tmp_path / "o" / "grid.png").is_file()
    with pytest.raises(ConfigError, match="heun"):
        tiny_recipe(model={"diffusion": {"edm": edm}}, sample={"sampler": "ddim"})
    with pytest.raises(ConfigError, match="edm"):
        tiny_recipe(model={"diffusion": {"edm": edm}, "learned_variance": True}, sample={"sampler": "heun"})


def test_a_run_saved_with_older_key_names_resumes(tmp_path):
    """A checkpoint that stores the U-Net config of earlier versions (learn_sigma, the run-time keys channels_last
    and use_checkpoint in the model section, diffusion.hybrid_lambda) resumes: the names are mapped first."""
    from diffcore.checkpoint import find_latest

    recipe = tiny_recipe(model={"learned_variance": True}, train={"max_steps": 2})
    run = tmp_path / "run"
    Trainer(ImageTask(recipe), recipe.train, run).fit()
    path = find_latest(run)
    state = torch.load(path, weights_only=True)
    model = state["config"]["model"]
    model["learn_sigma"] = model.pop("learned_variance")
    model["channels_last"], model["use_checkpoint"] = True, False
    model["diffusion"]["hybrid_lambda"] = model["diffusion"].pop("vlb_weight")
    torch.save(state, path)
    r4 = recipe.replace(train={"max_steps": 4})
    summary = Trainer(ImageTask(r4), r4.train, run).fit()
    assert summary["step"] == 4 and summary["resumed_from"].endswith("step_00000002.pt")
