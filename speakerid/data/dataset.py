"""Training dataset and sampler.

The sampler owns all randomness of the data order: it yields (index, crop_seed) pairs from a generator
seeded by (seed, epoch), so crops do not depend on the number of loader workers, and a run resumed in
the middle of an epoch sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from speakerid.config import BAD_AUDIO_POLICIES, check_one_of
from speakerid.data.audio import AudioError, read_crop
from speakerid.data.lists import TrainList


class PackedPaths:
    """A list of paths held as one UTF-8 buffer with offsets, and a row -> path index (the CAM++ recipe's
    segment lists name each file several times). A forked loader worker that reads a Python list of a million
    str objects writes their reference counts, and so copies every page they lie on: for VoxCeleb2 85 MB per
    worker (273 MB with segments), times 64 workers on an 8-GPU node. Reading these touches no Python object."""

    def __init__(self, paths: list[str]):
        unique = list(dict.fromkeys(paths))
        position = {p: i for i, p in enumerate(unique)}
        encoded = [p.encode("utf-8") for p in unique]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._rows = np.fromiter((position[p] for p in paths), dtype=np.int64, count=len(paths))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> str:
        j = self._rows[index]
        return self._buffer[self._offsets[j]:self._offsets[j + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class CropDataset(Dataset):
    """Random fixed-length crops of the utterances of a train list, with their speaker labels.

    A file that cannot be used (unreadable, truncated, empty, wrong rate, multi-channel, NaN/inf samples)
    is an AudioError naming it with bad_audio="error"; with "skip", another utterance drawn from the same
    crop seed takes its place (so runs stay reproducible) and the file is appended to `skip_log`.

    A batch's crops are read on `read_threads` threads (the DataLoader hands the dataset a whole batch
    through `__getitems__`): reading a crop mostly waits on the disk, and libsndfile releases the GIL, so
    each loader process keeps that many reads in flight. A cold disk needs them (on an H100 with 8 loader
    processes, files evicted from the page cache were read at less than the step's pace); each crop still
    comes from its own seed, so the batch does not depend on the thread count."""

    MAX_REPLACEMENTS = 20

    def __init__(self, train_list: TrainList, crop_samples: int, sample_rate: int = 16000,
                 resample: bool = False, dtype: str = "float32", bad_audio: str = "error",
                 skip_log: str | os.PathLike | None = None, read_threads: int = 1):
        check_one_of(bad_audio, BAD_AUDIO_POLICIES, "data.bad_audio")
        if read_threads < 1:
            raise ValueError(f"data.read_threads must be >= 1, got {read_threads}")
        self.root = train_list.root
        self.paths = PackedPaths(train_list.paths)
        self.labels = np.asarray(train_list.labels, dtype=np.int64)
        self.crop_samples = crop_samples
        self.sample_rate = sample_rate
        self.resample = resample
        self.dtype = dtype
        self.bad_audio = bad_audio
        self.skip_log = None if skip_log is None else str(skip_log)
        self.read_threads = read_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # a thread pool does not cross into a spawned process
        state["_pool"] = state["_pool_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int, rng: np.random.Generator) -> np.ndarray:
        path = os.path.join(self.root, self.paths[index])
        return read_crop(path, self.crop_samples, rng, sample_rate=self.sample_rate, resample=self.resample,
                         dtype=self.dtype)

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, int]:
        index, crop_seed = item
        rng = np.random.default_rng(crop_seed)
        for _ in range(self.MAX_REPLACEMENTS):
            try:
                return self._read(index, rng), int(self.labels[index])
            except AudioError as e:
                if self.bad_audio == "error":
                    raise
                self._log_skip(e)
                index = int(rng.integers(len(self.paths)))
        raise AudioError(f"{self.MAX_REPLACEMENTS} files in a row could not be read (data.bad_audio=skip); the "
                         f"last one: {self.paths[index]}. Check the corpus with speakerid check-data")

    def __getitems__(self, items: list[tuple[int, int]]) -> list[tuple[np.ndarray, int]]:
        if self.read_threads == 1 or len(items) == 1:
            return [self[item] for item in items]
        if self._pool_pid != os.getpid():  # first batch in this process (a forked worker inherits no threads)
            self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="read")
            self._pool_pid = os.getpid()
        return list(self._pool.map(self.__getitem__, items))

    def _log_skip(self, error: AudioError) -> None:
        # Loader workers are separate processes: each appends one whole line (O_APPEND), which the
        # trainer counts for TensorBoard.
        if self.skip_log is not None:
            with open(self.skip_log, "a", encoding="utf-8") as f:
                f.write(" ".join(str(error).split()) + "\n")


def collate(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    waves = torch.from_numpy(np.stack([b[0] for b in batch]))
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return waves, labels


class EpochSampler(Sampler):
    """Shuffled order for each epoch, reproducible from (seed, epoch), resumable at any position.

    `set_epoch(epoch, start=k)` makes the next iteration skip the first k samples of that epoch's order.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True):
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _order(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator) if self.shuffle else torch.arange(self.num_items)
        crop_seeds = torch.randint(0, 2**62, (self.num_items,), generator=generator)
        return order, crop_seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, crop_seeds = self._order()
        for position in range(self.start, self.num_items):
            yield int(order[position]), int(crop_seeds[position])

    def __len__(self) -> int:
        return self.num_items - self.start
