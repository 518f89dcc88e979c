"""Scoring a model on a dataset's query/gallery split: embeddings, distances, CMC / mAP / mINP.

Reported numbers are **percentages** (0-100), as in the ReID literature: mAP, rank1, rank5,
rank10 and mINP, plus num_query and num_gallery (images).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reidcam.errors import DataError, ReidcamError
from reidcam.reid.data import ImageDataset, ReIDDataset, ReIDSample, build_test_transform, load_dataset
from reidcam.reid.engine.metrics import evaluate_features, evaluate_rankings

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def _loader_workers(num_samples: int, batch_size: int, requested: int | None) -> int:
    if requested is not None:
        return requested
    return 0 if num_samples <= batch_size else min(4, os.cpu_count() or 1)


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    samples: Sequence[ReIDSample],
    img_size: Sequence[int],
    device: torch.device,
    batch_size: int = 128,
    flip: bool = True,
    camera_map: np.ndarray | None = None,
    num_workers: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> Embeddings:
    """L2-normalised embeddings of ``samples`` (model in eval mode), with optional flip averaging.

    ``camera_map[camid]`` gives the camera index the model was trained with (identity if None).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ImageDataset(samples, build_test_transform(img_size)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=_loader_workers(len(samples), batch_size, num_workers),
        pin_memory=device.type == "cuda",
    )
    features, pids, camids = [], [], []
    for images, batch_pids, batch_camids in loader:
        model_camids = batch_camids if camera_map is None else torch.as_tensor(camera_map[batch_camids.numpy()])
        with autocast_context(device, amp_dtype):
            embedded = model.embed(images.to(device, non_blocking=True), model_camids.to(device), flip=flip)
        features.append(torch.nn.functional.normalize(embedded.float(), dim=1).cpu())
        pids.append(batch_pids)
        camids.append(batch_camids)
    model.train(was_training)
    return Embeddings(torch.cat(features).numpy(), torch.cat(pids).numpy(), torch.cat(camids).numpy())


def score_embeddings(query: Embeddings, gallery: Embeddings, rerank: bool = False) -> dict[str, float]:
    """Percent metrics of a query/gallery pair of embeddings (cosine distance, or re-ranked)."""
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    try:
        if rerank:
            from reidcam.reid.engine.rerank import k_reciprocal_rerank

            metrics = evaluate_rankings(k_reciprocal_rerank(query.features, gallery.features), *labels)
        else:
            metrics = evaluate_features(query.features, gallery.features, *labels)
    except ValueError as error:
        raise DataError(f"cannot evaluate: {error}") from error
    return {
        **metrics.as_percent_dict(),
        "num_query": int(len(query.pids)),
        "num_gallery": int(len(gallery.pids)),
    }


def evaluate_model(
    model: nn.Module,
    dataset: ReIDDataset,
    img_size: Sequence[int],
    device: torch.device,
    batch_size: int = 128,
    flip: bool = True,
    rerank: bool = False,
    camera_map: np.ndarray | None = None,
    num_workers: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """mAP, rank1, rank5, rank10, mINP (percent), num_query, num_gallery of ``model`` on ``dataset``."""
    started = time.perf_counter()
    embed = dict(img_size=img_size, device=device, batch_size=batch_size, flip=flip,
                 camera_map=camera_map, num_workers=num_workers, amp_dtype=amp_dtype)
    query = extract_embeddings(model, dataset.query, **embed)
    gallery = extract_embeddings(model, dataset.gallery, **embed)
    result = score_embeddings(query, gallery, rerank)
    log.info("evaluated %s in %.1f s: mAP %.2f rank1 %.2f mINP %.2f", dataset.name,
             time.perf_counter() - started, result["mAP"], result["rank1"], result["mINP"])
    return result


def camera_map_for(dataset: ReIDDataset, trained_cameras: Sequence[int] | None, num_model_cameras: int) -> np.ndarray:
    """Map the dataset's camera indices onto the camera embeddings (SIE) the model was trained with.

    A camera label seen in training keeps its training index. Any other camera (cross-domain
    evaluation, a new installation) maps to -1, which the model treats as "unseen camera" and
    gives no camera embedding. Without stored labels (an older checkpoint) the dataset's own
    indices are used where they exist in the model.
    """
    if trained_cameras is not None:
        index = {int(label): position for position, label in enumerate(trained_cameras)}
        mapped = np.array([index.get(int(label), -1) for label in dataset.cameras], dtype=np.int64)
        unseen = [label for label in dataset.cameras if int(label) not in index]
        if unseen:
            log.warning("cameras %s of %s were not seen in training; they get no camera embedding",
                        unseen, dataset.name)
        return mapped
    own = np.arange(dataset.num_cameras, dtype=np.int64)
    return np.where(own < num_model_cameras, own, -1)


def _dataset_name(requested: str, data_root: Path, recorded: str | None) -> str:
    """The generic "market" (the CLI default) on a folder without the Market layout means the
    dataset the checkpoint was trained on, e.g. MSMT17's list files or CUHK03's sub-folders."""
    has_market_layout = (data_root / "query").is_dir() and (data_root / "bounding_box_test").is_dir()
    if requested.strip().lower() == "market" and recorded and not has_market_layout:
        log.info("no Market layout in %s: evaluating it as %s, the checkpoint's training set", data_root, recorded)
        return recorded
    return requested


def evaluate_checkpoint(
    weights: Path,
    data_root: Path,
    dataset: str = "market",
    flip: bool = True,
    rerank: bool = False,
    device: str = "auto",
    batch_size: int = 128,
) -> dict[str, float]:
    """Load a checkpoint written by ``reidcam train`` and score it on ``dataset`` at ``data_root``."""
    from reidcam.devices import resolve_device
    from reidcam.reid.model.checkpoint import load_reid_checkpoint

    weights = Path(weights)
    if not weights.is_file():
        raise ReidcamError(f"checkpoint {weights} does not exist")
    if batch_size < 1:
        raise ReidcamError(f"--batch-size must be positive, got {batch_size}")
    target = resolve_device(device)
    model, extra = load_reid_checkpoint(weights, map_location=target)
    extra = extra or {}
    data = load_dataset(_dataset_name(dataset, Path(data_root), extra.get("dataset")), data_root, require_train=False)
    camera_map = camera_map_for(data, extra.get("camera_labels"), model.config.num_cameras)
    amp_dtype = torch.bfloat16 if target.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return evaluate_model(model, data, model.config.img_size, target, batch_size, flip, rerank,
                          camera_map, amp_dtype=amp_dtype)


def evaluate_checkpoint_cli(
    weights: Path,
    data_root: Path,
    dataset: str = "market",
    as_json: bool = False,
    flip: bool = True,
    rerank: bool = False,
    device: str = "auto",
    batch_size: int = 128,
) -> dict[str, float]:
    """``reidcam eval``: print a table, or one JSON object (metrics in percent) with ``as_json``."""
    result = evaluate_checkpoint(weights, data_root, dataset, flip, rerank, device, batch_size)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return result
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{weights} on {dataset} ({result['num_query']} queries, {result['num_gallery']} gallery)"
                  + (", flip" if flip else "") + (", re-ranked" if rerank else ""))
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        table.add_column(key, justify="right")
    table.add_row(*(f"{result[key]:.2f}" for key in ("mAP", "rank1", "rank5", "rank10", "mINP")))
    Console().print(table)
    return result
