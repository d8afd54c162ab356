"""Recipes and the command line: a YAML recipe with a ``train: TrainConfig`` section, typed overrides, the error
messages users see, and the clean one-line exit of ``run_cli``."""

from dataclasses import dataclass, field

import pytest
import yaml

from diffcore.cli import UsageError, parse_args, recipe_parser, run_cli
from diffcore.config import ConfigBase, ConfigError, load_recipe
from diffcore.train import TrainConfig, Trainer, TrainingError, read_log
from diffcore.train.toy import ToyTask


@dataclass
class ToyModelConfig(ConfigBase):
    dim: int = 4
    hidden: int = 32
    num_steps: int = 50


@dataclass
class ToyData(ConfigBase):
    n: int = 16
    seed: int = 0


@dataclass
class ToyRecipe(ConfigBase):
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyData = field(default_factory=ToyData)
    train: TrainConfig = field(default_factory=TrainConfig)


RECIPE = """
model: {dim: 3, hidden: 8}
data: {n: 16}
train:
  max_steps: 3
  batch_size: 8
  lr: 1e-3            # YAML 1.1 reads this as a string; the config system makes it a number
  betas: [0.9, 0.99]
  num_workers: 0
  log_every: 1
  device: cpu
  progress: false
  tensorboard: false
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE)
    return path


def test_recipe_maps_onto_train_config_with_overrides(recipe_file):
    r = load_recipe(ToyRecipe, recipe_file, ["train.lr=0.01", "--train.grad_clip=null", "model.hidden=16"])
    assert r.train.lr == 0.01 and r.train.grad_clip is None and r.model.hidden == 16
    assert r.train.betas == (0.9, 0.99) and r.train.max_steps == 3 and r.model.dim == 3
    assert ToyRecipe.from_dict(r.to_dict()) == r  # round trip through plain data
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(r.train.to_dict()))) == r.train


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.lrr=1"], r"unknown key 'train.lrr'; did you mean 'lr'"),
        (["train.max_step=5"], r"unknown key 'train.max_step'; did you mean 'max_steps'"),
        (["train.max_steps=abc"], r"train.max_steps: expected an integer, got 'abc'"),
        (["train.precision=fp8"], r"train.precision: 'fp8' is not one of 'auto' \| 'bf16' \| 'fp16' \| 'fp32'"),
        (["train.compile=maybe"], r"train.compile: expected true or false, got 'maybe'"),
        (["train.betas=[0.9]"], r"train.betas: expected 2 items, got 1"),
        (["train.batch_size=6", "train.grad_accum=4"], r"batch_size \(6\) must be divisible by train.grad_accum"),
        (["train.ema_decay=1.5"], r"train.ema_decay must lie in \[0, 1\), got 1.5"),
    ],
)
def test_recipe_errors_name_the_key_and_the_problem(recipe_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(ToyRecipe, recipe_file, overrides)


def test_unknown_key_in_the_file_and_missing_file(tmp_path, recipe_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("max_steps: 3", "max_stepz: 3"))
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown key 'train.max_stepz'; did you mean 'max_steps'"):
        load_recipe(ToyRecipe, bad)
    with pytest.raises(ConfigError, match=r"recipe file '.*nope.yaml' does not exist"):
        load_recipe(ToyRecipe, tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------------------------ command line


class RecipeTask(ToyTask):
    def __init__(self, recipe: ToyRecipe):
        m = recipe.model
        super().__init__(dim=m.dim, hidden=m.hidden, num_steps=m.num_steps, n=recipe.data.n,
                         data_seed=recipe.data.seed)
        self.config = recipe.to_dict()


def train_main(argv):
    args = parse_args(recipe_parser("toy-train", "Train the toy model.", run_dir=True), argv)
    recipe = load_recipe(ToyRecipe, args.recipe, args.overrides)
    Trainer(RecipeTask(recipe), recipe.train, args.run_dir).fit()
    return 0


def test_parse_args_collects_both_override_spellings_in_order():
    p = recipe_parser(run_dir=True)
    args = parse_args(p, ["train.lr=1", "--run-dir", "out=1", "--train.lr=2", "--recipe=a=b.yaml", "model.dim=3"])
    assert args.overrides == ["train.lr=1", "train.lr=2", "model.dim=3"]
    assert args.run_dir == "out=1" and args.recipe == "a=b.yaml"
    with pytest.raises(UsageError, match=r"unknown option '--lr'; recipe overrides are written --key=value"):
        parse_args(p, ["--run-dir", "x", "--lr", "1"])
    with pytest.raises(UsageError, match=r"'lr' is not an override: write key=value"):
        parse_args(p, ["--run-dir", "x", "lr"])


def test_cli_trains_and_writes_the_resolved_recipe(tmp_path, recipe_file):
    run = tmp_path / "run"
    rc = run_cli(train_main, ["--recipe", str(recipe_file), "--run-dir", str(run), "train.max_steps=2",
                              "--train.lr=0.02"])
    assert rc == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 2 and resolved["train"]["lr"] == 0.02
    assert resolved["model"] == {"dim": 3, "hidden": 8, "num_steps": 50}
    assert [r["step"] for r in read_log(run)] == [1, 2]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'; did you mean 'lr'?"),
        (["train.max_steps=abc"], "train.max_steps: expected an integer, got 'abc'"),
        (["--lr", "1"], "unknown option '--lr'"),
    ],
)
def test_run_cli_prints_one_line_and_exits_2(tmp_path, recipe_file, capsys, extra, message):
    rc = run_cli(train_main, ["--recipe", str(recipe_file), "--run-dir", str(tmp_path)] + extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_run_cli_missing_recipe_and_debug_mode(tmp_path, capsys, monkeypatch):
    argv = ["--recipe", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path)]
    assert run_cli(train_main, argv) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # --debug: the exception propagates with its traceback
        run_cli(train_main, argv + ["--debug"])
    monkeypatch.setenv("DIFFSTACK_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_cli(train_main, argv)


def test_run_cli_status_of_other_failures(capsys):
    def fails_training(argv):
        raise TrainingError("20 non-finite losses in a row at step 7")

    assert run_cli(fails_training, []) == 1
    assert capsys.readouterr().err == "error: 20 non-finite losses in a row at step 7\n"

    def bug(argv):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):  # a bug is not hidden behind a one-line message
        run_cli(bug, [])
    assert run_cli(lambda argv: parse_args(recipe_parser(), ["--help"]), []) == 0
