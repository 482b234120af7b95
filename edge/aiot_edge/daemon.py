"""The edge daemon: source -> Windower -> Scorer -> DecisionEngine -> spool -> MQTT, in one visible loop.

`Daemon(cfg).run()` returns an exit code (see `ExitCode`). Start-up problems (corrupt bundle, unknown
machine, bad source, unwritable spool, no broker for `embedded`) are one clear log line and
`ExitCode.CONFIG`. After that the daemon does not die of the outside world: a broken file in a
watched folder is logged and skipped, a broker that is down or refuses us is retried with backoff
while scoring goes on and alerts wait in the spool.

Threads: the source is read in a small reader thread (a blocked `stdin` read must not keep SIGTERM
waiting) that hands over one chunk at a time and waits until the main loop has processed it, so a
folder source records a file as done only after its windows were scored. paho runs its own network
thread and `mqtt.Publisher` a pump thread; the main loop owns scoring and decisions.

Time: windows are placed on an *audio clock*, the seconds of audio processed since start (files
back to back), so k-of-n and the cooldown behave the same for a file scored faster than real time
and for a live microphone. Alert payloads carry the wall-clock `ts` (unix seconds) of the moment
the alert was raised, and `window_start` / `window_end` in seconds from the start of the stream
(the file, or stdin / microphone since the daemon started), next to `source`.

Stopping: SIGTERM / SIGINT stop the source, give in-flight alerts a moment to be acknowledged,
publish `offline` and close; unsent alerts stay in the spool for the next run. With `once`, the
daemon stops by itself when the source is exhausted *and* the spool is empty, and gives up after
`once_timeout_s` with `ExitCode.UNSENT` if alerts are still waiting (they stay in the spool).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from . import __version__
from .broker import BrokerUnavailable, EmbeddedBroker
from .bundle import Bundle, BundleError, MachineSpec
from .config import ConfigError, EdgeConfig, parse_broker_url
from .decision import DecisionEngine, Event, event_id
from .health import Counters, Watchdog, sd_notify, write_status
from .logs import fields
from .mqtt import Publisher, Topics, ha_discovery_messages
from .runtime import Scorer
from .sources import Chunk, Source, SourceError, parse_source
from .spool import Spool, SpoolError
from .windowing import Windower

log = logging.getLogger(__name__)

_TICK_S = 0.2  # the main loop wakes at least this often (telemetry, health, watchdog, signals)
_FLUSH_ON_STOP_S = 2.0  # how long a stopping daemon waits for in-flight alerts to be acknowledged


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # the source failed while running
    CONFIG = 2  # could not start: config, bundle, source, spool or broker set-up
    UNSENT = 3  # --once gave up with alerts still in the spool


class _PublisherDied(RuntimeError):
    """A publisher thread died: nothing would be published any more."""


class _End:
    """The source is exhausted."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _ChunkReader:
    """Iterates a source in a daemon thread, one chunk at a time, each released only after `processed()`."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._items: queue.Queue[Chunk | _End | _Failed] = queue.Queue()
        self._processed = threading.Semaphore(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aiot-edge-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self.source:
                self._items.put(chunk)
                while not self._processed.acquire(timeout=_TICK_S):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
            self._items.put(_End())
        except BaseException as err:  # noqa: BLE001 - whatever ends this thread must reach the main loop
            # Anything (a symlink loop, a bug, MemoryError) ends the daemon with an error instead of
            # leaving it `online`, feeding the watchdog, with nothing read any more.
            self._items.put(_Failed(err))

    def get(self, timeout: float) -> Chunk | _End | _Failed | None:
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def processed(self) -> None:
        self._processed.release()

    def stop(self) -> None:
        self._stop.set()
        self.source.stop()


class Daemon:
    """One daemon run. `source` replaces `cfg.source` (tests and embedding pass their own `Source`)."""

    def __init__(self, cfg: EdgeConfig, source: Source | None = None) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self._given_source = source
        self._stop = threading.Event()
        self._stop_reason = ""
        self.started = threading.Event()  # set once start-up succeeded (tests wait on it)
        # set up in run()
        self.bundle: Bundle | None = None
        self.spec: MachineSpec | None = None
        self.spool: Spool | None = None
        self.publisher: Publisher | None = None
        self.source: Source | None = None
        self.broker_url: str | None = None

    # -- control ---------------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the main loop to stop (thread-safe; also what the signal handlers call)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
        if self.source is not None:
            self.source.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread (embedding, tests)
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- run -------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with `once`, until done); returns an `ExitCode`."""
        with contextlib.ExitStack() as stack:
            # Before anything connects: a SIGTERM right after "online" is published must stop cleanly
            # (offline, spool flushed), not kill the process with the default action.
            stack.enter_context(self._signals())
            try:
                reader = self._start(stack)
            except (BundleError, SourceError, SpoolError, BrokerUnavailable, ConfigError, OSError, ValueError) as err:
                log.error("cannot start: %s", err, extra=fields(error=type(err).__name__))
                return ExitCode.CONFIG
            self.started.set()
            sd_notify("READY=1")
            try:
                code = self._loop(reader)
            except _PublisherDied as err:
                log.error("%s; stopping (exit %d)", err, ExitCode.ERROR)
                code = ExitCode.ERROR
            sd_notify("STOPPING=1")
            reader.stop()
            self._flush_on_stop()
        self._report(final=True)
        return code

    def _start(self, stack: contextlib.ExitStack) -> _ChunkReader:
        cfg = self.cfg
        if cfg.bundle is None:
            raise ConfigError("no bundle given (--bundle or 'bundle:' in the config)")
        if cfg.source is None and self._given_source is None:
            raise ConfigError("no source given (--source file:PATH|folder:DIR|stdin|alsa:DEV or 'source:')")
        try:
            self.bundle = Bundle.load(cfg.bundle)
        except BundleError as err:
            raise BundleError(f"corrupt or invalid bundle: {err}") from err
        self.spec = self.bundle.machine(cfg.machine, cfg.machine_id)
        self.scorer = Scorer.from_bundle(self.bundle, providers=cfg.providers, intra_op_num_threads=cfg.threads)
        self.engine = DecisionEngine(self.spec.threshold, k=cfg.decision.k, n=cfg.decision.n,
                                     hysteresis=cfg.decision.hysteresis, cooldown_s=cfg.decision.cooldown_s,
                                     critical_factor=cfg.decision.critical_factor)
        self.windower = Windower(self.bundle.window, self.bundle.hop)
        self.topics = Topics.for_device(cfg.site, cfg.device)

        self.spool = stack.enter_context(Spool(cfg.spool.path, cfg.spool.max_rows, cfg.spool.max_bytes))
        if cfg.broker == "embedded":
            embedded = stack.enter_context(EmbeddedBroker())
            self.broker_url = embedded.url
        else:
            self.broker_url = cfg.broker
        discovery = (ha_discovery_messages(cfg, self.topics, self.spec.key, self.spec.decision_scorer,
                                           off_delay_s=max(cfg.decision.cooldown_s, 60.0))
                     if cfg.ha_discovery else None)
        self.publisher = Publisher(cfg, parse_broker_url(self.broker_url), self.spool, discovery)

        self.source = self._given_source or self._open_source()
        stack.callback(self.source.close)
        log.info("aiot-edge starting", extra=fields(
            version=__version__, bundle=str(self.bundle.path), model=self._model_name(), machine=self.spec.key,
            scorer=self.spec.decision_scorer, threshold=self.spec.threshold, source=cfg.source or "(given)",
            broker=self.broker_url, topic=f"aiot/{cfg.site}/{cfg.device}", spool=cfg.spool.path,
            spool_depth=self.spool.depth(), providers=",".join(self.scorer.providers), once=cfg.once))
        self.publisher.start()
        stack.callback(self.publisher.stop)
        reader = _ChunkReader(self.source)
        reader.start()
        return reader

    def _open_source(self) -> Source:
        cfg, bundle = self.cfg, self.bundle
        assert cfg.source is not None and bundle is not None
        state_file = cfg.input.state_file or str(Path(cfg.spool.path).with_suffix(".folder-state.json"))
        stream = None
        if cfg.source == "stdin":
            # Unbuffered: a raw read holds no lock, so a reader thread blocked on an idle pipe
            # cannot hang interpreter shutdown after SIGTERM.
            stream = open(0, "rb", buffering=0, closefd=False)  # lives as long as the process
        return parse_source(cfg.source, bundle.sample_rate, state_file=state_file, input_rate=cfg.input.rate,
                            channels=cfg.input.channels, pcm_format=cfg.input.format, poll_s=cfg.input.poll_s,
                            settle_s=cfg.input.settle_s, pattern=cfg.input.pattern, stop_when_idle=cfg.once,
                            stream=stream)

    def _model_name(self) -> str:
        assert self.bundle is not None
        return self.bundle.name or self.bundle.sha256[:12]

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, reader: _ChunkReader) -> int:
        assert self.publisher is not None and self.spool is not None
        self._stream_base = 0.0  # audio-clock seconds before the current stream
        self._started_at = time.time_ns()
        self._head: list[np.ndarray] = []  # the current stream's samples while it is shorter than one window
        self._telemetry: dict[str, float] = {}
        self._telemetry_span: list[float] = []
        now = time.monotonic()
        self._next_telemetry = now + self.cfg.telemetry_every_s
        self._next_health = now + self.cfg.health_every_s
        self._watchdog = Watchdog(self.cfg.watchdog)
        exhausted = False
        while not self._stop.is_set():
            item = reader.get(_TICK_S)
            if isinstance(item, _End):
                exhausted = True
                break
            if isinstance(item, _Failed):
                log.error("source failed: %s; stopping (exit %d)", item.error, ExitCode.ERROR,
                          extra=fields(error=type(item.error).__name__))
                return ExitCode.ERROR
            if item is not None:
                self._process(item)
                reader.processed()
            self._tick()

        if not exhausted:
            log.info("stopping", extra=fields(reason=self._stop_reason))
            return ExitCode.OK
        self._count_failed_files()
        log.info("source exhausted", extra=fields(windows_scored=self.counters.windows_scored,
                                                   alerts_raised=self.counters.alerts_raised,
                                                   spool_depth=self.spool.depth()))
        if not self.cfg.once:
            # A daemon outlives a finite source: keep the status online and keep delivering the spool.
            while not self._stop.is_set():
                self._stop.wait(_TICK_S)
                self._tick()
            log.info("stopping", extra=fields(reason=self._stop_reason))
            return ExitCode.OK
        return self._drain_for_once()

    def _drain_for_once(self) -> int:
        assert self.publisher is not None and self.spool is not None
        deadline = time.monotonic() + self.cfg.once_timeout_s
        while self.spool.depth() > 0 and time.monotonic() < deadline and not self._stop.is_set():
            self.publisher.notify()
            self._stop.wait(0.05)
            self._tick()
        depth = self.spool.depth()
        if depth == 0:
            log.info("done: source exhausted and every alert delivered",
                     extra=fields(alerts_delivered=self.publisher.delivered))
            return ExitCode.OK
        reason = "stopped" if self._stop.is_set() else f"timed out after {self.cfg.once_timeout_s:g} s"
        log.error("--once %s with %d alert(s) still unsent (broker %s %s); they stay in the spool %s and are "
                  "delivered by the next run", reason, depth, self.broker_url,
                  "connected" if self.publisher.connected else "unreachable", self.cfg.spool.path,
                  extra=fields(spool_depth=depth))
        return ExitCode.UNSENT

    def _process(self, chunk: Chunk) -> None:
        assert self.bundle is not None and self.spec is not None
        window = self.bundle.window
        if self.windower.samples_seen < window:
            self._head.append(chunk.samples)  # kept while the stream is shorter than one window
        windows = self.windower.push(chunk.samples)
        if self.windower.samples_seen >= window:
            self._head = []
        padded_length = None
        if chunk.end_of_stream and 0 < self.windower.samples_seen < window:
            # One rule with `aiot-edge score`: a clip shorter than one window is zero-padded and scored once.
            padded_length = self.windower.samples_seen
            log.warning("%s: %d samples, shorter than one window (%d): zero-padded to one window", chunk.source,
                        padded_length, window)
            padded = np.zeros(window, dtype=np.float32)
            padded[:padded_length] = np.concatenate(self._head)
            windows = [(padded, 0)]
        if windows:
            batch = np.stack([w for w, _ in windows])  # (n, window)
            try:
                scores = self.scorer.score(batch)  # (n, n_columns)
            except ValueError as err:
                log.error("cannot score %d window(s) of %s: %s", len(windows), chunk.source, err)
                self.counters.windows_failed += len(windows)
                scores = None
            if scores is not None:
                self._decide(chunk, windows, scores, padded_length)
        if chunk.end_of_stream:
            self.windower.reset()
            self._head = []
            self._stream_base += (chunk.start_time or 0.0) + chunk.samples.shape[0] / self.bundle.sample_rate

    def _decide(self, chunk: Chunk, windows: list[tuple[np.ndarray, int]], scores: np.ndarray,
                length: int | None = None) -> None:
        """Decide on scored windows; `length` is the real length of a zero-padded one (its window_end)."""
        assert self.bundle is not None and self.spec is not None
        sr, window = self.bundle.sample_rate, self.bundle.window
        for (_, start), row in zip(windows, scores, strict=True):
            self.counters.windows_scored += 1
            window_start, window_end = start / sr, (start + (length or window)) / sr
            values = {name: float(row[col]) for name, col in self.spec.scorers.items()}
            for name, value in values.items():
                if math.isfinite(value):
                    self._telemetry[name] = max(value, self._telemetry.get(name, -math.inf))
            clock = self._stream_base + window_end
            self._telemetry_span = [self._telemetry_span[0] if self._telemetry_span else clock - window / sr, clock]
            score = values[self.spec.decision_scorer]
            if not math.isfinite(score):
                self.counters.windows_failed += 1  # the runtime already warned; a NaN window never alerts
                continue
            event = self.engine.update(score, clock, window_start, window_end)
            if event is not None:
                # A live stream cannot be replayed: the daemon's start time tells its runs apart.
                identity = chunk.identity or f"{chunk.source}@{self._started_at}"
                event = dataclasses.replace(event, event_id=event_id(self.bundle.sha256, identity, start,
                                                                     self.spec.key))
                self._raise(event, chunk.source)

    def _raise(self, event: Event, source: str) -> None:
        assert self.spool is not None and self.publisher is not None and self.spec is not None
        payload: dict[str, Any] = {
            "event_id": event.event_id, "device": self.cfg.device, "machine": self.spec.machine,
            "ts": round(time.time(), 3), "score": event.score, "threshold": event.threshold,
            "scorer": self.spec.decision_scorer, "model": self._model_name(), "severity": event.severity,
            "window_start": event.window_start, "window_end": event.window_end,
            # beyond the contract's fields, for context
            "machine_id": self.spec.machine_id, "site": self.cfg.site, "source": source,
        }
        self.counters.alerts_raised += 1
        row = self.spool.put(self.topics.alert, json.dumps(payload), qos=1)
        self.publisher.send_now()  # from this thread: a hand-off to the pump thread cost 12-24 ms here
        self.publisher.notify()
        log.warning("alert", extra=fields(event_id=event.event_id, severity=event.severity, score=event.score,
                                          threshold=event.threshold, source=source,
                                          window_start=event.window_start, spooled=row is not None))

    # -- periodic work ---------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        dead = self.publisher.dead_thread() if self.publisher is not None else None
        if dead is not None:  # checked before the watchdog ping: a daemon that cannot publish is not healthy
            raise _PublisherDied(f"{dead} died (see the error above)")
        self._watchdog.ping()
        if self.cfg.telemetry_every_s > 0 and now >= self._next_telemetry:
            self._next_telemetry = now + self.cfg.telemetry_every_s
            if self._telemetry and self.publisher is not None:
                span = self._telemetry_span[1] - self._telemetry_span[0]
                payload = {"ts": round(time.time(), 3), "scores": self._telemetry, "window_s": round(span, 3)}
                self.publisher.publish_telemetry(payload)
                self._telemetry, self._telemetry_span = {}, []
        if self.cfg.health_every_s > 0 and now >= self._next_health:
            self._next_health = now + self.cfg.health_every_s
            self._report()

    def _count_failed_files(self) -> None:
        failed = getattr(self.source, "failed", None)
        if failed is not None:
            self.counters.files_failed = len(failed)

    def _report(self, final: bool = False) -> None:
        c = self.counters
        self._count_failed_files()
        if self.spool is not None:
            c.spool_overflow = self.spool.overflow
            c.spool_in_memory = self.spool.memory_rows
            c.spool_depth = self.spool.depth()  # an in-memory count: fine after close
        if self.publisher is not None:
            c.alerts_delivered = self.publisher.delivered
            c.telemetry_sent = self.publisher.telemetry_sent
            c.mqtt_connected = self.publisher.connected
            c.mqtt_connects = self.publisher.connects
            c.mqtt_connect_failures = self.publisher.connect_failures
        log.info("final counters" if final else "health", extra=fields(**vars(c)))
        if self.cfg.status_file:
            write_status(self.cfg.status_file, c, device=self.cfg.device, site=self.cfg.site, final=final)
        sd_notify(f"STATUS=windows={c.windows_scored} alerts={c.alerts_raised} delivered={c.alerts_delivered} "
                  f"spool={c.spool_depth} mqtt={'up' if c.mqtt_connected else 'down'}")

    def _flush_on_stop(self) -> None:
        """Give alerts already on the wire a moment to be acknowledged, so a restart re-sends fewer."""
        if self.publisher is not None and self.publisher.connected and self.publisher.inflight:
            self.publisher.wait_drained(_FLUSH_ON_STOP_S)
