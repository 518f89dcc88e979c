"""Training recipes: YAML files under configs/reid/, validated by pydantic, overridable per key.

Unknown keys (in the file or in a ``key=value`` override) are errors that name the file and the
key, so a typo never silently falls back to a default. Override values are parsed as YAML
scalars (``optim.lr=0.01``, ``train.amp=bf16``, ``model.img_size=[128,64]``).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reidcam.errors import ConfigError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(StrictModel):
    name: str = "reidmamba_small"
    img_size: tuple[int, int] = (256, 128)
    stride: int = Field(16, ge=1)
    pretrained: str | None = Field(None, description="Mamba-R ImageNet checkpoint for the backbone, or none.")
    init_from: str | None = Field(
        None, description='A reidcam checkpoint to start from (fine-tuning), or "shipped" for the weights reidcam ships.'
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments of build_model.")


class DataSection(StrictModel):
    dataset: str = "market1501"
    p: int = Field(16, ge=2, description="Identities per batch (over all processes).")
    k: int = Field(4, ge=1, description="Images per identity in a batch.")
    num_workers: int = Field(4, ge=0)
    pad: int = Field(10, ge=0)
    flip_p: float = Field(0.5, ge=0, le=1)
    erasing_p: float = Field(0.5, ge=0, le=1)
    look_jitter: float = Field(0.0, ge=0, le=1, description="Colour jitter strength (camera look); 0 = off.")
    look_blur_p: float = Field(0.0, ge=0, le=1, description="Chance of a Gaussian blur (camera look).")
    look_lowres_p: float = Field(0.0, ge=0, le=1, description="Chance of a down-and-up-scale (camera look).")
    test_batch_size: int = Field(128, ge=1)


class OptimSection(StrictModel):
    lr: float = Field(0.008, gt=0)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    warmup_iters: int = Field(1200, ge=0)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    t_max: int | None = Field(None, ge=1, description="Cosine period in epochs; null: epochs - warm-up epochs + 1.")
    eta_min: float = Field(8e-6, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)


class LossSection(StrictModel):
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet_margin: float = Field(1.2, ge=0)
    ratr_temperature: float = Field(0.1, gt=0)
    ratr_intra_weight: float = 1.0
    ratr_inter_weight: float = 1.0
    triplet_weight: float = 1.0
    id_weight: float = 1.0


class TrainSection(StrictModel):
    epochs: int = Field(160, ge=1)
    seed: int = 777
    amp: Literal["auto", "bf16", "fp16", "none"] = "fp16"
    checkpoint_every: int = Field(20, ge=1)
    eval_every: int = Field(20, ge=0, description="0: evaluate only after the last epoch.")
    flip_test: bool = True
    log_every: int = Field(50, ge=1, description="Iterations between log lines when not on a terminal.")
    max_iters_per_epoch: int | None = Field(None, ge=1, description="Cut epochs short (smoke tests).")
    deterministic: bool = True
    find_unused_parameters: bool = False
    cuda_graphs: bool = Field(
        True, description="Replay forward, loss and backward as one CUDA graph (single-GPU runs; "
        "engine/graphed_step.py)."
    )


class Recipe(StrictModel):
    """One training recipe (configs/reid/*.yaml)."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    loss: LossSection = Field(default_factory=LossSection)
    train: TrainSection = Field(default_factory=TrainSection)


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: '{key}': {first['msg']}"


def _section_type(annotation: Any) -> Any:
    """The pydantic model or dict type behind a field annotation (ignoring Optional)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        if candidate is dict or typing.get_origin(candidate) is dict:
            return dict
    return None


def _check_override_path(path: Sequence[str], source: str) -> None:
    model: Any = Recipe
    for depth, part in enumerate(path):
        if model is dict:
            return
        if model is None or part not in model.model_fields:
            raise ConfigError(f"{source}: unknown key '{'.'.join(path[:depth + 1])}'")
        model = _section_type(model.model_fields[part].annotation)
    if model not in (None, dict):
        raise ConfigError(f"{source}: '{'.'.join(path)}' is a section; override one of its keys")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str = "override") -> dict[str, Any]:
    """``raw`` with each ``dotted.key=value`` set (value parsed as YAML); ConfigError on unknown keys."""
    for item in overrides:
        key, separator, text = item.partition("=")
        key = key.strip().lstrip("-")
        if not separator or not key:
            raise ConfigError(f"{source}: expected key=value, got {item!r}")
        path = key.split(".")
        _check_override_path(path, f"{source} {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"{source} {item!r}: value is not YAML: {error}") from error
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return raw


def load_recipe(path: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe; ConfigError (one line) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, loss, train)")
    try:
        Recipe.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, str(path))) from error
    raw = apply_overrides(raw, overrides)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, f"{path} with overrides")) from error


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """A recipe stored in a checkpoint (as written by ``Recipe.model_dump(mode='json')``)."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, "stored recipe")) from error
