"""From a manifest to padded batches: dataset, collate, length-bucketing batch sampler, loader.

`AudioDataset` loads and crops one clip; `collate` pads clips into a `Batch` with an explicit
padding mask; `BucketBatchSampler` groups clips of similar length (and, optionally, of one machine
or machine ID) under a budget of padded samples per batch and splits the batches across DDP ranks;
`make_loader` wires the three from a `DataConfig`. Randomness (crop offsets, batch order) comes from
`torch.Generator`s seeded by (seed, epoch, index), so results do not depend on worker processes.
This module knows nothing about models or losses; it only hands out waveforms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..audio import AudioError, load_audio, normalize, resampled_length
from ..config import DataConfig


def _generator(*keys: int) -> torch.Generator:
    """A torch.Generator seeded from a tuple of ints, well mixed (nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


# ----------------------------------------------------------------------------------------------
# Dataset


@dataclass
class Item:
    """One clip: `index` is the row of `AudioDataset.manifest` it came from."""

    index: int
    waveform: torch.Tensor  # (T,) float32
    machine: str
    machine_id: str | None


class AudioDataset(Dataset):
    """Clips of a manifest as float32 waveforms at `sample_rate`, cropped to `max_sample_size`.

    Clips shorter than `min_sample_size` (after resampling) are dropped at construction, with a
    warning; `self.manifest` holds the kept rows (index i of the dataset = row i). A file that fails
    at read time (corrupt, NaN) gives None, a warning once per file, and counts in `self.skipped`
    (per process: each DataLoader worker keeps its own count). With `random_crop` the crop offset is
    drawn from (seed, epoch, index); otherwise clips are cut from the start.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        sample_rate: int = 16000,
        max_sample_size: int | None = None,
        min_sample_size: int = 0,
        normalize: bool = False,
        random_crop: bool = True,
        seed: int = 0,
    ) -> None:
        if "path" not in manifest.columns:
            raise ValueError("AudioDataset: the manifest needs a 'path' column (see data.build_manifest)")
        if max_sample_size is not None and max_sample_size <= 0:
            raise ValueError(f"max_sample_size must be positive or None, got {max_sample_size}")
        if max_sample_size is not None and min_sample_size > max_sample_size:
            raise ValueError(
                f"min_sample_size ({min_sample_size}) must be <= max_sample_size ({max_sample_size})"
            )
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size
        self.min_sample_size = min_sample_size
        self.normalize = normalize
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0
        self.skipped = 0
        self._warned: set[int] = set()

        sizes = _sizes(manifest, sample_rate)  # (N,) samples at sample_rate, 0 = unreadable
        keep = sizes >= max(min_sample_size, 1)
        self.num_filtered = int((~keep).sum())
        if self.num_filtered:
            warnings.warn(
                f"AudioDataset: dropped {self.num_filtered} of {len(sizes)} clips shorter than "
                f"{min_sample_size} samples ({min_sample_size / sample_rate:.2f} s) or unreadable",
                stacklevel=2,
            )
        self.manifest = manifest[keep].reset_index(drop=True)
        self.sizes = sizes[keep]  # (N,) full clip lengths
        if len(self.manifest) == 0:
            raise ValueError(f"AudioDataset: no clips left of {len(sizes)} after dropping short ones")
        self._paths = self.manifest["path"].astype(str).tolist()
        self._machines = _column(self.manifest, "machine", "unknown")
        self._machine_ids = _column(self.manifest, "machine_id", None)

    @property
    def lengths(self) -> np.ndarray:
        """Length of each item as returned, i.e. after cropping to max_sample_size: (N,) int64."""
        if self.max_sample_size is None:
            return self.sizes.copy()
        return np.minimum(self.sizes, self.max_sample_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._paths)

    def crop_offset(self, index: int, length: int) -> int:
        """Start of the crop of item `index` whose audio has `length` samples (deterministic)."""
        if self.max_sample_size is None or length <= self.max_sample_size or not self.random_crop:
            return 0
        g = _generator(self.seed, self.epoch, index)
        return int(torch.randint(0, length - self.max_sample_size + 1, (1,), generator=g))

    def __getitem__(self, index: int) -> Item | None:
        path = self._paths[index]
        try:
            x = load_audio(path, self.sample_rate)  # (T,)
        except AudioError as err:
            self.skipped += 1
            if index not in self._warned:
                self._warned.add(index)
                warnings.warn(f"AudioDataset: skipping a bad clip: {err}", stacklevel=2)
            return None
        if self.max_sample_size is not None and len(x) > self.max_sample_size:
            start = self.crop_offset(index, len(x))
            x = x[start : start + self.max_sample_size]
        wav = torch.from_numpy(np.ascontiguousarray(x))  # (T,)
        if self.normalize:
            wav = normalize(wav)
        return Item(index=index, waveform=wav, machine=self._machines[index],
                    machine_id=self._machine_ids[index])


def _column(df: pd.DataFrame, name: str, default: str | None) -> list:
    if name not in df.columns:
        return [default] * len(df)
    return [default if _missing(v) else str(v) for v in df[name].tolist()]


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _sizes(manifest: pd.DataFrame, sample_rate: int) -> np.ndarray:
    """Clip lengths in samples at `sample_rate`, from the manifest or, where missing, from headers."""
    out = np.zeros(len(manifest), dtype=np.int64)
    has = {"n_samples", "sample_rate"} <= set(manifest.columns)
    for i, row in enumerate(manifest.itertuples(index=False)):
        n = getattr(row, "n_samples", None) if has else None
        sr = getattr(row, "sample_rate", None) if has else None
        if _missing(n) or _missing(sr):
            try:
                header = sf.info(str(row.path))
            except (sf.SoundFileError, RuntimeError, OSError):
                continue  # unreadable: size 0, dropped with the short clips
            n, sr = header.frames, header.samplerate
        if int(n) > 0 and int(sr) > 0:
            out[i] = resampled_length(int(n), int(sr), sample_rate)
    return out


# ----------------------------------------------------------------------------------------------
# Collate


@dataclass
class Batch:
    """Clips zero-padded at the end to the longest; `padding_mask` is True on padding."""

    waveform: torch.Tensor  # (B, T_max) float32
    padding_mask: torch.Tensor  # (B, T_max) bool, True = padding
    lengths: torch.Tensor  # (B,) int64
    machine: list[str]
    machine_id: list[str | None]
    index: torch.Tensor  # (B,) int64, rows of AudioDataset.manifest

    def __len__(self) -> int:
        return self.waveform.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            waveform=self.waveform.to(device, non_blocking=non_blocking),
            padding_mask=self.padding_mask.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            machine=self.machine,
            machine_id=self.machine_id,
            index=self.index.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return Batch(self.waveform.pin_memory(), self.padding_mask.pin_memory(), self.lengths.pin_memory(),
                     self.machine, self.machine_id, self.index.pin_memory())


def collate(items: Sequence[Item | None]) -> Batch | None:
    """Pad a list of items into a Batch; None items (bad files) are dropped, all None gives None."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    lengths = torch.tensor([it.waveform.shape[0] for it in items], dtype=torch.long)  # (B,)
    t_max = int(lengths.max())
    waveform = torch.zeros(len(items), t_max, dtype=torch.float32)  # (B, T_max)
    for b, it in enumerate(items):
        waveform[b, : it.waveform.shape[0]] = it.waveform
    padding_mask = torch.arange(t_max)[None, :] >= lengths[:, None]  # (B, T_max)
    return Batch(
        waveform=waveform,
        padding_mask=padding_mask,
        lengths=lengths,
        machine=[it.machine for it in items],
        machine_id=[it.machine_id for it in items],
        index=torch.tensor([it.index for it in items], dtype=torch.long),
    )


# ----------------------------------------------------------------------------------------------
# Batch sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length clips whose padded size (B x longest) fits `max_batch_samples`.

    Per epoch: within each group (all clips, or one per value of `groups`), clips are ordered by
    length (`num_buckets=0`, ties in random order) or by length bucket (`num_buckets>0`: quantile
    buckets, random order inside a bucket: more variety, a little more padding), cut greedily into
    batches under the budget (a clip longer than the budget forms a batch alone), and the batches of
    all groups are shuffled together. A batch never mixes groups. With `num_replicas > 1` rank r
    takes batches r, r + R, ...; the batch list is first padded by repeating batches from its start
    (or, with `drop_last`, trimmed) so every rank gets the same count. Call `set_epoch` each epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_batch_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_buckets: int = 0,
        groups: Sequence[str] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (N,)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("BucketBatchSampler: lengths must be a non-empty 1-D sequence")
        if (self.lengths <= 0).any():
            raise ValueError("BucketBatchSampler: every length must be positive")
        if max_batch_samples <= 0:
            raise ValueError(f"max_batch_samples must be positive, got {max_batch_samples}")
        if num_buckets < 0:
            raise ValueError(f"num_buckets must be >= 0, got {num_buckets}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1, 0 <= rank < num_replicas: {rank=}, {num_replicas=}")
        if groups is not None and len(groups) != len(self.lengths):
            raise ValueError(f"groups has {len(groups)} entries for {len(self.lengths)} lengths")
        self.max_batch_samples = int(max_batch_samples)
        self.shuffle = shuffle
        self.seed = seed
        self.num_buckets = num_buckets
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        keys = ["all"] * len(self.lengths) if groups is None else [str(g) for g in groups]
        self._groups: list[np.ndarray] = [
            np.array([i for i, k in enumerate(keys) if k == key], dtype=np.int64) for key in sorted(set(keys))
        ]
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (cached per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._rank_batches(self._all_batches()))
        return self._cache[1]

    def _all_batches(self) -> list[list[int]]:
        g = _generator(self.seed, self.epoch)
        out: list[list[int]] = []
        for idx in self._groups:
            out.extend(self._batch_group(idx, g))
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        return out

    def _batch_group(self, idx: np.ndarray, g: torch.Generator) -> list[list[int]]:
        if self.shuffle:
            idx = idx[torch.randperm(len(idx), generator=g).numpy()]
        lens = self.lengths[idx]
        if self.num_buckets > 0:
            edges = np.unique(np.quantile(lens, np.linspace(0, 1, self.num_buckets + 1)[1:-1]))
            key = np.searchsorted(edges, lens, side="right")
        else:
            key = lens
        order = idx[np.argsort(key, kind="stable")]  # stable: random order among equal keys

        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order.tolist():
            n = int(self.lengths[i])
            if current and (len(current) + 1) * max(longest, n) > self.max_batch_samples:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        return batches

    def _rank_batches(self, batches: list[list[int]]) -> list[list[int]]:
        r = self.num_replicas
        if r == 1:
            return batches
        if self.drop_last:
            batches = batches[: len(batches) // r * r]
        else:
            total = math.ceil(len(batches) / r) * r
            batches = [batches[i % len(batches)] for i in range(total)]
        return batches[self.rank :: r]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# ----------------------------------------------------------------------------------------------
# Loader


def group_keys(manifest: pd.DataFrame, group_by: str) -> list[str] | None:
    """Batch-group key of each row: None, the machine, or "machine/machine_id" (IDs repeat per machine)."""
    if group_by == "none":
        return None
    machines = _column(manifest, "machine", "unknown")
    if group_by == "machine":
        return machines
    if group_by == "machine_id":
        ids = _column(manifest, "machine_id", None)
        return [f"{m}/{i}" for m, i in zip(machines, ids, strict=True)]
    raise ValueError(f"group_by: '{group_by}' is not one of none, machine, machine_id")


def make_loader(
    manifest: pd.DataFrame,
    data_cfg: DataConfig,
    seed: int,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of `Batch`es (or None when every clip of a batch failed) for this rank.

    `shuffle` also turns on random crops; without it crops start at 0 and batches keep length order.
    Call `set_loader_epoch(loader, epoch)` before each epoch after the first.
    """
    dataset = AudioDataset(
        manifest,
        sample_rate=data_cfg.sample_rate,
        max_sample_size=data_cfg.max_sample_size,
        min_sample_size=data_cfg.min_sample_size,
        normalize=data_cfg.normalize,
        random_crop=shuffle,
        seed=seed,
    )
    sampler = BucketBatchSampler(
        dataset.lengths,
        max_batch_samples=int(data_cfg.max_batch_seconds * data_cfg.sample_rate),
        shuffle=shuffle,
        seed=seed,
        num_buckets=data_cfg.num_buckets,
        groups=group_keys(dataset.manifest, data_cfg.group_by),
        num_replicas=world_size,
        rank=rank,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                        num_workers=data_cfg.num_workers, pin_memory=pin_memory)
    set_loader_epoch(loader, epoch)
    return loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a `make_loader` loader's dataset (crops) and batch sampler (order)."""
    for obj in (loader.dataset, loader.batch_sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
