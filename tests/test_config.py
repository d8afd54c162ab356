from dataclasses import dataclass, field

import pytest

from diffcore.config import ConfigBase, ConfigError, DiffusionConfig, apply_overrides, load_recipe


@dataclass
class Inner(ConfigBase):
    width: int = 4
    mode: str = "a"


@dataclass
class Recipe(ConfigBase):
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    clip: float | None = 1.0
    dims: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    PRESETS = {"small": {"steps": 3, "inner": {"width": 2}}}


def test_round_trip_and_presets():
    r = Recipe.from_dict({"preset": "small", "lr": 0.5, "diffusion": {"num_steps": 50}})
    assert (r.steps, r.inner.width, r.lr, r.diffusion.num_steps) == (3, 2, 0.5, 50)
    assert Recipe.from_dict(r.to_dict()) == r
    assert r.replace(steps=7).steps == 7 and r.replace(steps=7).inner.width == 2


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.widht'.*did you mean 'width'"):
        Recipe.from_dict({"inner": {"widht": 3}})
    with pytest.raises(ConfigError, match="unknown preset 'big'"):
        Recipe.from_dict({"preset": "big"})


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"steps": "ten"}, "steps: expected an integer"),
        ({"flag": 1}, "flag: expected true or false"),
        ({"dims": 3}, "dims: expected a list"),
        ({"diffusion": {"schedule": "quadratic"}}, "diffusion.schedule"),
        ({"diffusion": {"beta_start": 0.5, "beta_end": 0.1}}, "beta_start <= beta_end"),
    ],
)
def test_wrong_types_and_inconsistent_values(data, msg):
    with pytest.raises(ConfigError, match=msg):
        Recipe.from_dict(data)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 2.0e-4\ninner:\n  width: 8\n")
    r = load_recipe(Recipe, path, ["inner.mode=b", "--steps=5", "lr=1e-4", "clip=null", "dims=[3,4]"])
    assert (r.inner.width, r.inner.mode, r.steps, r.lr, r.clip, r.dims) == (8, "b", 5, 1e-4, None, (3, 4))
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.mdoe'.*'mode'"):
        apply_overrides(Recipe, {}, ["inner.mdoe=1"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_recipe(Recipe, path, ["steps=abc"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(Recipe, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(Recipe, tmp_path / "bad.yaml")


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
def test_diffusion_config_builds_its_schedule(kind):
    import numpy as np

    from diffcore.schedule import NoiseSchedule

    cfg = DiffusionConfig(schedule=kind, num_steps=20)
    s = cfg.build()
    assert s.num_steps == 20
    expected = {
        "linear": lambda: NoiseSchedule.linear(20, cfg.beta_start, cfg.beta_end),
        "cosine": lambda: NoiseSchedule.cosine(20, s=cfg.cosine_s, max_beta=cfg.max_beta),
        "sigmoid": lambda: NoiseSchedule.sigmoid(20, start=-3.0, end=3.0, tau=1.0, max_beta=cfg.max_beta),
    }[kind]()
    np.testing.assert_allclose(np.asarray(s.betas), np.asarray(expected.betas))


def test_explicit_betas():
    import numpy as np

    betas = (0.1, 0.2, 0.3)
    s = DiffusionConfig(schedule="betas", num_steps=3, betas=betas).build()
    np.testing.assert_allclose(np.asarray(s.betas), betas)
    with pytest.raises(ConfigError, match="needs num_steps=4 betas, got 3"):
        DiffusionConfig(schedule="betas", num_steps=4, betas=betas)
    with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
        DiffusionConfig(schedule="betas", num_steps=2, betas=(0.5, 1.5))


def test_a_package_declares_the_bounds_of_its_own_fields():
    """A size bound is field metadata (``bounded``), enforced by the core before the class is built; the core's
    own table names none of diffwave's model fields (the model config declares them)."""
    import dataclasses

    from diffcore import config as core
    from diffcore.config import bounded
    from diffwave.config import DiffWaveConfig

    @dataclass
    class Toy(ConfigBase):
        widgets: int = bounded(3, limit=10)
        plain: int = 5

    assert Toy().widgets == 3 and Toy.from_dict({"widgets": 10}).widgets == 10
    with pytest.raises(ConfigError, match=r"widgets = 11 is larger than the limit 10"):
        Toy.from_dict({"widgets": 11})
    assert Toy.from_dict({"plain": 10**12}).plain == 10**12  # no bound declared: none enforced
    declared = {f.name: f.metadata[core.SIZE_LIMIT] for f in dataclasses.fields(DiffWaveConfig)
                if core.SIZE_LIMIT in f.metadata}
    assert {"residual_layers", "residual_channels", "dilation_cycle", "embedding_dim", "embedding_hidden",
            "audio_length"} <= set(declared)
    with pytest.raises(ConfigError, match=r"residual_layers = 513 is larger than the limit 512"):
        DiffWaveConfig.from_dict({"residual_layers": 513})


def test_the_core_bounds_no_field_by_its_name():
    """Fields named like audio or image sizes get no bound from the core: only what a class declares holds."""

    @dataclass
    class Named(ConfigBase):
        n_mels: int = 80
        image_size: int = 32
        hop_length: int = 256
        residual_channels: int = 64
        num_layers: int = 4

    huge = dict(n_mels=10**7, image_size=10**7, hop_length=10**7, residual_channels=10**7, num_layers=10**7)
    assert Named.from_dict(huge).to_dict() == huge


def test_a_declared_bound_holds_however_the_config_is_built():
    """from_dict, the constructor and replace all refuse a value above a declared bound, before the class's own
    __post_init__ runs (which may rely on the bound); a class without a __post_init__ of its own is checked too."""
    from diffcore.config import bounded
    from diffimage.config import UNetConfig
    from diffwave.mel import MelConfig
    from diffwave.refiner import RefinerConfig

    ran = []

    @dataclass
    class Own(ConfigBase):
        widgets: int = bounded(3, limit=10)

        def __post_init__(self) -> None:
            ran.append(self.widgets)

    @dataclass
    class Child(Own):
        gadgets: int = bounded(1, limit=2)

    @dataclass
    class Bare(ConfigBase):
        widgets: int = bounded(3, limit=10)

    for build in (lambda: Own(widgets=11), lambda: Own().replace(widgets=11), lambda: Own.from_dict({"widgets": 11}),
                  lambda: Child(widgets=11), lambda: Bare(widgets=11)):
        with pytest.raises(ConfigError, match=r"widgets = 11 is larger than the limit 10"):
            build()
    assert ran == [3]  # only Own() itself got as far as its own __post_init__
    with pytest.raises(ConfigError, match=r"Child.gadgets = 3 is larger than the limit 2"):
        Child(gadgets=3)
    assert Own(widgets=10).widgets == 10 and Child(gadgets=2).gadgets == 2
    for build, field in ((lambda: MelConfig(n_mels=1025), "n_mels"), (lambda: MelConfig(hop_length=70_000), "hop"),
                         (lambda: UNetConfig(image_size=5000), "image_size"),
                         (lambda: UNetConfig(num_res_blocks=65), "num_res_blocks"),
                         (lambda: RefinerConfig(dim=4096), "dim"), (lambda: RefinerConfig(num_blocks=65), "blocks"),
                         (lambda: RefinerConfig(intermediate=8193), "intermediate")):
        with pytest.raises(ConfigError, match=rf"{field}.* is larger than the limit"):
            build()
