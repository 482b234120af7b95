"""aiot_edge.sources, .audio and windowing.Windower: chunks, folder state, PCM, resampling, windows."""

from __future__ import annotations

import io
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiot_edge.audio import AudioFormatError, StreamResampler, read_audio, resample, resampled_length
from aiot_edge.sources import (
    AlsaSource,
    Chunk,
    FileSource,
    FolderSource,
    SourceError,
    StdinSource,
    parse_source,
)
from aiot_edge.windowing import Windower, frame_windows
from edge_fixtures import small_disk_fixture  # noqa: F401 - registers the fixture

SR = 16000


def tone(sr: int, seconds: float, freq: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def write_wav(path: Path, x: np.ndarray, sr: int = SR, mtime: float | None = None) -> Path:
    sf.write(path, x, sr, subtype="FLOAT")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# ---------------------------------------------------------------------------------------------- audio


def test_8k_stereo_file_becomes_16k_mono(tmp_path: Path) -> None:
    left, right = tone(8000, 0.5, 1000.0), tone(8000, 0.5, 1000.0, amp=0.3)
    path = write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), sr=8000)
    y = read_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == resampled_length(len(left), 8000, SR) == 8000
    assert abs(peak_hz(y, SR) - 1000.0) <= 10.0  # within 1 %
    np.testing.assert_allclose(y[200:-200], tone(SR, 0.5, 1000.0, amp=0.4)[200:-200], atol=1e-3)


@pytest.mark.parametrize(("orig", "new"), [(44100, 16000), (48000, 16000), (16000, 8000), (22050, 16000)])
def test_resample_keeps_tones_and_suppresses_aliases(orig: int, new: int) -> None:
    y = resample(tone(orig, 0.25, 1000.0), orig, new)
    assert len(y) == resampled_length(int(orig * 0.25), orig, new)
    assert abs(peak_hz(y, new) - 1000.0) <= 10.0
    above_nyquist = resample(tone(orig, 0.25, new / 2 + 1500.0), orig, new)
    assert np.sqrt(np.mean(above_nyquist[100:-100] ** 2)) < 1e-3  # not aliased back into the band


def test_stream_resampler_equals_one_shot() -> None:
    x = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    r, rng, parts, i = StreamResampler(44100, 16000), np.random.default_rng(1), [], 0
    while i < len(x):
        n = int(rng.integers(0, 900))
        parts.append(r.process(x[i:i + n]))
        i += n
    parts.append(r.flush())
    np.testing.assert_allclose(np.concatenate(parts), resample(x, 44100, 16000), atol=1e-6)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no samples"), (b"", "cannot read audio"), (b"RIFF1234WAVEjunk", "cannot read audio"), ("nan", "NaN"),
])
def test_unusable_audio(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.wav"
    if content is None:
        sf.write(path, np.zeros((0, 1), np.float32), SR)
    elif content == "nan":
        sf.write(path, np.full(100, np.nan, np.float32), SR, subtype="FLOAT")
    else:
        path.write_bytes(content)
    with pytest.raises(AudioFormatError, match=f"bad.wav.*{message}"):
        read_audio(path, SR)


# ---------------------------------------------------------------------------------------------- windower


@pytest.mark.parametrize(("window", "hop"), [(400, 160), (400, 400), (100, 250), (1, 1)])
def test_windower_matches_frame_windows_for_any_chunking(window: int, hop: int) -> None:
    rng = np.random.default_rng(window + hop)
    x = rng.standard_normal(5000).astype(np.float32)
    w, got, i = Windower(window, hop), [], 0
    while i < len(x):
        n = int(rng.integers(0, 1200))
        got += w.push(x[i:i + n])
        i += n
    expected = frame_windows(x, window, hop)
    assert len(got) == len(expected)
    assert [s for _, s in got] == [k * hop for k in range(len(expected))]
    np.testing.assert_array_equal(np.stack([g for g, _ in got]), expected)
    assert w.samples_seen == len(x) and w.pending < window + hop


def test_windower_reset_starts_a_new_file() -> None:
    w = Windower(4, 2)
    assert [s for _, s in w.push(np.arange(7, dtype=np.float32))] == [0, 2]
    w.reset()
    out = w.push(np.arange(10, 15, dtype=np.float32))
    assert [s for _, s in out] == [0]
    np.testing.assert_array_equal(out[0][0], [10, 11, 12, 13])


# ---------------------------------------------------------------------------------------------- files


def test_file_source_chunks_concatenate_to_the_file(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", tone(SR, 1.3, 440.0))
    b = write_wav(tmp_path / "b.wav", tone(SR, 0.2, 880.0))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    with FileSource([a, broken, b], SR, chunk_size=5000) as src:
        chunks = list(src)
    assert all(isinstance(c, Chunk) and c.samples.dtype == np.float32 for c in chunks)
    for path, seconds, freq in ((a, 1.3, 440.0), (b, 0.2, 880.0)):
        mine = [c for c in chunks if c.source == str(path)]
        np.testing.assert_array_equal(np.concatenate([c.samples for c in mine]), tone(SR, seconds, freq))
        assert [c.end_of_stream for c in mine] == [False] * (len(mine) - 1) + [True]
        assert [c.start_time for c in mine] == [i * 5000 / SR for i in range(len(mine))]
    assert [p for p, _ in src.failed] == [str(broken)]


def folder_files(src: FolderSource) -> dict[str, np.ndarray]:
    """Run a folder source to idle; file name -> concatenated samples (checks end_of_stream per file)."""
    out: dict[str, list[np.ndarray]] = {}
    for c in src:
        out.setdefault(Path(c.source).name, []).append(c.samples)
        assert c.end_of_stream == (sum(len(s) for s in out[Path(c.source).name]) == sf.info(c.source).frames)
    return {k: np.concatenate(v) for k, v in out.items()}


def test_folder_source_remembers_files_across_restarts(tmp_path: Path) -> None:
    watched, state = tmp_path / "in", tmp_path / "state" / "folder.json"
    watched.mkdir()
    write_wav(watched / "b.wav", tone(SR, 0.5, 300.0), mtime=1_000_000)
    write_wav(watched / "a.wav", tone(SR, 0.5, 500.0), mtime=1_000_100)  # newer: comes second
    (watched / "broken.wav").write_bytes(b"RIFF garbage")
    (watched / "notes.txt").write_text("ignored: not *.wav")
    (watched / ".hidden.wav").write_bytes(b"ignored")
    kw = dict(sample_rate=SR, poll_s=0.01, settle_s=0.0, chunk_size=3000, stop_when_idle=True)

    with FolderSource(watched, state, **kw) as src:
        got = folder_files(src)
    assert list(got) == ["b.wav", "a.wav"]
    np.testing.assert_array_equal(got["a.wav"], tone(SR, 0.5, 500.0))
    assert src.done == ["a.wav", "b.wav"] and [name for name, _ in src.failed] == ["broken.wav"]
    saved = json.loads(state.read_text())
    assert saved["files"]["broken.wav"]["status"] == "failed" and "cannot read" in saved["files"]["broken.wav"]["error"]

    # "down": a file arrives, then a restart with the same state takes only that one
    write_wav(watched / "c.wav", tone(SR, 0.25, 700.0))
    with FolderSource(watched, state, **kw) as src:
        assert list(folder_files(src)) == ["c.wav"]
    with FolderSource(watched, state, **kw) as src:
        assert folder_files(src) == {}

    # a file that left the folder is forgotten; a rewritten one is new
    (watched / "b.wav").unlink()
    write_wav(watched / "a.wav", tone(SR, 0.25, 900.0))
    with FolderSource(watched, state, **kw) as src:
        assert list(folder_files(src)) == ["a.wav"]
    assert "b.wav" not in json.loads(state.read_text())["files"]


def test_folder_source_redoes_a_file_cut_short(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    write_wav(tmp_path / "x.wav", tone(SR, 1.0, 500.0))
    kw = dict(sample_rate=SR, poll_s=0.01, settle_s=0.0, chunk_size=4000, stop_when_idle=True)
    src = FolderSource(tmp_path, state, **kw)
    it = iter(src)
    first = next(it)
    assert not first.end_of_stream
    src.stop()
    assert list(it) == []  # stops mid-file: x.wav is not recorded
    with FolderSource(tmp_path, state, **kw) as again:
        assert list(folder_files(again)) == ["x.wav"]  # at-least-once: redone after the restart


def test_folder_source_waits_for_files_to_settle(tmp_path: Path) -> None:
    now = [100.0]
    src = FolderSource(tmp_path, tmp_path / "s.json", SR, settle_s=2.0, clock=lambda: now[0])
    path = write_wav(tmp_path / "rec.wav", tone(SR, 0.1, 500.0))
    assert src._scan() == ([], True)  # first sight: settling
    now[0] += 1.5
    with open(path, "ab") as f:  # still being written: size changes, the clock restarts
        f.write(b"\0" * 64)
    assert src._scan() == ([], True)
    now[0] += 1.9
    assert src._scan() == ([], True)
    now[0] += 0.2
    ready, _ = src._scan()
    assert [name for name, _, _ in ready] == ["rec.wav"]


def test_folder_source_refuses_a_corrupt_state_file(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("{ half a file")
    with pytest.raises(SourceError, match="s.json: cannot read the folder state"):
        FolderSource(tmp_path, tmp_path / "s.json", SR)


def test_folder_source_skips_a_symlink_loop_and_scores_the_rest(tmp_path: Path, caplog) -> None:
    watched = tmp_path / "w"
    watched.mkdir()
    os.symlink("l.wav", watched / "l.wav")  # `ln -s l.wav WATCH/l.wav`: resolving it loops
    write_wav(watched / "m.wav", tone(SR, 0.2, 500.0))
    with FolderSource(watched, tmp_path / "s.json", SR, poll_s=0.01, settle_s=0.0, stop_when_idle=True) as src:
        chunks = list(src)
    assert [Path(c.source).name for c in chunks] == ["m.wav"]
    assert "l.wav" in caplog.text and "skipping" in caplog.text
    assert src.done == ["m.wav"]


def test_folder_source_records_a_file_that_fails_in_an_unexpected_way(tmp_path: Path, monkeypatch) -> None:
    # Any error while decoding one file (here a MemoryError from the decoder) fails that file only.
    import aiot_edge.sources as sources

    write_wav(tmp_path / "a.wav", tone(SR, 0.2, 500.0), mtime=1_000)
    write_wav(tmp_path / "b.wav", tone(SR, 0.2, 500.0), mtime=2_000)
    real = sources.read_audio

    def flaky(path, sr):
        if Path(path).name == "a.wav":
            raise MemoryError("simulated: the decoder ran out of memory")
        return real(path, sr)

    monkeypatch.setattr(sources, "read_audio", flaky)
    with FolderSource(tmp_path, tmp_path / ".s.json", SR, settle_s=0.0, stop_when_idle=True) as src:
        chunks = list(src)
    assert {Path(c.source).name for c in chunks} == {"b.wav"}
    assert src.failed == [("a.wav", "MemoryError: simulated: the decoder ran out of memory")]


def test_folder_state_on_a_full_disk_is_kept_in_memory_and_retried(tmp_path: Path, small_disk, caplog) -> None:
    # The state write raised ENOSPC through the source thread, which ended the daemon.
    state = small_disk.path / "state.json"
    write_wav(tmp_path / "a.wav", tone(SR, 0.2, 500.0), mtime=1_000)
    small_disk.fill()
    with FolderSource(tmp_path, state, SR, settle_s=0.0, stop_when_idle=True) as src:
        assert {Path(c.source).name for c in src} == {"a.wav"}
        assert src.done == ["a.wav"] and not state.exists()
        assert "cannot save the folder state" in caplog.text
        small_disk.free()
        write_wav(tmp_path / "b.wav", tone(SR, 0.2, 500.0), mtime=2_000)
        assert {Path(c.source).name for c in src} == {"b.wav"}
    assert set(json.loads(state.read_text())["files"]) == {"a.wav", "b.wav"}


def test_a_partly_copied_wav_is_refused_then_scored_once_complete(tmp_path: Path, caplog) -> None:
    # A slow copy was scored while it grew (43 windows for a 19-window file).
    full = write_wav(tmp_path / "src.wav", tone(SR, 1.9, 500.0))
    data = full.read_bytes()
    watched = tmp_path / "w"
    watched.mkdir()
    part = watched / "rec.wav"
    part.write_bytes(data[: len(data) // 2])  # the header says 1.9 s, half of the samples are there
    with pytest.raises(AudioFormatError, match="shorter than its header says"):
        read_audio(part, SR)
    src = FolderSource(watched, tmp_path / "s.json", SR, settle_s=0.0, stop_when_idle=True)
    assert list(src) == [] and src.failed[0][0] == "rec.wav"
    part.write_bytes(data)  # the copy finishes: the file changed, so it is taken again
    samples = sum(c.samples.shape[0] for c in src)
    assert samples == int(1.9 * SR) and src.done == ["rec.wav"]


@pytest.mark.parametrize("rate", [1, 999, 384_001])
def test_audio_refuses_a_sample_rate_outside_the_sane_range(tmp_path: Path, rate: int) -> None:
    # A header claiming 1 Hz once made the resampler allocate gigabytes (16000x the samples).
    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros(32_000, np.float32), rate, subtype="PCM_16")
    with pytest.raises(AudioFormatError, match="sample rate"):
        read_audio(path, SR)


def test_audio_bounds_the_resampled_length_before_allocating(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", np.zeros(8000 * 3, np.float32), sr=8000)
    with pytest.raises(AudioFormatError, match="longer than the 2 s"):
        read_audio(path, SR, max_seconds=2.0)  # 3 s at 16 kHz is over a 2 s bound
    assert read_audio(path, SR, max_seconds=3.0).shape == (SR * 3,)


# ---------------------------------------------------------------------------------------------- stdin


class Trickle(io.RawIOBase):
    """A pipe that hands out a few bytes at a time (odd sizes split frames)."""

    def __init__(self, data: bytes, seed: int = 0):
        self.data, self.pos, self.rng = data, 0, np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        k = min(n, int(self.rng.integers(1, 777)))
        out = self.data[self.pos:self.pos + k]
        self.pos += len(out)
        return out


def test_stdin_source_stereo_8k_s16le_to_16k_mono() -> None:
    left, right = tone(8000, 0.5, 1000.0, amp=0.4), tone(8000, 0.5, 1000.0, amp=0.2)
    pcm = (np.stack([left, right], axis=1) * 32767).round().astype("<i2")  # (frames, 2) interleaved
    expected = resample(((pcm.astype(np.float32) / 32768).mean(axis=1)).astype(np.float32), 8000, SR)
    for stream in (io.BytesIO(pcm.tobytes()), Trickle(pcm.tobytes())):
        with StdinSource(stream, sample_rate=8000, channels=2, dtype="S16_LE", target_rate=SR) as src:
            chunks = list(src)
        y = np.concatenate([c.samples for c in chunks])
        assert len(y) == resampled_length(4000, 8000, SR) == 8000
        np.testing.assert_allclose(y, expected, atol=1e-6)
        assert [c.end_of_stream for c in chunks][-1] and not any(c.end_of_stream for c in chunks[:-1])
        assert all(c.source == "stdin" for c in chunks)
        starts = np.cumsum([0] + [len(c.samples) for c in chunks[:-1]]) / SR
        np.testing.assert_allclose([c.start_time for c in chunks], starts)
    assert abs(peak_hz(y, SR) - 1000.0) <= 10.0


def test_stdin_source_drops_a_trailing_partial_frame(caplog: pytest.LogCaptureFixture) -> None:
    data = np.arange(100, dtype="<i2").tobytes() + b"\x01"
    with StdinSource(io.BytesIO(data), sample_rate=SR) as src:
        y = np.concatenate([c.samples for c in src])
    assert len(y) == 100 and "dropped 1 trailing bytes" in caplog.text
    with pytest.raises(SourceError, match="unsupported PCM format"):
        StdinSource(io.BytesIO(b""), dtype="mp3")


# ---------------------------------------------------------------------------------------------- microphone


def test_alsa_source_without_sounddevice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` fail
    with pytest.raises(SourceError, match=r'pip install "aiot-w2v2-edge\[mic\]"'):
        AlsaSource("hw:1,0")
    with pytest.raises(SourceError, match="sounddevice"):
        parse_source("alsa:default", SR)


def fake_sounddevice(blocks: list[np.ndarray]) -> types.ModuleType:
    """A stand-in for sounddevice whose stream delivers `blocks` to the callback when it starts."""
    mod = types.ModuleType("sounddevice")
    mod.opened = []

    class InputStream:
        def __init__(self, device, samplerate, channels, blocksize, dtype, callback):
            if device == "missing":
                raise ValueError("No input device matching 'missing'")
            self.kw = dict(device=device, samplerate=samplerate, channels=channels, blocksize=blocksize)
            self.callback, self.closed = callback, False
            mod.opened.append(self)

        def __enter__(self):
            for b in blocks:
                self.callback(b, b.shape[0], None, None)
            return self

        def __exit__(self, *exc):
            self.closed = True

    class PortAudioError(Exception):
        pass

    mod.InputStream, mod.PortAudioError = InputStream, PortAudioError
    return mod


def test_alsa_source_queue_and_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [np.full((1600, 2), i, np.float32) for i in range(5)]
    sd = fake_sounddevice(blocks)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    src = parse_source("alsa:hw:1,0", SR, channels=2, blocksize=1600)
    src._queue.maxsize = 3  # the consumer is "slow": only 3 of the 5 blocks fit
    chunks = []
    with src:
        for c in src:
            chunks.append(c)
            if len(chunks) == 3:
                src.stop()
    assert sd.opened[0].kw == dict(device="hw:1,0", samplerate=SR, channels=2, blocksize=1600)
    assert sd.opened[0].closed
    assert src.overflows == 2
    assert [c.samples[0] for c in chunks[:3]] == [0.0, 1.0, 2.0] and chunks[-1].end_of_stream
    assert chunks[0].source == "alsa:hw:1,0"


def test_alsa_source_close_releases_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = fake_sounddevice([np.zeros((160, 1), np.float32)])
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    src = AlsaSource(2, SR, 1, 160)
    it = iter(src)
    next(it)
    src.close()  # the iterator is still referenced here
    assert sd.opened[0].closed
    with pytest.raises(SourceError, match="alsa:missing: cannot open the microphone"):
        next(iter(AlsaSource("missing", SR)))


# ---------------------------------------------------------------------------------------------- specs


def test_parse_source(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", tone(SR, 0.1, 500.0))
    write_wav(tmp_path / "b.wav", tone(SR, 0.1, 500.0))
    assert isinstance(parse_source(f"file:{a}", SR), FileSource)
    assert parse_source(f"file:{tmp_path}/*.wav", SR).paths == [str(a), str(tmp_path / "b.wav")]
    folder = parse_source(f"folder:{tmp_path}", SR)
    assert isinstance(folder, FolderSource) and folder.state_file == tmp_path / ".aiot-edge-state.json"
    stdin = parse_source("stdin", SR, input_rate=8000, channels=2, stream=io.BytesIO(b""))
    assert isinstance(stdin, StdinSource) and (stdin.input_rate, stdin.sample_rate) == (8000, SR)
    for bad, message in [("mic", "unknown source"), ("file:", "unknown source"), (f"file:{tmp_path}", "not a file"),
                         (f"file:{tmp_path}/*.flac", "no file matches"), ("http://x", "unknown source")]:
        with pytest.raises(SourceError, match=message):
            parse_source(bad, SR)
