"""ReIDMamba: a bidirectional-Mamba backbone with class tokens, SIE and the MGFE branch heads.

Layout of the network (defaults of ReIDMamba-S, see docs/reidmamba-method.md 2a, 2b, 2f):

* overlapping patch embedding (16x16 conv, stride 16 or 12), learned patch pos-embed,
  12 class tokens (``cls_token + pos_embed_cls``) interleaved evenly among the patches,
  camera embedding ``sie_lambda * sie_embed[camid]`` added to every token;
* ``depth - branch_depth`` shared bidirectional Mamba blocks (``layers``);
* ``num_branches`` branches (``branches``), each with its own copy of the last blocks and
  final RMSNorm. Branch b >= 1 restarts from the full residual stream, fuses groups of
  g = 2**b consecutive class tokens (max, avg or GeM) and re-interleaves them;
* per branch: a bias-free ``neck`` per class token, flattened and RMS-normalised to the
  branch feature f_b; in training a BNNeck (BN with frozen zero bias + bias-free classifier).

Train mode returns :class:`ReIDOutput`; eval mode returns the L2-normalised concatenation of
the L2-normalised f_b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidcam.errors import ConfigError
from reidcam.reid.model.layers import (
    DropPath,
    MambaBlock,
    RMSNorm,
    add_residual,
    fused_add_rms_norm,
    stochastic_depth_rates,
    use_fused_add_norm,
)
from reidcam.reid.model.tokens import TokenLayout, interleave_layout, patch_grid, regroup_index

FUSIONS = ("max", "avg", "gem")


@dataclass(frozen=True)
class ReIDMambaConfig:
    """Everything that fixes the shape of a ReIDMamba network (saved in checkpoints)."""

    name: str = "reidmamba_small"
    dim: int = 384
    depth: int = 24
    img_size: tuple[int, int] = (256, 128)
    patch_size: int = 16
    stride: int = 16
    in_chans: int = 3
    num_cls_tokens: int = 12
    num_branches: int = 3
    branch_depth: int = 2
    fusion: str = "max"
    cls_reduce: int = 4
    drop_path: float = 0.3
    sie_lambda: float = 3.0
    num_classes: int = 0
    num_cameras: int = 0
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", tuple(int(v) for v in self.img_size))
        problems = self._problems()
        if problems:
            raise ConfigError(f"invalid ReIDMamba config: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        problems = []
        groups = 2 ** (self.num_branches - 1)
        if self.num_branches < 1 or self.num_cls_tokens % groups:
            problems.append(f"num_cls_tokens={self.num_cls_tokens} must be divisible by 2**(num_branches-1)={groups}")
        if not 1 <= self.branch_depth <= self.depth:
            problems.append(f"branch_depth={self.branch_depth} must be in [1, depth={self.depth}]")
        if self.fusion not in FUSIONS:
            problems.append(f"fusion={self.fusion!r} must be one of {FUSIONS}")
        if self.dim % self.cls_reduce:
            problems.append(f"dim={self.dim} must be divisible by cls_reduce={self.cls_reduce}")
        if len(self.img_size) != 2 or min(self.img_size) < self.patch_size:
            problems.append(f"img_size={self.img_size} must be (height, width), each >= patch_size")
        if self.num_classes < 0 or self.num_cameras < 0:
            problems.append("num_classes and num_cameras must be >= 0")
        return problems

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReIDMambaConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ReIDMamba config keys: {', '.join(unknown)}")
        return cls(**values)

    @property
    def grid(self) -> tuple[int, int]:
        return patch_grid(self.img_size, self.patch_size, self.stride)

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def feature_dim(self) -> int:
        """Length of one branch feature f_b: num_cls_tokens * dim / cls_reduce (1152 for small)."""
        return self.num_cls_tokens * self.dim // self.cls_reduce

    @property
    def embed_dim(self) -> int:
        return self.num_branches * self.feature_dim


PRESETS: dict[str, dict[str, Any]] = {
    "reidmamba_tiny": {"dim": 192, "depth": 24},
    "reidmamba_small": {"dim": 384, "depth": 24},
    "reidmamba_base": {"dim": 768, "depth": 24},
}


@dataclass
class ReIDOutput:
    """What the model returns in train mode: per-branch pre-BN features and BNNeck logits."""

    features: list[Tensor]
    logits: list[Tensor] | None = field(default=None)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a (patch x patch) conv with stride <= patch, raster order."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride)
        fan_in = in_chans * patch_size * patch_size
        nn.init.trunc_normal_(self.proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.proj.bias)

    def forward(self, images: Tensor) -> Tensor:
        if images.is_cuda and not torch.onnx.is_in_onnx_export():
            return self.as_matmul(images)
        return self.proj(images).flatten(2).transpose(1, 2)

    def as_matmul(self, images: Tensor) -> Tensor:
        """The same conv as patches (strided views, one copy) times the flattened kernel. On a GPU cuDNN ran
        this 3-channel, 16x16 conv as a generic implicit GEMM: 1.05 ms of a 22-ms forward at batch 256
        (BENCHMARKS.md, session 5). F.unfold is no substitute: on CUDA it loops over the batch."""
        kernel, stride = self.proj.kernel_size[0], self.proj.stride[0]
        if torch.is_autocast_enabled(images.device.type):
            images = images.to(torch.get_autocast_dtype(images.device.type))  # copy half the bytes below
        windows = images.unfold(2, kernel, stride).unfold(3, kernel, stride)  # (B, C, rows, cols, k, k)
        patches = windows.permute(0, 2, 3, 1, 4, 5).flatten(1, 2).flatten(2)  # (B, tokens, C*k*k)
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


class TokenFusion(nn.Module):
    """Pools groups of ``group`` consecutive class tokens into one: max, avg or GeM (learnable p)."""

    def __init__(self, group: int, kind: str) -> None:
        super().__init__()
        self.group = group
        self.kind = kind
        self.p = nn.Parameter(torch.tensor(3.0)) if kind == "gem" else None

    def forward(self, tokens: Tensor) -> Tensor:
        batch, count, dim = tokens.shape
        grouped = tokens.reshape(batch, count // self.group, self.group, dim)
        if self.kind == "max":
            return grouped.amax(dim=2)
        if self.kind == "avg":
            return grouped.mean(dim=2)
        return grouped.clamp(min=1e-6).pow(self.p).mean(dim=2).pow(1.0 / self.p)


class Branch(nn.Module):
    """One MGFE branch: its blocks, final norm, token fusion (b >= 1), reduce head and BNNeck."""

    def __init__(self, config: ReIDMambaConfig, index: int, drop_rates: list[float]) -> None:
        super().__init__()
        group = 2**index
        dim = config.dim
        self.fusion = TokenFusion(group, config.fusion) if index > 0 else None
        self.layers = nn.ModuleList(
            MambaBlock(dim, rate, config.depth, config.norm_eps, **_mixer_kwargs(config)) for rate in drop_rates
        )
        self.norm_f = RMSNorm(dim, config.norm_eps)
        self.fused_add_norm: bool | None = None  # as MambaBlock.fused_add_norm, for the final add + norm_f
        self.neck = nn.Linear(dim, dim // config.cls_reduce * group, bias=False)
        nn.init.trunc_normal_(self.neck.weight, std=0.02)
        self.feat_norm = RMSNorm(config.feature_dim, config.norm_eps)
        self.bottleneck: nn.BatchNorm1d | None = None
        self.classifier: nn.Linear | None = None
        self.reset_classifier(config.num_classes, config.feature_dim)

    def reset_classifier(self, num_classes: int, feature_dim: int) -> None:
        """(Re)create the BNNeck: BN(weight 1, bias 0 frozen) + Linear(no bias, N(0, 0.001)); none if 0 classes."""
        if num_classes <= 0:
            self.bottleneck, self.classifier = None, None
            return
        self.bottleneck = nn.BatchNorm1d(feature_dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, hidden: Tensor, residual: Tensor | None, final_drop: DropPath, cls_index: Tensor) -> Tensor:
        """Runs the blocks and the head; returns the branch feature f_b (B, feature_dim)."""
        for block in self.layers:
            hidden, residual = block(hidden, residual)
        scan_backend = self.layers[0].mixer.scan_backend if len(self.layers) else None
        if use_fused_add_norm(self.fused_add_norm, scan_backend, hidden):
            # fp32 out, as norm_f gives on the fp32 stream
            tokens, _ = fused_add_rms_norm(hidden, residual, final_drop, self.norm_f, out_dtype=torch.float32)
        else:
            tokens = self.norm_f(add_residual(hidden, residual, final_drop))
        cls_tokens = tokens.index_select(1, cls_index)
        return self.feat_norm(self.neck(cls_tokens).flatten(1))

    def logits(self, feature: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(feature))


def _mixer_kwargs(config: ReIDMambaConfig) -> dict[str, int]:
    return {"d_state": config.d_state, "d_conv": config.d_conv, "expand": config.expand}


class ReIDMamba(nn.Module):
    """The ReIDMamba network; build one with :func:`build_model`."""

    def __init__(self, config: ReIDMambaConfig) -> None:
        super().__init__()
        self.config = config
        dim, num_cls = config.dim, config.num_cls_tokens
        self.patch_embed = PatchEmbed(config.in_chans, dim, config.patch_size, config.stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, num_cls, dim))
        self.pos_embed_cls = nn.Parameter(torch.zeros(1, num_cls, dim))
        for tensor in (self.pos_embed, self.cls_token, self.pos_embed_cls):
            nn.init.trunc_normal_(tensor, std=0.02)
        self.sie_embed = self._make_sie(config.num_cameras, dim)
        rates = stochastic_depth_rates(config.depth, config.drop_path)
        shared = config.depth - config.branch_depth
        mixer_kw = _mixer_kwargs(config)
        self.layers = nn.ModuleList(
            MambaBlock(dim, rates[i], config.depth, config.norm_eps, **mixer_kw) for i in range(shared)
        )
        self.drop_path = DropPath(config.drop_path)
        self.branches = nn.ModuleList(Branch(config, b, rates[shared:]) for b in range(config.num_branches))
        self._register_layouts(config)

    @staticmethod
    def _make_sie(num_cameras: int, dim: int) -> nn.Parameter | None:
        if num_cameras <= 0:
            return None
        sie = nn.Parameter(torch.zeros(num_cameras, 1, dim))
        nn.init.trunc_normal_(sie, std=0.02)
        return sie

    def _register_layouts(self, config: ReIDMambaConfig) -> None:
        """Precomputes, per branch, the gather indices of the sequence and of its class tokens."""
        base = interleave_layout(config.num_patches, config.num_cls_tokens)
        self.layouts: list[TokenLayout] = []
        self.register_buffer("interleave_index", _long(base.gather_index()), persistent=False)
        for b in range(config.num_branches):
            layout = interleave_layout(config.num_patches, config.num_cls_tokens // 2**b)
            self.layouts.append(layout)
            self.register_buffer(f"cls_index_{b}", _long(layout.cls_positions), persistent=False)
            if b > 0:
                self.register_buffer(f"regroup_index_{b}", _long(regroup_index(base, layout)), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def set_scan_backend(self, backend: str | None) -> None:
        """Selective-scan backend for every mixer (None: env ``REIDCAM_SCAN``, else auto)."""
        for module in self.modules():
            if hasattr(module, "scan_backend"):
                module.scan_backend = backend

    def set_fused_add_norm(self, enabled: bool | None) -> None:
        """Fused Triton add+RMSNorm in every block and branch: None = auto (CUDA + "triton" scan backend)."""
        for module in self.modules():
            if hasattr(module, "fused_add_norm"):
                module.fused_add_norm = enabled

    def reset_classifier(self, num_classes: int) -> None:
        """New BNNeck classifiers for ``num_classes`` identities (0 removes them)."""
        self.config = replace(self.config, num_classes=num_classes)
        for branch in self.branches:
            branch.reset_classifier(num_classes, self.config.feature_dim)
        self.to(self.pos_embed.device)

    def forward(self, images: Tensor, camids: Tensor | None = None) -> ReIDOutput | Tensor:
        """Train mode: :class:`ReIDOutput`; eval mode: (N, embed_dim) unit-norm embeddings.

        ``camids`` (N,) selects the SIE camera embedding; None, or a negative entry, means an
        unseen camera and adds no camera embedding.
        """
        features = self.branch_features(images, camids)
        if not self.training:
            return _embedding(features)
        logits = None
        if self.config.num_classes > 0:
            logits = [branch.logits(f) for branch, f in zip(self.branches, features)]
        return ReIDOutput(features=features, logits=logits)

    @torch.no_grad()
    def embed(self, images: Tensor, camids: Tensor | None = None, flip: bool = True) -> Tensor:
        """Eval embedding; with ``flip`` averaged with the mirrored image's and re-normalised."""
        features = self.branch_features(images, camids)
        embedding = _embedding(features)
        if flip:
            mirrored = _embedding(self.branch_features(images.flip(-1), camids))
            embedding = F.normalize(embedding + mirrored, dim=1)
        return embedding

    def branch_features(self, images: Tensor, camids: Tensor | None = None) -> list[Tensor]:
        """The pre-BN branch features f_b, each (N, feature_dim)."""
        hidden = self._embed_tokens(images, camids)
        residual = None
        for block in self.layers:
            hidden, residual = block(hidden, residual)
        features = []
        for b, branch in enumerate(self.branches):
            cls_index = getattr(self, f"cls_index_{b}")
            if b == 0:
                features.append(branch(hidden, residual, self.drop_path, cls_index))
                continue
            stream = add_residual(hidden, residual, self.drop_path)
            regrouped = self._regroup(stream, branch, b)
            features.append(branch(regrouped, None, self.drop_path, cls_index))
        return features

    def _embed_tokens(self, images: Tensor, camids: Tensor | None) -> Tensor:
        expected = tuple(self.config.img_size)
        if tuple(images.shape[-2:]) != expected:
            raise ValueError(f"expected images of size {expected}, got {tuple(images.shape[-2:])}")
        patches = self.patch_embed(images) + self.pos_embed
        cls = (self.cls_token + self.pos_embed_cls).expand(images.shape[0], -1, -1).to(patches.dtype)
        tokens = torch.cat([patches, cls], dim=1).index_select(1, self.interleave_index)
        if camids is not None and self.sie_embed is not None:
            tokens = tokens + self.config.sie_lambda * self._camera_embedding(camids).to(tokens.dtype)
        return tokens

    def _camera_embedding(self, camids: Tensor) -> Tensor:
        camids = camids.to(self.sie_embed.device, torch.long)
        # the check reads the indices on the host, which a CUDA graph capture cannot do (the
        # embedder, the one capturer, maps unknown cameras to -1 beforehand)
        if not _capturing(camids) and (camids >= self.sie_embed.shape[0]).any():
            raise ValueError(f"camera index >= num_cameras={self.sie_embed.shape[0]}")
        known = (camids >= 0).to(self.sie_embed.dtype)[:, None, None]
        return self.sie_embed[camids.clamp(min=0)] * known

    def _regroup(self, stream: Tensor, branch: Branch, index: int) -> Tensor:
        """Fuses the class tokens of the full stream in groups and re-interleaves them."""
        cls_tokens = stream.index_select(1, self.cls_index_0)
        fused = branch.fusion(cls_tokens)
        return torch.cat([stream, fused], dim=1).index_select(1, getattr(self, f"regroup_index_{index}"))


def _embedding(features: list[Tensor]) -> Tensor:
    parts = [F.normalize(f.float(), dim=1) for f in features]
    return F.normalize(torch.cat(parts, dim=1), dim=1)


def _capturing(tensor: Tensor) -> bool:
    """True while a CUDA graph is being captured on the tensor's device."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _long(values) -> Tensor:
    return torch.tensor(list(values), dtype=torch.long)


def build_model(name: str, num_classes: int = 0, num_cameras: int = 0, **overrides: Any) -> ReIDMamba:
    """A ReIDMamba network by preset name ("reidmamba_tiny" | "_small" | "_base") and config overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown ReID model {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], **overrides, "name": name, "num_classes": num_classes, "num_cameras": num_cameras}
    return ReIDMamba(ReIDMambaConfig.from_dict(values))
