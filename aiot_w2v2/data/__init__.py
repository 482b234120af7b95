"""Data: manifests of audio files (`manifest`), and datasets, collate and batching (`dataset`).

Audio decoding itself lives in `aiot_w2v2.audio`; nothing here knows about models.
"""

from .dataset import (
    AudioDataset,
    Batch,
    BucketBatchSampler,
    Item,
    collate,
    group_keys,
    make_loader,
    set_loader_epoch,
)
from .manifest import COLUMNS, PathInfo, build_manifest, parse_path, split_of

__all__ = [
    "COLUMNS",
    "AudioDataset",
    "Batch",
    "BucketBatchSampler",
    "Item",
    "PathInfo",
    "build_manifest",
    "collate",
    "group_keys",
    "make_loader",
    "parse_path",
    "set_loader_epoch",
    "split_of",
]
