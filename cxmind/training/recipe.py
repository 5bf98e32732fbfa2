"""A recipe: the one YAML file a user edits to run SFT → GRPO Stage I → GRPO Stage II.

Top level: the model, where runs go, PEFT, image budget and Hub settings; then ``stages``, each
with its ``data`` and its ``args`` — the fields of :class:`~cxmind.training.sft.CXMindSFTConfig` or
:class:`~cxmind.training.grpo.CXMindGRPOConfig` (so every TRL option is a recipe key), parsed by
transformers' ``HfArgumentParser`` as TRL's own CLI does. Overrides use dotted keys:
``--stages.grpo_open.learning_rate 5e-7``, ``--peft.r 32``, ``--output_dir runs/x``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cxmind.errors import UserError
from cxmind.training.data import DataSource

__all__ = [
    "STAGE_TYPES",
    "PeftSettings",
    "Recipe",
    "RecipeError",
    "StageSpec",
    "apply_overrides",
    "load_recipe",
    "nearest",
    "recipe_keys",
]

STAGE_TYPES = ("sft", "grpo")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-6`` (no dot) as a string; a learning rate written that way must be a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


_RESERVED_ARGS = ("output_dir",)  # set per stage by the pipeline


class RecipeError(UserError):
    """A recipe problem a user can fix; the message names the key and the fix."""


def nearest(key: Any, allowed: Sequence[str], n: int = 3) -> str:
    """``"did you mean 'a', 'b' or 'c'?"``: up to ``n`` keys of ``allowed`` closest to ``key``.

    The close matches (``difflib``'s cutoff) when there are any, else the ``n`` nearest at all: a typo
    gets its key, never a dump of every allowed key.
    """
    close = difflib.get_close_matches(str(key), allowed, n=n) or difflib.get_close_matches(
        str(key), allowed, n=n, cutoff=0.0
    )
    quoted = [repr(c) for c in close]
    if not quoted:
        return "nothing is allowed here"
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"did you mean {listed}?"


def _known(name: str, value: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in value if k not in allowed]
    if unknown:
        hints = ", ".join(f"{key!r} ({nearest(key, allowed)})" for key in unknown)
        raise RecipeError(f"{where}: unknown key(s) {hints} in {name}")


# -- value types: YAML and overrides arrive untyped ----------------------------------------------


def _type_mismatch(value: Any, hint: Any) -> str | None:
    """What ``hint`` expects when ``value`` does not fit it (None when it does or cannot be told)."""
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if all(_type_mismatch(value, m) for m in members):
            return " or ".join(str(_type_mismatch(value, m)) for m in members)
        return None
    if origin is Literal:
        return None if value in typing.get_args(hint) else f"one of {list(typing.get_args(hint))}"
    if hint is type(None):
        return None if value is None else "null"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, Sequence) or hint is list:
        if not isinstance(value, list):
            return "a list"
        (item,) = typing.get_args(hint) or (Any,)
        bad = [_type_mismatch(v, item) for v in value]
        return next((f"a list of {b}" for b in bad if b), None)
    if origin in (dict, Mapping) or hint is dict:
        return None if isinstance(value, dict) else "a mapping"
    return None


def _number_hint(value: str, expected: str) -> str:
    """Why a number arrived as text: PyYAML (YAML 1.1) reads ``1e-6`` (no dot) as a string."""
    try:
        number = float(value)
    except ValueError:
        return f"{value!r} is not {expected}"
    if "integer" in expected and "number" not in expected:
        return f"{value!r} was read as text, not a number; write {int(number)}"
    mantissa, exponent = f"{number:.6e}".split("e")
    mantissa = mantissa.rstrip("0")
    literal = (
        f"{mantissa}0e{int(exponent):+d}" if mantissa.endswith(".") else f"{mantissa}e{int(exponent):+d}"
    )
    return (
        f"{value!r} was read as text, not a number (YAML reads an exponent without a dot as a string); "
        f"write {literal}"
    )


def type_problems(values: Mapping[str, Any], cls: type) -> Iterator[tuple[str, str]]:
    """(field, problem) for each value of ``values`` that does not fit ``cls``'s field type or choices."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        if name not in fields or name not in hints:
            continue
        expected = _type_mismatch(value, hints[name])
        choices = fields[name].metadata.get("choices")
        if expected is None and choices is not None and isinstance(value, str) and value not in choices:
            expected = f"one of {list(choices)}"
        if expected is None:
            continue
        if isinstance(value, str) and ("integer" in expected or "number" in expected):
            yield name, _number_hint(value, expected)
        else:
            yield name, f"{value!r} is not {expected}"


@dataclass
class PeftSettings:
    """LoRA/QLoRA. ``between_stages``: "merge" (each stage starts a fresh adapter on the merged
    model; the KL reference is the merged model) or "continue" (one adapter trained through all
    stages; its stage-start copy is loaded as TRL's "ref" adapter for the KL term)."""

    method: str = "lora"
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    train_vision_tower: bool = False
    between_stages: str = "merge"

    def __post_init__(self) -> None:
        if self.method not in ("lora", "qlora"):
            raise RecipeError(f"peft.method must be 'lora' or 'qlora', got {self.method!r}")
        if self.between_stages not in ("merge", "continue"):
            raise RecipeError(
                f"peft.between_stages must be 'merge' or 'continue', got {self.between_stages!r}"
            )
        if self.r < 1:
            raise RecipeError(f"peft.r must be >= 1, got {self.r!r}")


@dataclass
class StageSpec:
    """One training stage: ``type`` sft|grpo, its data sources and its trainer ``args``."""

    name: str
    type: str
    data: list[DataSource]
    args: dict[str, Any] = field(default_factory=dict)
    mix: str = "concatenate"
    push_to_hub: bool = False
    eval_data: list[DataSource] | None = None  # evaluated every `eval_steps` when args set `eval_strategy`
    freeze_vision_tower: bool | None = None  # None: the recipe's value

    def config(self, output_dir: Path, defaults: Mapping[str, Any] | None = None) -> Any:
        """The stage's TRL config, parsed by ``HfArgumentParser`` (unknown keys name their stage).

        ``defaults`` (recipe-wide values such as ``seed``) apply where the stage's args are silent.
        """
        from transformers import HfArgumentParser

        cls = config_class(self.type)
        allowed = [f.name for f in dataclasses.fields(cls) if f.init]
        where = f"stage {self.name!r}"
        _known("args", self.args, allowed, where)
        problems = list(type_problems(self.args, cls))  # HfArgumentParser.parse_dict converts nothing
        if problems:
            listed = "; ".join(f"args.{name}: {problem}" for name, problem in problems)
            raise RecipeError(f"{where}: wrong value type: {listed}")
        for key in _RESERVED_ARGS:
            if key in self.args:
                raise RecipeError(
                    f"{where}: args.{key} is set by the pipeline (<output_dir>/{self.name}); remove it"
                )
        values = {k: v for k, v in (defaults or {}).items() if v is not None and v != {}}
        values.update(self.args)
        values["output_dir"] = str(output_dir)
        try:
            (config,) = HfArgumentParser(cls).parse_dict(values)
        except (ValueError, TypeError) as err:
            raise RecipeError(f"{where}: invalid args: {err}") from err
        return config


def config_class(stage_type: str) -> type:
    if stage_type == "sft":
        from cxmind.training.sft import CXMindSFTConfig

        return CXMindSFTConfig
    if stage_type == "grpo":
        from cxmind.training.grpo import CXMindGRPOConfig

        return CXMindGRPOConfig
    raise RecipeError(f"stage type must be one of {STAGE_TYPES}, got {stage_type!r}")


@dataclass
class Recipe:
    """A whole multi-stage run (see module doc)."""

    model: str
    output_dir: str
    stages: list[StageSpec]
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)
    min_pixels: int | None = None
    max_pixels: int | None = None
    peft: PeftSettings | None = None
    freeze_vision_tower: bool = False
    seed: int | None = None
    hub_model_id: str | None = None
    hub_private: bool = True
    source: str | None = None  # the recipe file, for messages

    def __post_init__(self) -> None:
        if not self.stages:
            raise RecipeError("a recipe needs at least one entry under `stages`")
        names = [s.name for s in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RecipeError(f"stage names must be unique; repeated: {duplicates}")
        frozen = [s.name for s in self.stages if s.freeze_vision_tower] + [
            "the recipe"
        ] * self.freeze_vision_tower
        if self.peft is not None and frozen:
            raise RecipeError(
                f"with peft, use peft.train_vision_tower instead of freeze_vision_tower (set in {frozen})"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str | None = None) -> Recipe:
        where = source or "recipe"
        if not isinstance(raw, Mapping):
            raise RecipeError(f"{where}: a recipe is a YAML mapping, got {type(raw).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
        _known("the recipe", raw, allowed, where)
        for key in ("model", "output_dir", "stages"):
            if key not in raw:
                raise RecipeError(f"{where}: missing required key {key!r}")
        values = dict(raw)
        top = {k: v for k, v in values.items() if k not in ("stages", "peft")}
        problems = [(name, p) for name, p in type_problems(top, cls)]
        if not isinstance(raw["stages"] or [], list):
            raise RecipeError(
                f"{where}: stages must be a list of stages (`- name: sft`, `type`, `data`, `args`), "
                f"got {type(raw['stages']).__name__}"
            )
        values["stages"] = [_stage(s, i, where) for i, s in enumerate(raw["stages"] or [])]
        if values.get("peft") is not None:
            peft = values["peft"]
            if not isinstance(peft, Mapping):
                raise RecipeError(f"{where}: peft must be a mapping (e.g. peft: {{r: 64}}), got {peft!r}")
            _known("peft", peft, [f.name for f in dataclasses.fields(PeftSettings)], where)
            problems += [(f"peft.{n}", p) for n, p in type_problems(peft, PeftSettings)]
        if problems:
            listed = "; ".join(f"{name}: {problem}" for name, problem in problems)
            raise RecipeError(f"{where}: wrong value type: {listed}")
        if values.get("peft") is not None:
            values["peft"] = PeftSettings(**values["peft"])
        return cls(**values, source=source)

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise RecipeError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def freezes_vision_tower(self, stage: StageSpec) -> bool:
        """Whether ``stage`` trains with the vision tower frozen (its own setting, else the recipe's)."""
        return self.freeze_vision_tower if stage.freeze_vision_tower is None else stage.freeze_vision_tower

    def stage_config(self, stage: StageSpec) -> Any:
        """The stage's TRL config: output in ``<output_dir>/<stage>``, recipe seed and model_init_kwargs."""
        defaults = {"seed": self.seed, "model_init_kwargs": dict(self.model_init_kwargs or {})}
        return stage.config(Path(self.output_dir) / stage.name, defaults)

    def validate(self) -> None:
        """Parse every stage's args now, so a typo in the last stage fails before hours of training."""
        for stage in self.stages:
            self.stage_config(stage)


def _stage(raw: Any, index: int, where: str) -> StageSpec:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: stages[{index}] must be a mapping with name, type, data, args")
    allowed = [f.name for f in dataclasses.fields(StageSpec)]
    _known(f"stages[{index}]", raw, allowed, where)
    for key in ("name", "type", "data"):
        if key not in raw:
            raise RecipeError(f"{where}: stages[{index}] is missing {key!r}")
    if raw["type"] not in STAGE_TYPES:
        raise RecipeError(f"{where}: stages[{index}].type must be one of {STAGE_TYPES}, got {raw['type']!r}")
    if not isinstance(raw.get("args") or {}, Mapping):
        raise RecipeError(
            f"{where}: stage {raw['name']!r}: args must be a mapping of trainer settings "
            f"(e.g. args: {{learning_rate: 1.0e-6}}), got {raw['args']!r}"
        )
    fields = {k: raw[k] for k in ("push_to_hub", "freeze_vision_tower", "mix") if k in raw}
    problems = list(type_problems(fields, StageSpec))
    if problems:
        listed = "; ".join(f"{name}: {problem}" for name, problem in problems)
        raise RecipeError(f"{where}: stage {raw['name']!r}: wrong value type: {listed}")
    sources = _sources(raw["data"], f"{where}: stage {raw['name']!r} data")
    eval_sources = (
        _sources(raw["eval_data"], f"{where}: stage {raw['name']!r} eval_data")
        if raw.get("eval_data")
        else None
    )
    if raw["type"] == "grpo":
        plain = [s.path for s in [*sources, *(eval_sources or [])] if s.style != "reasoning"]
        if plain:
            raise RecipeError(
                f"{where}: stage {raw['name']!r}: `style: instruction` (data {plain}) is for SFT stages "
                "only: GRPO rewards the <think>/<answer> format, which instruction-style prompts do not "
                "ask for; remove `style` from the GRPO stage's data"
            )
    return StageSpec(
        name=str(raw["name"]),
        type=raw["type"],
        data=sources,
        args=dict(raw.get("args") or {}),
        mix=raw.get("mix", "concatenate"),
        push_to_hub=raw.get("push_to_hub", False),
        eval_data=eval_sources,
        freeze_vision_tower=raw.get("freeze_vision_tower"),
    )


def _sources(value: Any, where: str) -> list[DataSource]:
    try:
        return [DataSource.from_value(d) for d in (value if isinstance(value, list) else [value])]
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from err


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--a.b value`` / ``--a.b=value`` pairs (values parsed as YAML) to a raw recipe dict.

    ``stages.<name>.<key>`` addresses a stage's args by the stage's name
    (``stages.<name>.data``/``mix``/``push_to_hub`` its other fields).
    """
    pairs: list[tuple[str, str]] = []
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise RecipeError(f"override {item!r} must look like --key value or --key=value")
        if "=" in item:
            key, value = item[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise RecipeError(f"override {item} has no value")
            key, value = item[2:], items[i + 1]
            i += 2
        pairs.append((key, value))
    for key, text in pairs:
        value = _yaml(text)
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) >= 3:
            stages = raw.get("stages") or []
            match = [s for s in stages if isinstance(s, dict) and s.get("name") == parts[1]]
            if not match:
                names = [s.get("name") for s in stages if isinstance(s, dict)]
                raise RecipeError(f"override --{key}: no stage named {parts[1]!r}; stages: {names}")
            stage = match[0]
            target = (
                stage if parts[2] in ("data", "mix", "push_to_hub", "type") else stage.setdefault("args", {})
            )
            _set(target, parts[2:], value)
        else:
            _check_override_key(key, parts)
            _set(raw, parts, value)
    return raw


def recipe_keys() -> list[str]:
    """The top-level keys of a recipe."""
    return [f.name for f in dataclasses.fields(Recipe) if f.name != "source"]


def _check_override_key(key: str, parts: list[str]) -> None:
    """An override of an unknown key names the nearest recipe keys (a recipe file would be refused too)."""
    allowed = recipe_keys()
    if parts[0] not in allowed:
        raise RecipeError(f"override --{key}: unknown recipe key {parts[0]!r} ({nearest(parts[0], allowed)})")
    if parts[0] == "peft" and len(parts) > 1:
        fields = [f.name for f in dataclasses.fields(PeftSettings)]
        if parts[1] not in fields:
            raise RecipeError(
                f"override --{key}: unknown key {parts[1]!r} in peft ({nearest(parts[1], fields)})"
            )


def _set(target: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            raise RecipeError(f"cannot set {'.'.join(parts)}: {part} is not a mapping")
    target[parts[-1]] = value


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, validate: bool = True) -> Recipe:
    """Read a recipe YAML file, apply command-line overrides, validate every stage.

    ``validate=False`` skips building the stage configs here, for preflight: it builds them at the
    target world size, where this process's size (1 on a login node) could wrongly refuse them.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"recipe {path} {'is a folder, not a YAML file' if path.is_dir() else 'not found'}"
            f" (from {Path.cwd()}); see recipes/ for examples"
        )
    try:
        raw = _yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(raw or {}, dict):
        raise RecipeError(
            f"recipe {path}: a recipe is a YAML mapping (model: ..., stages: ...), got {raw!r:.60}"
        )
    raw = apply_overrides(dict(raw or {}), overrides)
    recipe = Recipe.from_dict(raw, source=str(path))
    if validate:
        recipe.validate()
    return recipe
