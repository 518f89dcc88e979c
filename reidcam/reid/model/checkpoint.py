"""ReIDMamba checkpoints: our own format, and ImageNet Vim / Mamba(R) backbones.

Our format is one ``torch.save`` file::

    {"format": "reidcam-reid-v1", "config": asdict(ReIDMambaConfig), "state_dict": ..., "extra": ...}

It is read back with ``weights_only=True``, so ``extra`` may hold only tensors, numbers,
strings and containers of them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reidcam.errors import DataError, first_line
from reidcam.reid.model.reidmamba import ReIDMamba, ReIDMambaConfig

log = logging.getLogger(__name__)

FORMAT = "reidcam-reid-v1"
_CLASSIFIER_KEY = re.compile(r"^branches\.\d+\.(bottleneck|classifier)\.")
_PRETRAINED_HEAD_KEY = re.compile(r"^(neck|norm_neck|head)\.")
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


# Kept in float32 when a checkpoint is stored in half precision: the SSM's decay rates and skip weights
# are few, and the decays exp(-exp(A_log) * delta) are sensitive to their rounding.
_KEEP_FP32_KEY = re.compile(r"(^|\.)(A_log|D)$")


def save_reid_checkpoint(path: str | Path, model: ReIDMamba, extra: dict | None = None, half: bool = False) -> None:
    """Writes the model's config and weights (and ``extra``) to ``path``, atomically.

    ``half`` stores floating-point weights in float16 (but ``A_log`` and ``D``); loading gives a
    float32 model either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        state[key] = value.half() if half and value.is_floating_point() and not _KEEP_FP32_KEY.search(key) else value
    payload = {"format": FORMAT, "config": asdict(model.config), "state_dict": state, "extra": extra}
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_reid_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", drop_classifier: bool = False
) -> tuple[ReIDMamba, dict | None]:
    """Rebuilds the model of a checkpoint written by :func:`save_reid_checkpoint`, in eval mode.

    ``drop_classifier`` drops the BNNeck classifiers (e.g. to fine-tune on other identities;
    call ``model.reset_classifier(n)`` afterwards). Raises DataError if the file is missing or unreadable.
    """
    payload = _read_torch_file(Path(path))
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise DataError(f"{path} is not a reidcam ReID checkpoint (expected format {FORMAT!r})")
    try:
        config = ReIDMambaConfig.from_dict(dict(payload["config"]))
        state = dict(payload["state_dict"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"ReID checkpoint {path} is incomplete: {exc}") from exc
    if drop_classifier:
        config = replace(config, num_classes=0)
        state = {k: v for k, v in state.items() if not _CLASSIFIER_KEY.match(k)}
    model = ReIDMamba(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"ReID checkpoint {path} does not match its config: {first_line(exc)}") from exc
    model.to(map_location).eval()
    return model, payload.get("extra")


def export_inference_checkpoint(
    source: str | Path, destination: str | Path, half: bool = True, extra: dict | None = None
) -> Path:
    """Writes the embedding network of a training checkpoint: no BNNeck classifiers, float16 if ``half``.

    This is the file a pipeline ships (e.g. ``reidcam/weights/reidmamba_default.pt``): about half
    the size in float16, read back by :func:`load_reid_checkpoint` into a float32 model. ``extra``
    replaces the source's extra (keep it to plain numbers and strings).
    """
    model, source_extra = load_reid_checkpoint(source, drop_classifier=True)
    destination = Path(destination)
    save_reid_checkpoint(destination, _without_unused_camera_embedding(model),
                         extra=source_extra if extra is None else extra, half=half)
    return destination


def _without_unused_camera_embedding(model: ReIDMamba) -> ReIDMamba:
    """A model trained with sie_lambda = 0 never used its camera embedding: drop it, so that the
    embedder accepts any camera index without warning that it was not a training camera."""
    if model.config.sie_lambda != 0 or model.config.num_cameras == 0:
        return model
    slim = ReIDMamba(replace(model.config, num_cameras=0))
    slim.load_state_dict({k: v for k, v in model.state_dict().items() if k != "sie_embed"})
    return slim.eval()


def _read_torch_file(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        # DeiT-style training scripts store their argparse.Namespace beside the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise DataError(f"cannot read checkpoint {path}: {first_line(exc)[:200]}") from exc


# --------------------------------------------------------------------------------------------
# ImageNet Vim / Mamba(R) backbones
# --------------------------------------------------------------------------------------------


def load_pretrained_backbone(model: ReIDMamba, path_or_state_dict: str | Path | Mapping[str, Tensor]) -> list[str]:
    """Initialises ``model`` from a Vim / Mamba(R) ImageNet checkpoint; returns the model keys left as they were.

    Shared blocks take the checkpoint's blocks of the same index; each branch takes the
    checkpoint's last ``branch_depth`` blocks (22 and 23 of 24) and its ``norm_f``. Class tokens
    and their pos-embeds are copied in order; the patch pos-embed is resampled from its square
    grid to the model's grid (bicubic, antialiased). The pretraining neck and head are dropped.
    """
    source = _backbone_state(path_or_state_dict)
    config = model.config
    target = model.state_dict()
    mapped: dict[str, Tensor] = {}
    _map_layers(source, config, mapped)
    _map_direct(source, mapped, config)
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        raise DataError(f"pretrained backbone does not fit {config.name}: {'; '.join(mismatched[:3])}")
    unknown = [k for k in mapped if k not in target]
    if unknown:
        log.warning("pretrained backbone: %d keys have no place in the model, e.g. %s", len(unknown), unknown[0])
    loadable = {k: v.to(target[k].dtype) for k, v in mapped.items() if k in target}
    model.load_state_dict(loadable, strict=False)
    not_loaded = sorted(k for k in target if k not in loadable)
    log.info("pretrained backbone: loaded %d tensors, %d left as initialised", len(loadable), len(not_loaded))
    return not_loaded


def _backbone_state(path_or_state_dict: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(path_or_state_dict, Mapping):
        raw: Any = path_or_state_dict
    else:
        raw = _read_torch_file(Path(path_or_state_dict))
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        raw = raw["model"]
    if not isinstance(raw, Mapping) or not any(isinstance(v, Tensor) for v in raw.values()):
        raise DataError("pretrained backbone holds no state dict (expected key 'model' or a plain state dict)")
    state = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, Tensor)}
    return {k: v for k, v in state.items() if not _PRETRAINED_HEAD_KEY.match(k)}


def _map_layers(source: Mapping[str, Tensor], config: ReIDMambaConfig, mapped: dict[str, Tensor]) -> None:
    """Shared blocks by index; branch blocks from the checkpoint's last ``branch_depth`` blocks."""
    per_layer: dict[int, dict[str, Tensor]] = {}
    for key, value in source.items():
        match = _LAYER_KEY.match(key)
        if match:
            per_layer.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not per_layer:
        raise DataError("pretrained backbone has no 'layers.<i>.' blocks: not a Vim / Mamba(R) checkpoint")
    source_depth = max(per_layer) + 1
    if source_depth != config.depth:
        log.warning("pretrained backbone has %d blocks, the model %d", source_depth, config.depth)
    shared = config.depth - config.branch_depth
    for i in range(min(shared, source_depth)):
        for name, value in per_layer.get(i, {}).items():
            mapped[f"layers.{i}.{name}"] = value
    first_branch_layer = source_depth - config.branch_depth
    for j in range(config.branch_depth):
        for name, value in per_layer.get(first_branch_layer + j, {}).items():
            for b in range(config.num_branches):
                mapped[f"branches.{b}.layers.{j}.{name}"] = value


def _map_direct(source: Mapping[str, Tensor], mapped: dict[str, Tensor], config: ReIDMambaConfig) -> None:
    """Patch embedding, pos-embeds, class tokens and the final norm (into every branch)."""
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        if key in source:
            mapped[key] = source[key]
    if "norm_f.weight" in source:
        for b in range(config.num_branches):
            mapped[f"branches.{b}.norm_f.weight"] = source["norm_f.weight"]
    if "pos_embed" in source:
        mapped["pos_embed"] = resample_pos_embed(_patch_pos_embed(source["pos_embed"]), config.grid)
    for key in ("cls_token", "pos_embed_cls"):
        if key in source:
            tokens = source[key]
            if tokens.shape[1] < config.num_cls_tokens:
                log.warning(
                    "pretrained %s has %d tokens, the model %d: left as initialised",
                    key, tokens.shape[1], config.num_cls_tokens,
                )
                continue
            mapped[key] = tokens[:, : config.num_cls_tokens].clone()


def _patch_pos_embed(pos_embed: Tensor) -> Tensor:
    """The patch part of a pretrained pos-embed (1, G*G, D); drops one leading class slot if present."""
    count = pos_embed.shape[1]
    for prefix in (0, 1):
        side = math.isqrt(count - prefix)
        if side * side == count - prefix:
            return pos_embed[:, prefix:]
    raise DataError(f"pretrained pos_embed has {count} positions: not a square grid")


def resample_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int]) -> Tensor:
    """Resamples a (1, G*G, D) square-grid pos-embed to (1, H*W, D): bicubic, antialiased, in float32."""
    count, dim = pos_embed.shape[1], pos_embed.shape[2]
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"pos_embed with {count} positions is not a square grid")
    grid = pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if (side, side) != tuple(new_grid):
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
