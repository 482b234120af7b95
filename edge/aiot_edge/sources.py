"""Audio sources for the edge daemon: files, a watched folder, raw PCM on stdin, an ALSA microphone.

Every source yields `Chunk`s of float32 mono samples at the bundle's sample rate (downmixed and
resampled here), is a context manager with `close()`, and stops on `stop()` (a threading.Event, safe
to call from a signal handler or another thread). File sources stop when their files are done;
streams stop at end of input or on `stop()`.

`Chunk.end_of_stream` marks the last chunk of one stream: of each file for file sources, of the
whole input for stdin and the microphone. The consumer resets its `Windower` there, so every file
is windowed on its own. `Chunk.start_time` is the chunk's first sample in seconds from the start of
that stream, counted in samples (no wall clock).

The module knows nothing about models, windows or MQTT.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import queue
import stat
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from aiot_edge.audio import AudioFormatError, StreamResampler, downmix, read_audio

log = logging.getLogger(__name__)

STATE_FORMAT = "aiot-edge-folder-state"
# raw PCM sample formats: name -> (numpy dtype, scale to [-1, 1))
PCM_FORMATS = {"s16le": ("<i2", 1.0 / 32768), "s32le": ("<i4", 1.0 / 2**31), "f32le": ("<f4", 1.0)}


class SourceError(RuntimeError):
    """A source cannot be set up or used (bad spec, missing dependency, unreadable state file)."""


@dataclass(frozen=True, eq=False)  # eq on numpy arrays is ambiguous; chunks compare by identity
class Chunk:
    """Consecutive samples of one stream."""

    samples: np.ndarray  # float32 [n], mono, at the bundle's sample rate (may be empty at end_of_stream)
    source: str  # the file path, "stdin" or "alsa:<device>"
    start_time: float | None  # seconds from the start of this stream to samples[0]
    end_of_stream: bool = False  # last chunk of this file / stream
    identity: str | None = None  # for files: "path:size:mtime_ns", what alert event ids are derived from


class Source(ABC):
    """Base of all sources: stop/close, context manager, iteration over chunks."""

    def __init__(self, sample_rate: int):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = int(sample_rate)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the iteration to end at the next chunk boundary (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop and release resources."""
        self.stop()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def __iter__(self) -> Iterator[Chunk]:
        """Chunks until exhausted or stopped."""


def file_identity(path: str | os.PathLike[str], size: int | None = None, mtime_ns: int | None = None) -> str:
    """`path:size:mtime_ns`: the same recording gives the same string after a restart, a changed one does not."""
    if size is None or mtime_ns is None:
        st = os.stat(path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    return f"{os.path.abspath(path)}:{size}:{mtime_ns}"


def _file_chunks(path: str, x: np.ndarray, sample_rate: int, chunk_size: int, identity: str) -> Iterator[Chunk]:
    """Cut one decoded file into chunks; the last carries end_of_stream."""
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        yield Chunk(x[start:stop], path, start / sample_rate, end_of_stream=stop == x.shape[0], identity=identity)


class FileSource(Source):
    """The given files, one after another. A file that cannot be read is logged, listed in `failed`, skipped.

    Each file is decoded whole (machine clips are seconds to minutes long) so that a broken file is
    found before any of its chunks goes out.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]], sample_rate: int = 16000,
                 chunk_size: int | None = None):
        super().__init__(sample_rate)
        self.paths = [str(p) for p in paths]
        self.chunk_size = int(chunk_size or sample_rate)  # samples per chunk; 1 s by default
        self.failed: list[tuple[str, str]] = []  # (path, reason)

    def __iter__(self) -> Iterator[Chunk]:
        for path in self.paths:
            if self.stopped:
                return
            try:
                identity = file_identity(path)
                x = read_audio(path, self.sample_rate)
            except AudioFormatError as err:
                log.error("skipping %s", err)
                self.failed.append((path, str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - one odd file (MemoryError, a bug) must not stop the rest
                log.error("skipping %s: %s: %s", path, type(err).__name__, err)
                self.failed.append((path, f"{type(err).__name__}: {err}"))
                continue
            for chunk in _file_chunks(path, x, self.sample_rate, self.chunk_size, identity):
                if self.stopped:
                    return
                yield chunk


class FolderSource(Source):
    """New audio files in a folder, oldest first, remembered across restarts in a JSON state file.

    A file is taken once its size and mtime have not changed for `settle_s` seconds (recorders write
    files over time). It is recorded as done when the consumer asks for the chunk after its last
    one, i.e. after processing it; the state file is replaced atomically, so a restart neither
    repeats a finished file nor skips one (a file cut short by a crash or `stop()` is redone:
    at-least-once). A file that cannot be decoded is logged and recorded as failed; it is retried
    only if it changes. Entries of files that have left the folder are dropped from the state.
    Hidden files (".name") are ignored. With `stop_when_idle`, iteration ends when a scan finds
    nothing new or settling (the daemon's --once).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        state_file: str | os.PathLike[str],
        sample_rate: int = 16000,
        poll_s: float = 1.0,
        pattern: str = "*.wav",
        settle_s: float = 1.0,
        chunk_size: int | None = None,
        stop_when_idle: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(sample_rate)
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SourceError(f"{self.directory}: not a folder")
        self.state_file = Path(state_file)
        self.poll_s, self.settle_s, self.pattern = float(poll_s), float(settle_s), pattern
        self.chunk_size = int(chunk_size or sample_rate)
        self.stop_when_idle = stop_when_idle
        self._clock = clock
        self._state_resolved = self.state_file.resolve()
        self._files: dict[str, dict[str, Any]] = self._load_state()  # name -> {status, size, mtime_ns[, error]}
        self._settling: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, stable since)
        self._listed: set[str] = set()
        self._warned: set[str] = set()  # entries whose problem was logged already

    @property
    def done(self) -> list[str]:
        """Names of the files recorded as processed."""
        return sorted(k for k, v in self._files.items() if v["status"] == "done")

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(name, reason) of the files recorded as undecodable, like `FileSource.failed`."""
        return sorted((k, v.get("error", "")) for k, v in self._files.items() if v["status"] == "failed")

    def __iter__(self) -> Iterator[Chunk]:
        while not self.stopped:
            ready, settling = self._scan()
            for name, size, mtime_ns in ready:
                if self.stopped:
                    return
                yield from self._process(name, size, mtime_ns)
            if not ready:
                if self.stop_when_idle and not settling:
                    return
                self._stop.wait(self.poll_s)

    def _scan(self) -> tuple[list[tuple[str, int, int]], bool]:
        """Files ready to process (oldest first) and whether any are still settling."""
        now = self._clock()
        ready, listed = [], set()
        for p in sorted(self.directory.glob(self.pattern)):
            if p.name.startswith("."):
                continue
            name = p.relative_to(self.directory).as_posix()
            try:
                if p.resolve() == self._state_resolved:
                    continue
                st = p.stat()
            except FileNotFoundError:
                continue  # vanished between listing and stat
            except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (`ln -s l.wav l.wav`)
                self._warn_once(name, f"skipping {self.directory / name}: cannot look at it ({err})")
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            listed.add(name)
            known = self._files.get(name)
            if known is not None and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
                continue
            seen = self._settling.get(name)
            if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
                seen = (st.st_size, st.st_mtime_ns, now)
                self._settling[name] = seen
            if now - seen[2] >= self.settle_s:
                ready.append((st.st_mtime_ns, name, st.st_size))
        self._listed = listed
        self._settling = {k: v for k, v in self._settling.items() if k in listed}
        ready.sort()
        return [(name, size, mtime_ns) for mtime_ns, name, size in ready], len(self._settling) > len(ready)

    def _process(self, name: str, size: int, mtime_ns: int) -> Iterator[Chunk]:
        path = self.directory / name
        try:
            x = read_audio(path, self.sample_rate)
        except AudioFormatError as err:
            log.warning("skipping broken file %s", err)
            self._record(name, size, mtime_ns, "failed", str(err))
            return
        except Exception as err:  # noqa: BLE001 - one odd file (MemoryError, a bug) must not stop the folder
            reason = f"{type(err).__name__}: {err}"
            log.error("skipping file %s: %s", path, reason)
            self._record(name, size, mtime_ns, "failed", reason)
            return
        for chunk in _file_chunks(str(path), x, self.sample_rate, self.chunk_size,
                                  file_identity(path, size, mtime_ns)):
            if self.stopped:
                return  # not recorded: redone after a restart
            yield chunk
        # The consumer asked for the next chunk, so it has processed this file's last one.
        self._record(name, size, mtime_ns, "done")

    def _warn_once(self, name: str, message: str) -> None:
        """Log a problem with one folder entry once, not on every scan."""
        if name not in self._warned:
            self._warned.add(name)
            log.warning("%s", message)

    def _record(self, name: str, size: int, mtime_ns: int, status: str, error: str | None = None) -> None:
        entry: dict[str, Any] = {"status": status, "size": size, "mtime_ns": mtime_ns}
        if error is not None:
            entry["error"] = error
        self._files[name] = entry
        self._settling.pop(name, None)
        # forget files that have left the folder, so the state stays as small as the folder
        self._files = {k: v for k, v in self._files.items() if k in self._listed or k == name}
        try:
            self._save_state()
        except OSError as err:
            # A full disk must not stop scoring: the state stays in memory and the next file's
            # record retries the write. Until then a restart would redo these files (at-least-once).
            log.error("cannot save the folder state %s: %s; keeping it in memory and retrying after the next "
                      "file (a restart now would score the files since the last save again)", self.state_file, err)

    def _load_state(self) -> dict[str, dict[str, Any]]:
        if not self.state_file.exists():
            return {}
        try:
            with open(self.state_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise SourceError(f"{self.state_file}: cannot read the folder state ({err}); "
                              "fix or delete it (deleting reprocesses every file in the folder)") from err
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or not isinstance(data.get("files"), dict):
            raise SourceError(f"{self.state_file}: not an {STATE_FORMAT} file")
        return data["files"]

    def _save_state(self) -> None:
        data = {"format": STATE_FORMAT, "version": 1, "directory": str(self.directory.resolve()),
                "files": self._files}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.state_file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _pcm_to_float(data: bytes, dtype: str, channels: int) -> np.ndarray:
    """Whole frames of raw PCM -> float32 mono [frames]."""
    np_dtype, scale = PCM_FORMATS[dtype]
    frames = np.frombuffer(data, dtype=np_dtype).reshape(-1, channels)  # (frames, channels)
    return downmix(frames.astype(np.float32) * np.float32(scale))


def _normalise_pcm_format(dtype: str) -> str:
    name = dtype.lower().replace("_", "")  # arecord spells it S16_LE
    if name not in PCM_FORMATS:
        raise SourceError(f"unsupported PCM format {dtype!r}; use one of {', '.join(PCM_FORMATS)}")
    return name


class StdinSource(Source):
    """Raw interleaved PCM from a binary stream, e.g. `arecord -f S16_LE -r 16000 -c 1 -t raw | aiot-edge run`.

    Reads whatever the pipe has (partial reads and frames split across reads are fine), downmixes
    and resamples to `target_rate` as one continuous stream. `stop()` takes effect after the
    current read returns; end of input ends the iteration with an end_of_stream chunk.
    """

    def __init__(self, stream: BinaryIO | None = None, sample_rate: int = 16000, channels: int = 1,
                 dtype: str = "s16le", target_rate: int | None = None, read_frames: int = 1600):
        super().__init__(target_rate or sample_rate)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.input_rate, self.channels = int(sample_rate), int(channels)
        self.dtype = _normalise_pcm_format(dtype)
        self.frame_bytes = self.channels * np.dtype(PCM_FORMATS[self.dtype][0]).itemsize
        self.read_bytes = int(read_frames) * self.frame_bytes

    def __iter__(self) -> Iterator[Chunk]:
        resampler = StreamResampler(self.input_rate, self.sample_rate)
        read = getattr(self.stream, "read1", self.stream.read)  # read1: what is there, without waiting for more
        pending = b""
        emitted = 0
        while not self.stopped:
            data = read(self.read_bytes)
            if not isinstance(data, bytes):
                raise SourceError("stdin source needs a binary stream (sys.stdin.buffer), got text")
            if not data:
                break  # end of input
            pending += data
            whole = len(pending) // self.frame_bytes * self.frame_bytes
            frames, pending = pending[:whole], pending[whole:]
            if not frames:
                continue
            y = resampler.process(_pcm_to_float(frames, self.dtype, self.channels))
            if y.size:
                yield Chunk(y, "stdin", emitted / self.sample_rate)
                emitted += y.shape[0]
        if pending:
            log.warning("stdin ended inside a frame; dropped %d trailing bytes", len(pending))
        yield Chunk(resampler.flush(), "stdin", emitted / self.sample_rate, end_of_stream=True)


def _import_sounddevice() -> Any:
    try:
        import sounddevice  # optional: only microphones need it (PortAudio)
    except (ImportError, OSError) as err:  # OSError: the wheel is there but libportaudio is not
        raise SourceError(f"the ALSA microphone source needs sounddevice ({err}); "
                          'pip install "aiot-w2v2-edge[mic]"') from err
    return sounddevice


class AlsaSource(Source):
    """A live microphone through `sounddevice` (PortAudio/ALSA).

    The audio callback only copies each block into a bounded queue; when the consumer falls behind
    the newest block is dropped, counted in `overflows` and logged (the driver's own overruns are
    counted in `input_overflows`). Dropped time is added to `start_time`, so chunk times stay true.
    """

    def __init__(self, device: str | int | None = None, sample_rate: int = 16000, channels: int = 1,
                 blocksize: int = 1600, target_rate: int | None = None, queue_size: int = 64):
        super().__init__(target_rate or sample_rate)
        self._sd = _import_sounddevice()
        self.device, self.input_rate = device, int(sample_rate)
        self.channels, self.blocksize = int(channels), int(blocksize)
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=queue_size)
        self.overflows = 0  # blocks dropped because the queue was full
        self.input_overflows = 0  # overruns reported by the driver
        self._dropped_frames = 0
        self._gen: Iterator[Chunk] | None = None

    def close(self) -> None:
        """Stop and close the audio stream, even if the iterator is still held somewhere."""
        self.stop()
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()  # GeneratorExit at its yield: the `with stream` block closes PortAudio
            except ValueError:
                pass  # running in another thread right now; it sees stop() within 0.1 s and closes itself

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status and getattr(status, "input_overflow", False):
            self.input_overflows += 1
        try:
            self._queue.put_nowait(indata.copy())  # (frames, channels); PortAudio reuses its buffer
        except queue.Full:
            self.overflows += 1
            self._dropped_frames += frames
            if self.overflows & (self.overflows - 1) == 0:  # log at 1, 2, 4, 8, ... to keep logs quiet
                log.warning("microphone queue full: %d blocks dropped so far (scoring is too slow)", self.overflows)

    def __iter__(self) -> Iterator[Chunk]:
        self._gen = self._run()
        return self._gen

    def _run(self) -> Iterator[Chunk]:
        name = f"alsa:{self.device if self.device is not None else 'default'}"
        resampler = StreamResampler(self.input_rate, self.sample_rate)
        emitted = 0
        try:
            stream = self._sd.InputStream(device=self.device, samplerate=self.input_rate, channels=self.channels,
                                          blocksize=self.blocksize, dtype="float32", callback=self._callback)
        except (self._sd.PortAudioError, ValueError) as err:  # ValueError: no device matches the name
            raise SourceError(f"{name}: cannot open the microphone at {self.input_rate} Hz, "
                              f"{self.channels} channel(s) ({err}); `python -m sounddevice` lists devices") from err
        with stream:
            while not self.stopped:
                try:
                    block = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                y = resampler.process(downmix(block))
                if y.size:
                    yield Chunk(y, name, emitted / self.sample_rate + self._dropped_frames / self.input_rate)
                    emitted += y.shape[0]
        yield Chunk(resampler.flush(), name, emitted / self.sample_rate + self._dropped_frames / self.input_rate,
                    end_of_stream=True)


def parse_source(
    spec: str,
    sample_rate: int,
    *,
    state_file: str | os.PathLike[str] | None = None,
    input_rate: int | None = None,
    channels: int = 1,
    pcm_format: str = "s16le",
    blocksize: int | None = None,
    poll_s: float = 1.0,
    settle_s: float = 1.0,
    pattern: str = "*.wav",
    stop_when_idle: bool = False,
    stream: BinaryIO | None = None,
) -> Source:
    """A source from its command-line spec: `file:PATH` (a glob is fine), `folder:DIR`, `stdin`, `alsa:DEV`.

    `sample_rate` is the bundle's rate (what chunks carry); `input_rate` is the rate of stdin PCM or
    the microphone (default: the bundle's). A folder's state file defaults to
    `DIR/.aiot-edge-state.json`. `alsa:` or `alsa:default` is the default device, `alsa:2` a device
    index, anything else a device name such as `alsa:hw:1,0`.
    """
    kind, _, arg = spec.partition(":")
    if kind == "file" and arg:
        paths = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") else [arg]
        if not paths:
            raise SourceError(f"source {spec!r}: no file matches {arg}")
        for p in paths:
            if not Path(p).is_file():
                raise SourceError(f"source {spec!r}: {p} is not a file (use folder:DIR to watch a folder)")
        return FileSource(paths, sample_rate)
    if kind == "folder" and arg:
        state = state_file if state_file is not None else Path(arg) / ".aiot-edge-state.json"
        return FolderSource(arg, state, sample_rate, poll_s=poll_s, pattern=pattern, settle_s=settle_s,
                            stop_when_idle=stop_when_idle)
    if spec == "stdin":
        return StdinSource(stream, input_rate or sample_rate, channels, pcm_format, target_rate=sample_rate)
    if kind == "alsa":
        device: str | int | None = None if arg in ("", "default") else int(arg) if arg.isdigit() else arg
        rate = input_rate or sample_rate
        return AlsaSource(device, rate, channels, blocksize or rate // 10, target_rate=sample_rate)
    raise SourceError(f"unknown source {spec!r}; use file:PATH, folder:DIR, stdin or alsa:DEVICE")
