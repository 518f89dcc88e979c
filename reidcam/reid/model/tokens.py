"""Where the class tokens sit in the token sequence (Mamba(R) "register" layout), as indices.

With N patch tokens and n class tokens, L = N // (n + 1) and the sequence is
``[L patches, cls_0, L patches, cls_1, ..., L patches, cls_{n-1}, the remaining patches]``,
so class token k sits at position ``L + k (L + 1)``. Everything here is computed once per
configuration; the model then moves tokens around with one gather instead of concatenations.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    """Positions of the class and patch tokens in a sequence of ``length`` tokens."""

    num_patches: int
    num_cls: int
    cls_positions: tuple[int, ...]
    patch_positions: tuple[int, ...]

    @property
    def length(self) -> int:
        return self.num_patches + self.num_cls

    def gather_index(self) -> list[int]:
        """Index into ``cat([patches, cls_tokens])`` (patches first) that yields this sequence."""
        index = [0] * self.length
        for patch, position in enumerate(self.patch_positions):
            index[position] = patch
        for k, position in enumerate(self.cls_positions):
            index[position] = self.num_patches + k
        return index


def interleave_layout(num_patches: int, num_cls: int) -> TokenLayout:
    """The even-interleave layout of ``num_cls`` class tokens among ``num_patches`` patches."""
    if num_patches < 1 or num_cls < 1:
        raise ValueError(f"need patches and class tokens, got {num_patches} and {num_cls}")
    spacing = num_patches // (num_cls + 1)
    cls_positions = tuple(spacing + k * (spacing + 1) for k in range(num_cls))
    taken = set(cls_positions)
    patch_positions = tuple(p for p in range(num_patches + num_cls) if p not in taken)
    return TokenLayout(num_patches, num_cls, cls_positions, patch_positions)


def regroup_index(source: TokenLayout, target: TokenLayout) -> list[int]:
    """Index into ``cat([source_sequence, fused_cls])`` that yields the ``target`` sequence.

    The patch tokens keep their raster order; the ``target.num_cls`` fused class tokens are
    appended after the source sequence and spread evenly by the target layout.
    """
    if source.num_patches != target.num_patches:
        raise ValueError("source and target layouts must have the same patches")
    index = [0] * target.length
    for source_pos, target_pos in zip(source.patch_positions, target.patch_positions):
        index[target_pos] = source_pos
    for k, target_pos in enumerate(target.cls_positions):
        index[target_pos] = source.length + k
    return index


def patch_grid(img_size: tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of the overlapping patch embedding: ((H - p) // s + 1, (W - p) // s + 1)."""
    height, width = img_size
    rows, cols = (height - patch_size) // stride + 1, (width - patch_size) // stride + 1
    if rows < 1 or cols < 1:
        raise ValueError(f"image {img_size} is smaller than one {patch_size}px patch")
    return rows, cols
