"""aiot_w2v2.data: manifests of the four layouts, dataset/collate, the bucketing batch sampler, loader."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from aiot_w2v2.config import DataConfig
from aiot_w2v2.data import (
    COLUMNS,
    AudioDataset,
    BucketBatchSampler,
    Item,
    build_manifest,
    collate,
    make_loader,
    set_loader_epoch,
    split_of,
)

SR = 16000


def write_clip(path: Path, n: int, sr: int = SR, seed: int = 0, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    sf.write(path, x.astype(np.float32), sr, subtype=subtype)
    return path


# ----------------------------------------------------------------------------------------------
# manifest


@pytest.fixture()
def layouts(tmp_path: Path) -> dict[str, Path]:
    d20, d22, mimii, plain = (tmp_path / n for n in ("dcase2020", "dcase2022", "mimii", "my_pump"))
    write_clip(d20 / "fan/train/normal_id_00_00000000.wav", 800)
    write_clip(d20 / "fan/test/anomaly_id_02_00000001.wav", 800)
    write_clip(d20 / "slider/test/id_05_00000003.wav", 800)  # DCASE 2020 eval: no label
    write_clip(d22 / "gearbox/train/section_00_source_train_normal_0000_volt_1.0.wav", 800)
    write_clip(d22 / "gearbox/target_test/section_01_target_test_anomaly_0003.wav", 800)
    write_clip(d22 / "gearbox/test/section_03_0007.wav", 800)  # 2022/23 eval: no domain, no label
    write_clip(d22 / "gearbox/supplemental/section_02_target_train_normal_0001.wav", 800)
    write_clip(mimii / "-6_dB/valve/id_04/normal/00000000.wav", 800)
    write_clip(mimii / "-6_dB/valve/id_04/abnormal/00000001.wav", 800)
    write_clip(plain / "a.wav", 1600, sr=8000)
    write_clip(plain / "sub/b.flac", 800, subtype="PCM_16")
    (plain / "notes.txt").write_text("not audio")
    (plain / "._a.wav").write_bytes(b"macOS resource fork")  # hidden: ignored
    return {"d20": d20, "d22": d22, "mimii": mimii, "plain": plain}


def row(df: pd.DataFrame, name: str) -> dict:
    hit = df[df["path"].str.endswith(name)]
    assert len(hit) == 1, name
    return hit.iloc[0].to_dict()


def test_manifest_recognises_layouts(layouts: dict[str, Path]) -> None:
    df = build_manifest(list(layouts.values()))
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 11 and df["path"].tolist() == sorted(df["path"])
    assert df.attrs["skipped"] == []

    def check(name: str, **want: object) -> None:
        got = row(df, name)
        assert {k: got[k] for k in want} == want, name

    check("normal_id_00_00000000.wav", machine="fan", machine_id="id_00", split="train", label="normal",
          domain=None, section=None)
    check("anomaly_id_02_00000001.wav", machine="fan", machine_id="id_02", split="test", label="anomaly")
    check("id_05_00000003.wav", machine="slider", machine_id="id_05", split="test", label=None)
    check("section_00_source_train_normal_0000_volt_1.0.wav", machine="gearbox", machine_id="section_00",
          split="train", label="normal", domain="source", section="00")
    check("section_01_target_test_anomaly_0003.wav", machine="gearbox", machine_id="section_01", split="test",
          label="anomaly", domain="target", section="01")
    check("section_03_0007.wav", machine="gearbox", machine_id="section_03", split="test", label=None,
          domain=None, section="03")
    check("section_02_target_train_normal_0001.wav", split="supplemental", domain="target", label="normal")
    check("id_04/normal/00000000.wav", machine="valve", machine_id="id_04", split=None, label="normal")
    check("id_04/abnormal/00000001.wav", machine="valve", machine_id="id_04", split=None, label="anomaly")
    check("my_pump/a.wav", machine="my_pump", machine_id=None, split=None, label=None, domain=None)
    check("sub/b.flac", machine="my_pump", machine_id=None, sample_rate=SR, n_samples=800)
    a = row(df, "my_pump/a.wav")
    assert a["sample_rate"] == 8000 and a["n_samples"] == 1600 and a["duration"] == pytest.approx(0.2)

    assert split_of(df, "test")["path"].str.contains("/test/|target_test").all()
    assert len(split_of(df, ["train", "test"])) == 6


def test_manifest_without_probe_leaves_header_columns_empty(layouts: dict[str, Path]) -> None:
    df = build_manifest(layouts["plain"], probe=False)
    assert len(df) == 2
    assert df["n_samples"].tolist() == [None, None] and df["machine_id"].tolist() == [None, None]


def test_manifest_skips_bad_files(tmp_path: Path) -> None:
    write_clip(tmp_path / "m/good.wav", 800)
    (tmp_path / "m/corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2048))
    (tmp_path / "m/zero_bytes.wav").write_bytes(b"")
    sf.write(tmp_path / "m/no_frames.wav", np.zeros((0, 1), dtype=np.float32), SR)
    with pytest.warns(UserWarning, match="skipped 3 unreadable or empty"):
        df = build_manifest([tmp_path / "m"])
    assert [Path(p).name for p in df["path"]] == ["good.wav"]
    skipped = dict((Path(p).name, why) for p, why in df.attrs["skipped"])
    assert set(skipped) == {"corrupt.wav", "zero_bytes.wav", "no_frames.wav"}
    assert skipped["no_frames.wav"] == "no samples"


def test_manifest_no_audio(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "e/readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no audio files.*/e"):
        build_manifest([tmp_path / "e"])
    with pytest.raises(ValueError, match="not a file or folder"):
        build_manifest([tmp_path / "missing"])
    (tmp_path / "e/bad.wav").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="could be read"):
        build_manifest([tmp_path / "e"])


# ----------------------------------------------------------------------------------------------
# dataset and collate


@pytest.fixture()
def clips(tmp_path: Path) -> pd.DataFrame:
    for i, n in enumerate([1000, 3000, 5000, 7000]):
        write_clip(tmp_path / f"fan/train/normal_id_0{i % 2}_0000000{i}.wav", n, seed=i)
    return build_manifest([tmp_path])


def test_dataset_items_and_crop_determinism(clips: pd.DataFrame) -> None:
    ds = AudioDataset(clips, max_sample_size=2000, seed=3)
    assert len(ds) == 4 and ds.lengths.tolist() == [1000, 2000, 2000, 2000]
    item = ds[3]
    assert isinstance(item, Item) and item.waveform.shape == (2000,) and item.waveform.dtype == torch.float32
    assert item.machine == "fan" and item.machine_id == "id_01" and item.index == 3

    full = torch.from_numpy(sf.read(ds.manifest["path"][3], dtype="float32")[0])
    start = ds.crop_offset(3, 7000)
    assert torch.equal(item.waveform, full[start : start + 2000])

    again = AudioDataset(clips, max_sample_size=2000, seed=3)
    assert torch.equal(again[3].waveform, item.waveform)  # same seed, epoch, index: same crop
    offsets = set()
    for epoch in range(6):
        again.set_epoch(epoch)
        offsets.add(again.crop_offset(3, 7000))
    assert len(offsets) > 1  # epochs move the crop
    fixed = AudioDataset(clips, max_sample_size=2000, random_crop=False)
    assert torch.equal(fixed[3].waveform, full[:2000])


def test_dataset_normalize(clips: pd.DataFrame) -> None:
    w = AudioDataset(clips, normalize=True)[2].waveform
    assert abs(float(w.mean())) < 1e-4 and abs(float(w.std(unbiased=False)) - 1) < 1e-3


def test_short_clips_filtered(clips: pd.DataFrame) -> None:
    with pytest.warns(UserWarning, match="dropped 2 of 4 clips shorter than 4000"):
        ds = AudioDataset(clips, min_sample_size=4000)
    assert ds.num_filtered == 2 and ds.sizes.tolist() == [5000, 7000]
    assert ds[0].index == 0 and ds.manifest["n_samples"].tolist() == [5000, 7000]


def test_resampled_sizes(tmp_path: Path) -> None:
    write_clip(tmp_path / "p/a.wav", 8000, sr=8000)
    ds = AudioDataset(build_manifest([tmp_path / "p"]), sample_rate=SR)
    assert ds.sizes.tolist() == [16000] and ds[0].waveform.shape == (16000,)


def test_bad_file_at_read_time_gives_none(tmp_path: Path) -> None:
    write_clip(tmp_path / "m/good.wav", 1000)
    x = np.ones(1000, dtype=np.float32)
    x[10] = np.nan
    sf.write(tmp_path / "m/nan.wav", x, SR, subtype="FLOAT")  # header is fine, samples are not
    ds = AudioDataset(build_manifest([tmp_path / "m"]))
    bad = ds.manifest["path"].str.endswith("nan.wav").idxmax()
    with pytest.warns(UserWarning, match="nan.wav"):
        assert ds[bad] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file
        assert ds[bad] is None
    assert ds.skipped == 2
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch is not None and len(batch) == 1
    assert collate([None, None]) is None


def test_collate_padding_mask() -> None:
    lens = [5, 2, 4]
    items = [Item(i, torch.arange(1, n + 1, dtype=torch.float32), "fan", None) for i, n in enumerate(lens)]
    b = collate(items + [None])
    assert b.waveform.shape == b.padding_mask.shape == (3, 5) and b.padding_mask.dtype == torch.bool
    assert b.lengths.tolist() == lens and b.index.tolist() == [0, 1, 2]
    for r, n in enumerate(lens):
        assert not b.padding_mask[r, :n].any() and b.padding_mask[r, n:].all()
        assert torch.equal(b.waveform[r, :n], items[r].waveform) and (b.waveform[r, n:] == 0).all()
    assert b.machine == ["fan"] * 3 and b.machine_id == [None] * 3
    assert b.to("cpu").waveform.shape == (3, 5)


# ----------------------------------------------------------------------------------------------
# batch sampler


def random_lengths(n: int = 200, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(100, 1000, size=n).tolist()


@pytest.mark.parametrize("num_buckets", [0, 4])
def test_sampler_covers_every_index_once_within_budget(num_buckets: int) -> None:
    lengths = random_lengths() + [5000, 2500]  # two clips longer than the budget
    s = BucketBatchSampler(lengths, max_batch_samples=2000, seed=1, num_buckets=num_buckets)
    batches = list(s)
    assert len(batches) == len(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= 2000 or len(b) == 1
    if num_buckets == 0:  # sorted by length: little padding
        pad = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
        assert pad < 0.05 * sum(lengths)


def test_sampler_epochs_are_deterministic_and_differ() -> None:
    lengths = random_lengths()
    a = BucketBatchSampler(lengths, max_batch_samples=3000, seed=7)
    b = BucketBatchSampler(lengths, max_batch_samples=3000, seed=7)
    e0 = list(a)
    assert e0 == list(b) == list(a)
    a.set_epoch(1)
    assert list(a) != e0
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(lengths, max_batch_samples=3000, seed=8)) != e0
    fixed = BucketBatchSampler(lengths, max_batch_samples=3000, shuffle=False)
    order = [i for batch in fixed for i in batch]
    assert [lengths[i] for i in order] == sorted(lengths)


def test_sampler_never_mixes_groups() -> None:
    lengths = random_lengths(150)
    groups = [f"fan/id_0{i % 3}" for i in range(150)]
    s = BucketBatchSampler(lengths, max_batch_samples=4000, groups=groups, seed=2)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(150))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert len({groups[b[0]] for b in batches[:6]}) > 1  # batches of different groups are interleaved


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ddp_ranks_partition(drop_last: bool) -> None:
    lengths = random_lengths(101)
    world = 3
    full = list(BucketBatchSampler(lengths, max_batch_samples=2500, seed=4))
    assert len(full) % world != 0  # the padding / dropping path is exercised
    ranks = [BucketBatchSampler(lengths, 2500, seed=4, num_replicas=world, rank=r, drop_last=drop_last)
             for r in range(world)]
    per_rank = [list(s) for s in ranks]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts.pop() == len(ranks[0])
    seen = Counter(tuple(b) for bs in per_rank for b in bs)
    if drop_last:
        assert len(per_rank[0]) == len(full) // world and max(seen.values()) == 1
    else:
        assert len(per_rank[0]) == -(-len(full) // world)
        assert set(seen) == {tuple(b) for b in full}  # every batch somewhere, a few repeated
        assert sum(seen.values()) - len(full) == len(per_rank[0]) * world - len(full)


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_batch_samples"):
        BucketBatchSampler([10], 0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([10], 10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="groups"):
        BucketBatchSampler([10, 20], 10, groups=["a"])


# ----------------------------------------------------------------------------------------------
# loader


def test_make_loader(tmp_path: Path) -> None:
    for m in ("fan", "pump"):
        for i in range(6):
            write_clip(tmp_path / f"{m}/train/normal_id_0{i % 2}_0000000{i}.wav", 1200 + 300 * i, seed=i)
    write_clip(tmp_path / "fan/train/normal_id_00_00000099.wav", 100)  # too short: dropped
    manifest = build_manifest([tmp_path])
    cfg = DataConfig(max_sample_size=2000, min_sample_size=500, max_batch_seconds=6000 / SR,
                     group_by="machine_id")
    with pytest.warns(UserWarning, match="dropped 1 of 13"):
        loader = make_loader(manifest, cfg, seed=0)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 12
    for b in batches:
        assert b.waveform.shape[0] * b.waveform.shape[1] <= 6000
        assert len(set(zip(b.machine, b.machine_id, strict=True))) == 1
        assert torch.equal(b.padding_mask, torch.arange(b.waveform.shape[1]) >= b.lengths[:, None])
    set_loader_epoch(loader, 1)
    assert [b.index.tolist() for b in loader] != [b.index.tolist() for b in batches]

    with pytest.warns(UserWarning):
        ranks = [make_loader(manifest, cfg, seed=0, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
