"""Utterances with transcripts -> padded batches with CTC targets.

`prepare_transcripts` normalises a manifest's transcripts for a vocabulary and deals with characters
it cannot spell (an error that lists them, or dropping those utterances). `TranscribedDataset`
pairs `data.AudioDataset`'s waveforms (whole utterances, never cropped) with target ids;
`make_asr_loader` batches them by padded seconds with `data.BucketBatchSampler`. Nothing here
knows models or losses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import AudioDataset, Batch, BucketBatchSampler, Item, collate
from .vocab import Vocabulary, VocabularyError, normalize_text


def prepare_transcripts(df: pd.DataFrame, vocabulary: Vocabulary, on_unknown: str = "error") -> pd.DataFrame:
    """Add a `text` column: the transcript normalised for `vocabulary` (see `vocab.normalize_text`).

    Characters the vocabulary still cannot spell: `on_unknown="error"` raises `VocabularyError` naming
    them and a few utterances; "skip" drops those utterances with a warning.
    """
    if on_unknown not in ("error", "skip"):
        raise ValueError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")
    texts, bad = [], {}
    for utt, raw in zip(df["id"], df["transcript"], strict=True):
        text, unknown = normalize_text(str(raw), vocabulary)
        texts.append(text)
        if unknown:
            bad[utt] = unknown
    out = df.assign(text=texts)
    if bad:
        chars = sorted(set().union(*bad.values()))
        examples = ", ".join(f"{u} ({''.join(sorted(c))})" for u, c in list(bad.items())[:5])
        msg = (f"{len(bad)} transcripts hold characters the vocabulary cannot spell: {' '.join(map(repr, chars))} "
               f"(e.g. {examples})")
        if on_unknown == "error":
            raise VocabularyError(msg + "; map them in the transcripts or extend ctc.letters")
        warnings.warn(msg + "; those utterances are left out", stacklevel=2)
        out = out[~out["id"].isin(bad)]
    out = out.reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


@dataclass
class AsrBatch:
    audio: Batch  # waveform (B, S), padding_mask (B, S), lengths (B,), index (B,)
    targets: torch.Tensor  # (sum L,) concatenated target ids
    target_lengths: torch.Tensor  # (B,)
    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.audio)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AsrBatch:
        return AsrBatch(self.audio.to(device, non_blocking), self.targets.to(device, non_blocking=non_blocking),
                        self.target_lengths.to(device, non_blocking=non_blocking), self.ids, self.texts)


class TranscribedDataset(Dataset):
    """(waveform item, target ids) for each row of a manifest with `path`, `id`, `text` columns."""

    def __init__(self, manifest: pd.DataFrame, vocabulary: Vocabulary, sample_rate: int = 16000,
                 normalize: bool = False) -> None:
        self.audio = AudioDataset(manifest, sample_rate=sample_rate, max_sample_size=None, min_sample_size=1,
                                  normalize=normalize, random_crop=False)
        self.manifest = self.audio.manifest  # rows that have audio (unreadable ones are dropped with a warning)
        self.texts = self.manifest["text"].astype(str).tolist()
        self.ids = self.manifest["id"].astype(str).tolist()
        self.targets = [vocabulary.encode(t) for t in self.texts]

    @property
    def lengths(self) -> np.ndarray:
        """(N,) samples of each utterance."""
        return self.audio.lengths

    def set_epoch(self, epoch: int) -> None:
        """Nothing is random per epoch here (no crops); the batch sampler shuffles."""

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, index: int) -> tuple[Item | None, int]:
        return self.audio[index], index

    def collate(self, items: list[tuple[Item | None, int]]) -> AsrBatch | None:
        """Pad the waveforms (`data.collate`) and concatenate the targets of the clips that loaded."""
        audio = collate([it for it, _ in items])
        if audio is None:
            return None
        rows = audio.index.tolist()
        targets = [self.targets[i] for i in rows]
        return AsrBatch(audio, torch.tensor([t for seq in targets for t in seq], dtype=torch.long),
                        torch.tensor([len(seq) for seq in targets], dtype=torch.long),
                        [self.ids[i] for i in rows], [self.texts[i] for i in rows])


def make_asr_loader(dataset: TranscribedDataset, max_batch_seconds: float, *, seed: int = 0, shuffle: bool = True,
                    num_buckets: int = 0, num_workers: int = 0) -> DataLoader:
    """Batches of similar-length utterances within `max_batch_seconds` of padded audio."""
    sampler = BucketBatchSampler(dataset.lengths, int(max_batch_seconds * dataset.audio.sample_rate),
                                 shuffle=shuffle, seed=seed, num_buckets=num_buckets)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=num_workers)
