"""``reidcam train``: the ReIDMamba training loop (method doc, sections 2d-2f).

SGD with per-iteration warm-up then per-epoch cosine, P x K batches, triplet + label-smoothed
CE + RATR, AMP on CUDA (bf16, or fp16 with a GradScaler starting at 2**10), gradient-norm
clipping, periodic evaluation and checkpoints. Under ``torchrun`` every process trains one
replica (DistributedDataParallel; each iteration's identities are split over the ranks) and only
rank 0 writes files. Outputs in OUT/:

* ``last.pt``: the model (``save_reid_checkpoint``; extra = dataset, num_cameras, camera_labels,
  recipe, epoch), loadable by ``reidcam eval`` and the embedder;
* ``train_state.pt``: optimizer, schedule, scaler and epoch, for ``--resume``;
* ``metrics.json``: mAP, rank1, rank5, rank10, mINP (percent) of the final evaluation;
* ``log.jsonl``: one JSON object per epoch; ``tensorboard/``: the same as event files;
* ``recipe.yaml``: the recipe as run, overrides applied.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from reidcam.errors import ConfigError, ReidcamError
from reidcam.reid.data import (
    CameraLook, EpochStream, ImageDataset, PKSampler, ReIDDataset, build_train_transform, load_dataset,
)
from reidcam.reid.engine.config import Recipe, load_recipe
from reidcam.reid.engine.distributed import (
    DistributedContext,
    average_across_processes,
    barrier,
    init_distributed,
    shutdown,
)
from reidcam.reid.engine.evaluate import evaluate_model
from reidcam.reid.engine.graphed_step import GraphedStep, graphs_usable
from reidcam.reid.engine.optim import build_optimizer, build_schedule
from reidcam.reid.engine.progress import EpochProgress
from reidcam.reid.engine.run_log import RunLog
from reidcam.reid.losses import ReIDMambaLoss

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "triplet", "id", "ratr_intra", "ratr_inter")
FP16_INITIAL_SCALE = 2.0**10


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the augmentation / drop-path randomness of one epoch on one rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: none on the CPU; ``auto`` is bf16 where the GPU supports it, else fp16."""
    if device.type != "cuda" or setting == "none":
        return None
    if setting == "fp16" or (setting == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def configure_determinism(deterministic: bool) -> None:
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def build_training_model(recipe: Recipe, num_classes: int, num_cameras: int) -> nn.Module:
    from reidcam.reid.model import build_model

    section = recipe.model
    try:
        model = build_model(
            section.name, num_classes=num_classes, num_cameras=num_cameras,
            img_size=tuple(section.img_size), stride=section.stride, **section.options,
        )
    except (TypeError, KeyError, ValueError) as error:
        raise ConfigError(f"model section of the recipe is not usable: {error}") from error
    if section.pretrained:
        from reidcam.reid.model.checkpoint import load_pretrained_backbone

        pretrained = Path(section.pretrained).expanduser()
        if not pretrained.is_file():
            raise ConfigError(f"model.pretrained: {pretrained} does not exist")
        load_pretrained_backbone(model, pretrained)
    if section.init_from:
        initialise_from_checkpoint(model, init_checkpoint_path(section.init_from))
    return model


def init_checkpoint_path(init_from: str) -> Path:
    """``model.init_from`` as a path: "shipped" names the weights reidcam ships."""
    from reidcam.weights import DEFAULT_REID_WEIGHTS, SHIPPED_WEIGHTS_ALIAS

    return DEFAULT_REID_WEIGHTS if init_from == SHIPPED_WEIGHTS_ALIAS else Path(init_from).expanduser()


def initialise_from_checkpoint(model: nn.Module, checkpoint: Path) -> list[str]:
    """Copy every tensor of a reidcam checkpoint whose name and shape match; returns those skipped.

    Classifiers are always skipped (their rows belong to the old identities); so are tensors whose
    shape changed, such as the camera embedding of a dataset with another number of cameras. A
    camera embedding not taken from the checkpoint starts at zero: a random one would add a
    different offset per camera to every token and undo what the checkpoint learnt (the shipped
    weights, trained without one, fell from 68 to 15 mAP on held-out people that way).
    """
    from reidcam.reid.model.checkpoint import load_reid_checkpoint

    if not checkpoint.is_file():
        raise ConfigError(f"model.init_from: {checkpoint} does not exist")
    source, _extra = load_reid_checkpoint(checkpoint, map_location="cpu")
    target_state = model.state_dict()
    copied, skipped = {}, []
    for name, tensor in source.state_dict().items():
        if "classifier" in name or name not in target_state or target_state[name].shape != tensor.shape:
            skipped.append(name)
        else:
            copied[name] = tensor
    model.load_state_dict(copied, strict=False)
    sie = getattr(model, "sie_embed", None)
    if sie is not None and "sie_embed" not in copied:
        with torch.no_grad():
            sie.zero_()
    log.info("initialised %d tensors from %s; kept fresh: %s", len(copied), checkpoint, ", ".join(skipped) or "none")
    return skipped


def _atomic_torch_save(obj: Any, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


class Trainer:
    """One training run; ``fit()`` trains, evaluates, writes OUT/ and returns the final metrics."""

    def __init__(
        self,
        recipe: Recipe,
        data_root: Path,
        output: Path,
        device: torch.device,
        context: DistributedContext,
        resume: bool = False,
    ) -> None:
        self.recipe, self.output, self.device, self.context = recipe, output, device, context
        self.dataset: ReIDDataset = load_dataset(recipe.data.dataset, data_root)
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
        configure_determinism(recipe.train.deterministic)
        torch.manual_seed(recipe.train.seed)
        self.model = build_training_model(recipe, self.dataset.num_train_pids, self.dataset.num_cameras).to(device)
        self.sampler = PKSampler(
            [s.pid for s in self.dataset.train], recipe.data.p, recipe.data.k, recipe.train.seed,
            context.rank, context.world_size,
        )
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.schedule = build_schedule(self.optimizer, recipe.optim, recipe.train.epochs, self._iterations(0))
        self.amp_dtype = resolve_amp(recipe.train.amp, device)
        self.scaler = torch.amp.GradScaler(
            "cuda", init_scale=FP16_INITIAL_SCALE, enabled=self.amp_dtype == torch.float16
        )
        self.criterion = ReIDMambaLoss(
            label_smoothing=recipe.loss.label_smoothing, triplet_margin=recipe.loss.triplet_margin,
            ratr_temperature=recipe.loss.ratr_temperature, ratr_intra_weight=recipe.loss.ratr_intra_weight,
            ratr_inter_weight=recipe.loss.ratr_inter_weight, triplet_weight=recipe.loss.triplet_weight,
            id_weight=recipe.loss.id_weight,
        )
        self.start_epoch = self._resume() if resume else 0
        # one loader over the epochs still to run, its iterator made at the first epoch's start (_epoch_batches)
        self._batch_iterator: Iterator | None = None
        self._next_epoch: int | None = None
        self.network = self._wrap(self.model)
        self.forward_backward = self._graphed_step()
        self.run_log = RunLog(output) if context.is_main else None
        self.last_eval: dict[str, float] | None = None

    def _train_loader(self, epochs: range) -> DataLoader:
        section = self.recipe.data
        look = CameraLook(jitter=section.look_jitter, blur_p=section.look_blur_p, lowres_p=section.look_lowres_p)
        transform = build_train_transform(
            self.recipe.model.img_size, pad=section.pad, flip_p=section.flip_p, erasing_p=section.erasing_p, look=look
        )
        return DataLoader(
            ImageDataset(self.dataset.train, transform),
            batch_size=self.sampler.local_batch_size,
            sampler=EpochStream(self.sampler, epochs, self._iterations),
            num_workers=section.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )

    def _epoch_batches(self, epoch: int, iterations: int) -> Iterator:
        """The ``iterations`` batches of ``epoch``: the next ones of the stream made for the epochs from the first
        trained on."""
        if self._batch_iterator is None or epoch != self._next_epoch:
            self._batch_iterator = iter(self._train_loader(range(epoch, self.recipe.train.epochs)))
        self._next_epoch = epoch + 1
        return itertools.islice(self._batch_iterator, iterations)

    def _iterations(self, epoch: int) -> int:
        cap = self.recipe.train.max_iters_per_epoch
        batches = self.sampler.batches_in(epoch)
        return min(batches, cap) if cap else batches

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.context.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=self.recipe.train.find_unused_parameters
        )

    def _graphed_step(self) -> GraphedStep:
        why_not = graphs_usable(self.device, self.context.enabled)
        if self.recipe.train.cuda_graphs and why_not is not None and self.device.type == "cuda":
            log.info("train.cuda_graphs: the step runs eagerly (%s)", why_not)
        enabled = self.recipe.train.cuda_graphs and why_not is None
        return GraphedStep(self._forward_backward_body, list(self.model.parameters()), enabled=enabled)

    # ----------------------------------------------------------------------------------- state
    def _resume(self) -> int:
        from reidcam.reid.model.checkpoint import load_reid_checkpoint

        checkpoint, state_path = self.output / "last.pt", self.output / "train_state.pt"
        if not checkpoint.is_file() or not state_path.is_file():
            raise ReidcamError(f"--resume: {checkpoint} and {state_path} are needed; train without --resume first")
        saved_model, _extra = load_reid_checkpoint(checkpoint, map_location="cpu")
        self.model.load_state_dict(saved_model.state_dict())
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        log.info("resuming after epoch %d from %s", state["epoch"], checkpoint)
        return int(state["epoch"])

    def save_checkpoint(self, epochs_done: int) -> None:
        from reidcam.reid.model.checkpoint import save_reid_checkpoint

        extra = {
            "dataset": self.dataset.name,
            "num_cameras": self.dataset.num_cameras,
            "camera_labels": list(self.dataset.cameras),
            "num_classes": self.dataset.num_train_pids,
            "recipe": self.recipe.model_dump(mode="json"),
            "epoch": epochs_done,
        }
        save_reid_checkpoint(self.output / "last.pt", self.model, extra=extra)
        _atomic_torch_save(
            {
                "epoch": epochs_done,
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
            },
            self.output / "train_state.pt",
        )

    # ------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int, progress: EpochProgress) -> dict[str, float]:
        """One epoch; returns the mean loss components (over iterations and ranks) and throughput."""
        iterations = self._iterations(epoch)
        # before the seed: making a loader's iterator draws from torch's generator, which only the first epoch does
        batches = self._epoch_batches(epoch, iterations)
        torch.manual_seed(epoch_seed(self.recipe.train.seed, epoch, self.context.rank))
        self.network.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        progress.start_epoch(epoch + 1, self.recipe.train.epochs, iterations)
        sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        images_seen, started = 0, time.perf_counter()
        for step, (images, labels, camids) in enumerate(batches, start=1):
            sums += self.train_step(images, labels, camids)
            images_seen += images.shape[0] * self.context.world_size
            if progress.wants_values(step):
                current = (sums[0] / step).item()
                if not np.isfinite(current):
                    raise ReidcamError(f"training diverged: loss is {current} at epoch {epoch + 1}, iteration "
                                       f"{step}; lower optim.lr or use train.amp=bf16")
                rate = images_seen / max(time.perf_counter() - started, 1e-9)
                progress.update(step, current, self.schedule.lr, rate)
                if self.run_log is not None:
                    self.run_log.iteration(self.schedule.iteration, {"loss": current, "lr": self.schedule.lr})
            else:
                progress.update(step, None, self.schedule.lr, 0.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        means = average_across_processes(sums / max(iterations, 1), self.context).tolist()
        record = {key: value for key, value in zip(LOSS_KEYS, means)}
        record.update(iterations=iterations, seconds=seconds, images_per_s=images_seen / max(seconds, 1e-9))
        if self.device.type == "cuda":
            record["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return record

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward (a CUDA graph where it can be), clip, step; returns the detached loss components."""
        # all three without a host sync (the loader pins its batches): a blocking copy waited every step for the last
        # step's GPU work, whose next launch then waited for this process, which shares the cores with the loader's
        # workers (2,273 -> 2,323 images/s, BENCHMARKS.md session 16)
        images, labels, camids = (t.to(self.device, non_blocking=True) for t in (images, labels, camids))
        components = self.forward_backward(images, labels, camids)
        if self.recipe.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step_iteration()
        return components

    def _forward_backward_body(self, images: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        """What ``forward_backward`` runs or replays: the loss components, gradients left in the parameters."""
        if self.amp_dtype is not None:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                output = self.network(images, camids)
        else:
            output = self.network(images, camids)
        losses = self.criterion(output.features, output.logits, labels)
        self.scaler.scale(losses["loss"]).backward()
        return torch.stack([losses[key].detach().float() for key in LOSS_KEYS])

    def evaluate(self) -> dict[str, float]:
        return evaluate_model(
            self.model, self.dataset, self.recipe.model.img_size, self.device,
            batch_size=self.recipe.data.test_batch_size, flip=self.recipe.train.flip_test,
            num_workers=self.recipe.data.num_workers, amp_dtype=self.amp_dtype,
        )

    def _should(self, every: int, epochs_done: int) -> bool:
        return epochs_done == self.recipe.train.epochs or (every > 0 and epochs_done % every == 0)

    def fit(self) -> dict[str, float]:
        train = self.recipe.train
        if self.context.is_main:
            as_run = yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False)
            (self.output / "recipe.yaml").write_text(as_run)
            log.info("training %s on %s: %d ids, %d cameras, %d iterations/epoch, %d epochs, device %s%s",
                     self.recipe.model.name, self.dataset.name, self.dataset.num_train_pids,
                     self.dataset.num_cameras, self._iterations(0), train.epochs, self.device,
                     f", {self.context.world_size} processes" if self.context.enabled else "")
        progress = EpochProgress(self.context.is_main, train.log_every)
        try:
            for epoch in range(self.start_epoch, train.epochs):
                stats = self.train_epoch(epoch, progress)
                record = {"epoch": epoch + 1, "lr": self.schedule.lr, **stats}
                self.schedule.step_epoch()
                self._after_epoch(epoch + 1, record)
        finally:
            progress.close()
        if self.last_eval is None or self.last_eval.get("epoch") != train.epochs:
            self._final_evaluation()
        barrier(self.context)
        if self.run_log is not None:
            self.run_log.close()
        return {k: v for k, v in (self.last_eval or {}).items() if k != "epoch"}

    def _after_epoch(self, epochs_done: int, record: dict[str, Any]) -> None:
        if self.context.is_main:
            if self._should(self.recipe.train.eval_every, epochs_done):
                record["eval"] = self.evaluate()
                self.last_eval = {**record["eval"], "epoch": epochs_done}
            scores = record.get("eval")
            log.info("epoch %d: loss %.4f (triplet %.4f id %.4f intra %.4f inter %.4f) lr %.2e %.0f img/s%s",
                     epochs_done, record["loss"], record["triplet"], record["id"], record["ratr_intra"],
                     record["ratr_inter"], record["lr"], record["images_per_s"],
                     f" mAP {scores['mAP']:.2f} rank1 {scores['rank1']:.2f}" if scores else "")
            self.run_log.epoch(record)
            if self._should(self.recipe.train.checkpoint_every, epochs_done):
                self.save_checkpoint(epochs_done)
            if "eval" in record and epochs_done == self.recipe.train.epochs:
                self._write_metrics(record["eval"], epochs_done)
        barrier(self.context)

    def _final_evaluation(self) -> None:
        """Evaluate and write metrics.json when the last epoch did not (e.g. a resumed finished run)."""
        if self.context.is_main:
            result = self.evaluate()
            self.last_eval = {**result, "epoch": self.recipe.train.epochs}
            if not (self.output / "last.pt").is_file():
                self.save_checkpoint(self.recipe.train.epochs)
            self._write_metrics(result, self.recipe.train.epochs)

    def _write_metrics(self, result: dict[str, float], epochs_done: int) -> None:
        payload = {**result, "epoch": epochs_done, "dataset": self.dataset.name, "flip": self.recipe.train.flip_test}
        (self.output / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")


def train_from_recipe(
    config: Path,
    data_root: Path,
    output: Path,
    epochs: int | None = None,
    device: str = "auto",
    resume: bool = False,
    overrides: Sequence[str] = (),
) -> dict[str, float]:
    """``reidcam train``: load the recipe (+ overrides), train, write OUT/, return the final metrics (percent)."""
    recipe = load_recipe(config, list(overrides or ()))
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs must be positive, got {epochs}")
        recipe.train.epochs = epochs
    context, target = init_distributed(device)
    try:
        trainer = Trainer(recipe, Path(data_root), Path(output), target, context, resume)
        return trainer.fit()
    finally:
        shutdown(context)
