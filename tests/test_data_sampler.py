"""The P x K identity sampler, plain and distributed."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from reidcam.errors import ConfigError
from reidcam.reid.data import EpochStream, PKSampler

# 12 identities with 1..12 images each (dataset index -> pid)
PIDS = [pid for pid in range(12) for _ in range(pid + 1)]


def batches(sampler: PKSampler) -> list[list[int]]:
    indices = list(sampler)
    size = sampler.local_batch_size
    assert len(indices) % size == 0 and len(indices) == len(sampler)
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def test_batches_are_p_identities_of_k_consecutive_images():
    sampler = PKSampler(PIDS, p=4, k=3, seed=1)
    result = batches(sampler)
    assert len(result) == sampler.batches_per_epoch > 0
    for batch in result:
        labels = [PIDS[i] for i in batch]
        groups = [labels[j:j + 3] for j in range(0, 12, 3)]
        assert all(len(set(group)) == 1 for group in groups)
        assert len({group[0] for group in groups}) == 4


def test_images_are_drawn_without_replacement_except_for_small_identities():
    sampler = PKSampler(PIDS, p=4, k=3, seed=2)
    counts = Counter(list(sampler))
    for index, count in counts.items():
        if PIDS.count(PIDS[index]) >= 3:
            assert count == 1
    per_identity = Counter(PIDS[i] for i in sampler)
    for pid, used in per_identity.items():
        assert used <= max(PIDS.count(pid), 3) // 3 * 3


def test_identities_with_fewer_than_k_images_are_filled_with_replacement():
    pids = [0] + [1, 1, 1, 1] + [2, 2, 2, 2]
    sampler = PKSampler(pids, p=3, k=4, seed=0)
    batch = list(sampler)
    assert batch.count(0) == 4 and len(batch) == 12


def test_order_depends_only_on_seed_and_epoch():
    first, second = PKSampler(PIDS, 4, 2, seed=5), PKSampler(PIDS, 4, 2, seed=5)
    assert list(first) == list(second)
    first.set_epoch(1)
    assert list(first) != list(second)
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(PKSampler(PIDS, 4, 2, seed=6)) != list(PKSampler(PIDS, 4, 2, seed=5))


@pytest.mark.parametrize("epoch", [0, 3])
def test_distributed_ranks_split_each_batch_into_disjoint_identity_shares(epoch):
    plain = PKSampler(PIDS, p=4, k=2, seed=9)
    ranks = [PKSampler(PIDS, p=4, k=2, seed=9, rank=r, world_size=2) for r in range(2)]
    for sampler in (plain, *ranks):
        sampler.set_epoch(epoch)
    plain_batches = batches(plain)
    rank_batches = [batches(sampler) for sampler in ranks]
    assert all(len(b) == len(plain_batches) for b in rank_batches)
    for step, full in enumerate(plain_batches):
        first, second = rank_batches[0][step], rank_batches[1][step]
        assert {PIDS[i] for i in first}.isdisjoint({PIDS[i] for i in second})
        assert first + second == full


def test_one_process_distributed_equals_plain():
    assert list(PKSampler(PIDS, 4, 2, seed=3, rank=0, world_size=1)) == list(PKSampler(PIDS, 4, 2, seed=3))


def test_invalid_settings():
    with pytest.raises(ConfigError, match="cannot be split over 3"):
        PKSampler(PIDS, p=4, k=2, world_size=3)
    with pytest.raises(ConfigError, match="fewer than P=16"):
        PKSampler(PIDS, p=16, k=2)


def test_epoch_length_on_a_market_sized_identity_distribution():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 40, size=751)
    pids = np.repeat(np.arange(751), sizes).tolist()
    sampler = PKSampler(pids, p=16, k=4)
    chunks = sum(max(s, 4) // 4 for s in sizes)
    assert chunks // 16 - 40 <= sampler.batches_per_epoch <= chunks // 16


def epoch_batches(sampler: PKSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return batches(sampler)


def test_a_stream_of_epochs_yields_each_epoch_cut_to_its_batches():
    sampler = PKSampler(PIDS, p=4, k=2, seed=4)
    cap = {2: 1, 3: 99}  # epoch 2 cut to its first batch; epoch 3's cap above its count
    stream = EpochStream(sampler, range(2, 5), lambda e: min(sampler.batches_in(e), cap.get(e, 99)))
    expected = [epoch_batches(sampler, 2)[:1], epoch_batches(sampler, 3), epoch_batches(sampler, 4)]
    assert len(expected[1]) > 1 and expected[1] != expected[2]
    indices = list(stream)
    assert indices == [i for epoch in expected for batch in epoch for i in batch]
    assert len(stream) == len(indices)


def test_a_loader_over_the_stream_gives_each_epoch_its_batches_from_one_iterator():
    """Two worker processes fetch ahead across the epochs' boundaries; each epoch still gets exactly its batches."""
    sampler = PKSampler(PIDS, p=4, k=2, seed=8)
    epochs = range(0, 3)
    loader = DataLoader(list(range(len(PIDS))), batch_size=sampler.local_batch_size, num_workers=2,
                        sampler=EpochStream(sampler, epochs, sampler.batches_in), drop_last=True)
    iterator = iter(loader)
    for epoch in epochs:
        got = [batch.tolist() for batch in itertools.islice(iterator, sampler.batches_in(epoch))]
        assert got == epoch_batches(sampler, epoch)
    assert next(iterator, None) is None
