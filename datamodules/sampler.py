"""The orders in which examples are read.

Training (``ShuffleSampler``, ``LengthGroupedSampler``): a new random order every epoch, drawn from
the sampler's own generator, and cut over the DDP ranks by the sampler itself. Both are stateful as
torchdata's ``RandomSampler``: a ``StatefulDataLoader`` saves the generator state of the epoch and
how many indices were yielded, so a run resumed mid-epoch sees the same batches. They are
``DistributedSampler``s so that Lightning does not wrap them in its ``DistributedSamplerWrapper``,
which re-draws the inner sampler's order at each epoch and keeps no state: a DDP run resumed
mid-epoch got another epoch's order.

``LengthGroupedSampler`` is transformers' ``group_by_length`` (its own index function): batches of
similar length: far fewer padded tokens per epoch.

Evaluation (``LongestFirstSampler``): in order of length, which no score depends on."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


def length_grouped_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """transformers' ``get_length_grouped_indices`` (what the Trainer's ``group_by_length`` uses): a
    random permutation cut into mega-batches of 50 batches, each sorted longest first; the
    longest example goes first, so an out-of-memory shows at step 0."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    # 50 batches per mega-batch, as the Trainer uses on any set of 6,400 rows or more (it shrinks it
    # for small sets, which pads more)
    return get_length_grouped_indices(list(lengths), batch_size, mega_batch_mult=50, generator=generator)


class ShuffleSampler(DistributedSampler):
    """A random permutation every epoch. With several ranks each takes every ``num_replicas``-th
    index of the same order, padded to a multiple by repeating its start (as ``DistributedSampler``)."""

    def __init__(
        self, size: int, generator: torch.Generator | None = None, num_replicas: int = 1, rank: int = 0
    ):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)
        if generator is None:
            # the ranks must draw one order: from seed_everything's seed, which every DDP process
            # gets; in one process from the global RNG, which seed_everything fixes too
            seed = os.environ.get("PL_GLOBAL_SEED") if num_replicas > 1 else None
            if seed is None:
                seed = int(torch.empty((), dtype=torch.int64).random_())
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator

    def epoch_order(self) -> list[int]:
        """All indices, in this epoch's order (moves the generator on)."""
        return torch.randperm(len(self.dataset), generator=self.generator).tolist()

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return _EpochIterator(self)


class LengthGroupedSampler(ShuffleSampler):
    """Yields dataset indices in :func:`length_grouped_order`; a new order every epoch."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        generator: torch.Generator | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(len(lengths), generator, num_replicas, rank)
        self.lengths, self.batch_size = list(lengths), batch_size

    def epoch_order(self) -> list[int]:
        return length_grouped_order(self.lengths, self.batch_size, self.generator)


class _EpochIterator(Iterator[int]):
    """One epoch of a :class:`ShuffleSampler`, this rank's share; ``state_dict`` / ``load_state_dict``
    follow torchdata's ``Stateful`` protocol (the generator state before the epoch's order, and the
    position)."""

    def __init__(self, sampler: ShuffleSampler):
        self.sampler = sampler
        self._start(sampler.generator.get_state(), 0)

    def _start(self, generator_state: torch.Tensor, yielded: int) -> None:
        sampler = self.sampler
        self.generator_state = generator_state
        sampler.generator.set_state(generator_state)
        order = sampler.epoch_order()
        order += order[: sampler.total_size - len(order)]
        self.order = order[sampler.rank : sampler.total_size : sampler.num_replicas]
        self.yielded = yielded

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.yielded == len(self.order):
            raise StopIteration
        self.yielded += 1
        return self.order[self.yielded - 1]

    def state_dict(self) -> dict:
        return {"yielded": self.yielded, "generator": self.generator_state}

    def load_state_dict(self, state: dict) -> None:
        self._start(state["generator"], state["yielded"])


class LongestFirstSampler(Sampler[int]):
    """Evaluation order: longest example first, equal lengths in file order. Batches of one length
    carry almost no padding (MiniLM's tokenizer, batch 32: SST-2 dev 22.8k tokens instead of 42.0k
    in file order, CoNLL-2003 validation 71k instead of 166k), and the longest batch runs first, so an
    ``eval_batch_size`` too large for memory fails at once, not at the end. Metrics do not depend on
    the order; predictions go back to file order by their ``idx``."""

    def __init__(self, lengths: Sequence[int]):
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)
