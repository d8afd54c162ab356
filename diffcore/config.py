"""Dataclass configurations, recipes and command-line overrides.

Every component of the package is configured by one dataclass that inherits :class:`ConfigBase`:

- ``Cfg.from_dict(d)`` builds it, recursing into nested dataclass fields, checking the type of every value and
  rejecting an unknown key with a message that names the key and the closest valid ones.
- A class may define ``PRESETS: ClassVar[dict[str, dict]]``; a dict holding ``preset: NAME`` starts from that
  preset and the other keys override it. ``Cfg.preset(name, **overrides)`` does the same from Python.
- ``cfg.to_dict()`` returns plain data (YAML/JSON-able) and ``from_dict(to_dict())`` round-trips.
- ``__post_init__`` of a subclass rejects inconsistent fields by raising :class:`ConfigError`.
- A size field declares its own upper bound as field metadata, ``bounded(default, limit=...)``; ``from_dict``
  refuses a larger value before anything is built and the constructor before the class's own ``__post_init__``.
  The core knows no field by name: each package bounds its own.

A recipe is a YAML file that maps onto a top-level dataclass; :func:`load_recipe` reads it and applies
``section.field=value`` overrides from the command line with the same type checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import reprlib
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin

import yaml

from diffcore.atomic import atomic_write
from diffcore.errors import ConfigError
from diffcore.paths import not_a_file_reason

__all__ = [
    "ConfigError",
    "ConfigBase",
    "bounded",
    "DiffusionConfig",
    "load_recipe",
    "apply_overrides",
    "save_config",
]

C = TypeVar("C", bound="ConfigBase")


#: Key of a dataclass field's metadata that holds the largest value the field accepts (:func:`bounded`).
SIZE_LIMIT = "size_limit"
#: Longest list a config field may hold (an explicit noise schedule, channel multipliers, ...).
MAX_SEQUENCE = 100_000


def bounded(default: Any = dataclasses.MISSING, *, limit: int, **kwargs: Any) -> Any:
    """A dataclass field of a :class:`ConfigBase` whose value is refused above ``limit``: by
    :meth:`ConfigBase.from_dict` before anything is built (so a recipe, an export's ``config.json`` or imported
    parameters asking for a gigantic network or schedule fail at once with the field named instead of allocating
    gigabytes first), and by the constructor before the class's own ``__post_init__`` runs. Each package declares
    the bounds of its own fields this way (``residual_layers: int = bounded(30, limit=512)``); the core enforces
    them and knows no field by name."""
    metadata = {**kwargs.pop("metadata", {}), SIZE_LIMIT: limit}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _over_limit(field: dataclasses.Field, value: Any, where: str) -> None:
    """Refuse a number above the field's declared bound (:func:`bounded`)."""
    limit = field.metadata.get(SIZE_LIMIT)
    if limit is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        raise ConfigError(f"{where} = {value:g} is larger than the limit {limit} for this field")


def _check_size(field: dataclasses.Field, value: Any, where: str) -> None:
    """Refuse a size field above its bound and a list longer than :data:`MAX_SEQUENCE` (before coercion)."""
    if isinstance(value, (list, tuple)) and len(value) > MAX_SEQUENCE:
        raise ConfigError(f"{where}: a list of {len(value)} items is longer than the limit {MAX_SEQUENCE}")
    _over_limit(field, value, where)


def _check_bounds(config: "ConfigBase") -> None:
    """Every declared bound of ``config``'s fields, on the values it was built with."""
    for f in dataclasses.fields(config):
        if SIZE_LIMIT in f.metadata:
            _over_limit(f, getattr(config, f.name), f"{type(config).__name__}.{f.name}")


def _bounds_first(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    """A class's own ``__post_init__`` preceded by the bounds check (once, however deep the class hierarchy)."""
    if getattr(post_init, "_checks_bounds", False):
        return post_init

    @functools.wraps(post_init)
    def checked(self: Any) -> None:
        _check_bounds(self)
        post_init(self)

    checked._checks_bounds = True  # type: ignore[attr-defined]
    return checked


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form (tuples for sequences)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: {_short(value)} is not one of {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        errors = []
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed (expected {_type_name(tp)})")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # `X | None`: X's own message is the precise one (e.g. the presets it has)
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {_short(value)} is not a valid {_type_name(tp)}")
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {_short(value)}")
        return tp.from_dict(value, _where=where)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in get_args(tp):
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML reads "1e-4" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {_short(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError(f"{where}: expected a string, got {_short(value)}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_short(value)}")
    return value


def _unknown_key(key: Any, valid: Sequence[str], where: str) -> ConfigError:
    if not isinstance(key, str):  # YAML reads `1: x` with an integer key
        full = f"{where}.{key!r}" if where else repr(key)
        return ConfigError(f"key {full} is not a name (valid keys: {', '.join(valid)})")
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    full = f"{where}.{key}" if where else key
    return ConfigError(f"unknown key {full!r}{hint} (valid keys: {', '.join(valid)})")


@dataclass
class ConfigBase:
    """Mixin for configuration dataclasses: typed ``from_dict``/``to_dict``, presets, validation."""

    PRESETS: ClassVar[dict[str, dict]] = {}
    #: Old key -> field name: configs written by older versions keep loading (one ``DeprecationWarning`` each).
    RENAMED: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The declared bounds hold however a config is built (from_dict, the constructor, replace): a subclass's
        # own __post_init__ runs after them, without having to remember to call the check.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None:
            cls.__post_init__ = _bounds_first(own)  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        _check_bounds(self)

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None = None, *, _where: str = "") -> C:
        """Build from plain data, checking every key and type (see the module docstring)."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{_where or cls.__name__}: expected a mapping, got {_short(data)}")
        data = _renamed(cls, dict(data or {}), _where)
        preset = data.pop("preset", None)
        base: dict[str, Any] = {}
        if preset is not None:
            if not isinstance(preset, str) or preset not in cls.PRESETS:
                raise ConfigError(
                    f"{_where or cls.__name__}: unknown preset {preset!r}; available: {', '.join(cls.PRESETS) or 'none'}"
                )
            base = _deep_merge({}, cls.PRESETS[preset])
        merged = _deep_merge(base, data)
        hints = cls._hints()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        names = list(fields)
        kwargs = {}
        for key, value in merged.items():
            if key not in fields:
                raise _unknown_key(key, names, _where)
            _check_size(fields[key], value, f"{_where + '.' if _where else ''}{key}")
            kwargs[key] = _coerce(value, hints[key], f"{_where + '.' if _where else ''}{key}")
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{_where}: {e}" if _where else str(e)) from None

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """The preset ``name`` with some fields overridden."""
        return cls.from_dict({"preset": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return type(self).from_dict(_deep_merge(self.to_dict(), changes))


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and "preset" not in v:
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------------------------
# Recipes


#: Largest recipe file that is read: a real one is a few kB, and an explicit beta list of 100,000 steps is about
#: 1.2 MB. The size is checked before the file is read or parsed.
MAX_RECIPE_BYTES = 4 << 20
#: Longest command-line override (``key=value``), checked before its value is parsed.
MAX_OVERRIDE_CHARS = 1 << 20
#: Most YAML nodes one recipe or override value may hold, counting every alias (``*x``) at the full size of what it
#: refers to: nested aliases (a "billion laughs" recipe of 500 bytes) would otherwise expand without limit.
MAX_YAML_NODES = 500_000


class _YamlRefused(Exception):
    """A YAML document refused before it is built (too many nodes, a duplicate key); the message says why."""


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about values that may be huge."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader with two refusals: a key given twice in one mapping (PyYAML keeps the last one
    silently, so a second ``train:`` section would replace the first), and more than :data:`MAX_YAML_NODES` nodes
    (counted while composing, so a huge document stops early)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise _YamlRefused(f"it holds more than {MAX_YAML_NODES} values (the limit)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` keys may be overridden by the mapping's own keys, as YAML says
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except Exception:
                    continue  # an unhashable key: PyYAML's own error follows
                if key in seen:
                    raise _YamlRefused(f"key {_short(key)} is given twice in one mapping (lines "
                                       f"{seen[key].line + 1} and {key_node.start_mark.line + 1}); the second would "
                                       "silently replace the first: merge them into one")
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of ``root`` with every alias counted at the full size of its target (memoised: linear in the composed
    nodes). Stops early above :data:`MAX_YAML_NODES`; a node that contains itself raises :class:`_YamlRefused`."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _YamlRefused("an alias refers to a value that contains it (the value would be infinite)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > MAX_YAML_NODES:
                    break
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` within the bounds above: :class:`_YamlRefused` for a duplicate key or a document
    whose aliases expand beyond :data:`MAX_YAML_NODES` values (checked on the composed graph, before anything is
    built); PyYAML's own exceptions otherwise."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node)
        if expanded > MAX_YAML_NODES:
            raise _YamlRefused(f"its aliases (*name) expand to more than {MAX_YAML_NODES} values (the limit)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_override(text: str) -> tuple[list[str], Any]:
    text = text[2:] if text.startswith("--") else text
    if len(text) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"override {_short(text, 40)} is {len(text)} characters long, more than the limit "
                          f"{MAX_OVERRIDE_CHARS}")
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (dotted keys for nesting, e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = _load_yaml(raw) if raw != "" else ""
    except _YamlRefused as e:
        raise ConfigError(f"override {key}=...: {e}") from None
    except RecursionError:
        raise ConfigError(f"override {key}=...: the value is nested too deeply") from None
    except Exception:  # YAMLError, and ValueError from PyYAML's constructors (e.g. 2001-13-01): a plain string
        value = raw
    return key.split("."), value


def _check_path(cls: type[ConfigBase], path: list[str], full: str) -> None:
    """Reject an override whose dotted key does not name a field, suggesting the closest ones."""
    current: Any = cls
    for i, part in enumerate(path):
        if not (isinstance(current, type) and issubclass(current, ConfigBase)):
            return  # free-form mapping below this point
        names = current.field_names()
        if part not in names and not (part == "preset" and current.PRESETS):
            prefix = ".".join(path[:i])
            raise _unknown_key(part, names, prefix)
        if part == "preset":
            return
        hint = current._hints()[part]
        args = [a for a in get_args(hint) if a is not type(None)]
        current = args[0] if get_origin(hint) in (Union, types.UnionType) and len(args) == 1 else hint


def apply_overrides(cls: type[ConfigBase], data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to plain recipe data."""
    out = _deep_merge({}, data)
    for text in overrides:
        path, value = _parse_override(text)
        _check_path(cls, path, text)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def load_recipe(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """Read a YAML recipe into ``cls``, applying command-line overrides (``train.lr=1e-4``)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe file {str(p)!r} {not_a_file_reason(p)}")
        try:
            size = p.stat().st_size
            if size > MAX_RECIPE_BYTES:
                raise _YamlRefused(f"{size} bytes is far too large for a recipe (the limit is {MAX_RECIPE_BYTES})")
            with open(p, "rb") as f:  # read at most the limit: the file may grow, or be a FIFO
                raw = f.read(MAX_RECIPE_BYTES + 1)
            if len(raw) > MAX_RECIPE_BYTES:
                raise _YamlRefused(f"it is far too large for a recipe (over the limit of {MAX_RECIPE_BYTES} bytes)")
            data = _load_yaml(raw.decode("utf-8")) or {}
        except _YamlRefused as e:
            raise ConfigError(f"recipe file {str(p)!r}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe file {str(p)!r} is not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"recipe file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except (ValueError, TypeError, AttributeError, RecursionError) as e:  # raised by PyYAML's constructors
            raise ConfigError(f"recipe file {str(p)!r} is not valid YAML: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise ConfigError(f"recipe file {str(p)!r} cannot be read ({e.strerror or e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe file {str(p)!r} must hold a mapping at the top level")
    where = f"recipe {str(path)!r}: " if path is not None else ""
    try:
        data = apply_overrides(cls, data, overrides)
        return cls.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    except RecursionError:  # a YAML alias that contains itself (a: &x [*x])
        raise ConfigError(f"{where}the recipe is nested too deeply or refers to itself") from None


def save_config(cfg: ConfigBase | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved configuration as YAML, atomically (temporary file, fsync, rename)."""
    data = cfg.to_dict() if isinstance(cfg, ConfigBase) else dict(cfg)
    text = yaml.safe_dump(data, sort_keys=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


def _renamed(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with the old names of :attr:`ConfigBase.RENAMED` replaced by the fields' names (a
    ``DeprecationWarning`` names each); an old name given together with its new one is a ``ConfigError``."""
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old not in data:
            continue
        at = f"{where}." if where else ""
        if new in data:
            raise ConfigError(f"{at}{old} and {at}{new} are one setting ({old} is its old name): give {new} only")
        warnings.warn(f"config key {at}{old} is now called {new}; its value is used as {new} (rename it in the "
                      f"recipe)", DeprecationWarning, stacklevel=3)
        data[new] = data.pop(old)
    return data


# --------------------------------------------------------------------------------------------------------------
# The diffusion process of a model


@dataclass
class EDMConfig(ConfigBase):
    """EDM's preconditioning (Karras et al. 2022, Table 1), see :class:`diffcore.denoiser.EDMDenoiser`.

    ``sigma_data``: the data's standard deviation (0.5 for images in [-1, 1]); ``sigma_min``/``sigma_max``: the
    sampling range; ``p_mean``/``p_std``: the log-normal training distribution of sigma; ``time_scale``: factor
    on c_noise = ln(sigma) / 4 before the network's time embedding (1 = the paper's; 250 suits a DDPM U-Net whose
    sinusoidal embedding expects steps of order 1000).
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sigma_data", "sigma_min", "sigma_max", "p_std", "time_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise ConfigError(f"diffusion.edm.{name} must be positive and finite, got {value}")
        if not (isinstance(self.p_mean, (int, float)) and abs(self.p_mean) < float("inf")):
            raise ConfigError(f"diffusion.edm.p_mean must be finite, got {self.p_mean}")
        if self.sigma_min > self.sigma_max:
            raise ConfigError(f"diffusion.edm.sigma_min ({self.sigma_min}) is above sigma_max ({self.sigma_max})")


@dataclass
class DiffusionConfig(ConfigBase):
    """The diffusion process of one model: its noise schedule, parameterisation and training loss.

    VP (default): ``schedule``: ``linear`` (Ho et al. 2020: β from ``beta_start`` to ``beta_end``), ``cosine``
    (Nichol & Dhariwal 2021 with offset ``cosine_s``), ``sigmoid`` (Chen 2023 with ``sigmoid_start/end/tau``) or
    ``betas`` (an explicit β list, e.g. an imported lmnt checkpoint). ``prediction``: what the network outputs
    (ε, x0 or v). ``loss``: the norm of the simple loss (``l1`` is what lmnt's DiffWave trains with).
    ``min_snr_gamma``: optional min-SNR-γ weighting (Hang et al. 2023). ``vlb_weight``: λ, the weight of L_vlb for
    a model that learns its variance (Nichol & Dhariwal: 0.001; formerly ``hybrid_lambda``).

    EDM: an ``edm`` section (:class:`EDMConfig`) selects Karras et al.'s preconditioning instead; the schedule
    fields, ``prediction``, ``loss`` and ``min_snr_gamma`` then do not apply. ``denoiser_from_config`` builds the
    denoiser either way.
    """

    RENAMED: ClassVar[dict[str, str]] = {"hybrid_lambda": "vlb_weight"}

    schedule: Literal["linear", "cosine", "sigmoid", "betas"] = "linear"
    num_steps: int = bounded(1000, limit=100_000)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999
    sigmoid_start: float = -3.0
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0
    prediction: Literal["eps", "x0", "v"] = "eps"
    loss: Literal["l2", "l1"] = "l2"
    min_snr_gamma: float | None = None
    vlb_weight: float = 0.001
    betas: tuple[float, ...] | None = None
    edm: EDMConfig | None = None

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"diffusion.num_steps must be at least 1, got {self.num_steps}")
        if self.schedule == "betas":
            if self.betas is None or len(self.betas) != self.num_steps:
                got = "none" if self.betas is None else len(self.betas)
                raise ConfigError(f"diffusion.schedule 'betas' needs num_steps={self.num_steps} betas, got {got}")
            if not all(0 < b < 1 for b in self.betas):
                raise ConfigError("diffusion.betas must all lie in (0, 1)")
        if self.schedule == "linear" and not (0 < self.beta_start <= self.beta_end < 1):
            raise ConfigError(
                f"diffusion betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if not (0 < self.max_beta < 1):
            raise ConfigError(f"diffusion.max_beta must be in (0, 1), got {self.max_beta}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ConfigError(f"diffusion.min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if self.edm is not None and (self.loss != "l2" or self.min_snr_gamma is not None):
            raise ConfigError("diffusion.edm has its own loss weighting: leave diffusion.loss at l2 and "
                              "min_snr_gamma unset")

    def build(self):
        """The :class:`~diffcore.schedule.NoiseSchedule` this config describes."""
        from diffcore.schedule import NoiseSchedule

        if self.schedule == "linear":
            return NoiseSchedule.linear(self.num_steps, self.beta_start, self.beta_end)
        if self.schedule == "betas":
            return NoiseSchedule.from_betas(self.betas)
        if self.schedule == "cosine":
            return NoiseSchedule.cosine(self.num_steps, s=self.cosine_s, max_beta=self.max_beta)
        return NoiseSchedule.sigmoid(
            self.num_steps, start=self.sigmoid_start, end=self.sigmoid_end, tau=self.sigmoid_tau, max_beta=self.max_beta
        )
