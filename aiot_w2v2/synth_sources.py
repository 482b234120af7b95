"""Sound sources for the synthetic machine data: signal primitives, factory background, four machines.

Each machine is a small physical caricature: a fan is shaft harmonics plus blade-pass tones plus
filtered aerodynamic noise; a pump is an induction motor plus flow noise; a valve is a timed pattern
of solenoid clicks; a slider is a trapezoidal motion profile driving motor whine and friction noise.
Every function takes a `numpy.random.Generator` and uses nothing else that is random.

`*_params(rng)` draw what is fixed for one machine ID (speeds, blade counts, resonances); the machine
functions draw the per-clip variation (speed drift, load, phases) and add the requested anomaly at a
level set by `severity` (0.2 = subtle, 1.0 = clear). Additive anomalies are scaled relative to the
clip's own normal RMS, so they change timbre and time structure rather than loudness.

What it doesn't know: real acoustics. There are no rooms, microphones or measured spectra here; the
numbers are plausible orders of magnitude, good enough to give a model something to learn and an
anomaly detector something honest to find. Files, splits and output levels live in `synth.py`.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

TWO_PI = 2.0 * np.pi


# ---------------------------------------------------------------- primitives


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)) + 1e-12)


def slow_walk(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """Smooth random curve, roughly unit std, changing about `rate_hz` times a second."""
    n_knots = int(np.ceil(n / sr * rate_hz)) + 2
    knots = rng.standard_normal(n_knots)
    pos = np.linspace(0.0, n_knots - 1.000001, n)
    idx = pos.astype(np.int64)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - idx))  # cosine easing: no kinks at the knots
    return knots[idx] * (1.0 - w) + knots[idx + 1] * w


def shaped_noise(rng: np.random.Generator, gain: np.ndarray, n: int) -> np.ndarray:
    """Gaussian noise with amplitude spectrum `gain` (on rfft bins), unit RMS."""
    spec = (rng.standard_normal(gain.size) + 1j * rng.standard_normal(gain.size)) * gain
    x = np.fft.irfft(spec, n)
    return x / rms(x)


def freqs(n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / sr)
    f[0] = f[1]  # keeps the 1/f shapes finite; the DC bin is removed by the high-passes anyway
    return f


def lowpass(f: np.ndarray, fc: float, order: float = 1.0) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / fc) ** (2 * order))


def highpass(f: np.ndarray, fc: float, order: float = 1.0) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (fc / f) ** (2 * order))


def bandpass(f: np.ndarray, fc: float, q: float) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (q * (f / fc - fc / f)) ** 2)


def harmonics(phase: np.ndarray, amps: np.ndarray, phases: np.ndarray, base: float = 1.0) -> np.ndarray:
    """sum_k amps[k] * sin((k+1) * base * phase + phases[k]) for a shared rotation phase (radians)."""
    orders = base * np.arange(1, amps.size + 1)
    return amps @ np.sin(orders[:, None] * phase[None, :] + phases[:, None])


def ring(x: np.ndarray, sr: int, freq: float, tau: float) -> np.ndarray:
    """Excite a decaying resonance (two-pole filter, time constant `tau` s) with `x`; unit peak gain."""
    freq = min(freq, 0.45 * sr)
    r = np.exp(-1.0 / (tau * sr))
    w = TWO_PI * freq / sr
    return lfilter([np.sin(w)], [1.0, -2.0 * r * np.cos(w), r * r], x)


def modes(x: np.ndarray, sr: int, table: list[tuple[float, float, float]]) -> np.ndarray:
    """Impulses `x` through several resonances: table of (freq, tau, weight)."""
    return sum(w * ring(x, sr, f, tau) for f, tau, w in table)


def impulses(n: int, idx: np.ndarray, amps: np.ndarray | float = 1.0) -> np.ndarray:
    x = np.zeros(n)
    idx = np.asarray(idx, dtype=np.int64)
    keep = (idx >= 0) & (idx < n)
    np.add.at(x, idx[keep], np.broadcast_to(amps, idx.shape)[keep])
    return x


def crossings(cycles: np.ndarray) -> np.ndarray:
    """Sample indices where a cycle counter passes an integer (one event per revolution, per defect hit)."""
    return np.flatnonzero(np.diff(np.floor(cycles)) > 0) + 1


def add_at(x: np.ndarray, part: np.ndarray, rel_db: float, ref: float | None = None) -> np.ndarray:
    """x + part scaled to `rel_db` below the reference RMS (default: RMS of x)."""
    if not np.any(part):
        return x
    ref = rms(x) if ref is None else ref
    return x + part * (ref * 10.0 ** (rel_db / 20.0) / rms(part))


def sev_db(severity: float, quiet_db: float, loud_db: float) -> float:
    return quiet_db + (loud_db - quiet_db) * severity


def jitter_db(rng: np.random.Generator, std_db: float, size: int | None = None) -> np.ndarray | float:
    return 10.0 ** (rng.normal(0.0, std_db, size) / 20.0)


# ---------------------------------------------------------------- background


def factory_background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS factory floor: pink-to-brown noise, distant mains hum, unrelated impacts."""
    f = freqs(n, sr)
    alpha = rng.uniform(0.8, 2.0)  # 1 = pink, 2 = brown
    gain = f ** (-alpha / 2) * highpass(f, 25.0, 2) * lowpass(f, rng.uniform(2500, 7000), 1.5)
    gain *= 1.0 + rng.uniform(0, 1.5) * bandpass(f, rng.uniform(150, 1500), rng.uniform(0.7, 2.0))
    x = shaped_noise(rng, gain, n)

    # Hum from transformers and other motors on the floor: mains harmonics, odd ones stronger.
    mains = 50.0 if rng.random() < 0.7 else 60.0
    t = np.arange(n) / sr
    amps = rng.uniform(0.2, 1.0, 6) * np.array([1.0, 0.5, 0.7, 0.3, 0.4, 0.2])
    hum = harmonics(TWO_PI * mains * (1 + rng.normal(0, 1e-3)) * t, amps, rng.uniform(0, TWO_PI, 6))
    x = add_at(x, hum, rng.uniform(-24.0, -8.0))

    # Distant impacts (dropped parts, hammering) at random times: present in every clip alike,
    # so a detector cannot treat "there is a click" as an anomaly.
    k = rng.poisson(rng.uniform(0.0, 1.5) * n / sr)
    if k:
        hits = impulses(n, rng.integers(0, n, k), rng.lognormal(0.0, 0.6, k) * rng.choice([-1, 1], k))
        table = [(rng.uniform(200, 5000), rng.uniform(0.005, 0.06), rng.uniform(0.3, 1.0)) for _ in range(3)]
        x = x + modes(hits, sr, table) * rng.uniform(0.1, 0.6)
    return x / rms(x)


# ---------------------------------------------------------------- fan


def fan_params(rng: np.random.Generator) -> dict:
    return dict(
        f_rot=rng.uniform(18.0, 45.0),  # shaft speed, Hz (1100-2700 rpm)
        blades=int(rng.integers(5, 13)),
        shaft_amps=rng.uniform(0.3, 1.0, 6) / np.arange(1, 7),
        bpf_amps=rng.uniform(0.4, 1.0, 4) / np.arange(1, 5) ** 0.7,
        tone_db=rng.uniform(-8.0, 0.0),  # tonal part relative to aerodynamic noise
        aero_fc=rng.uniform(300.0, 1500.0),
        housing=[(rng.uniform(600, 4000), rng.uniform(2, 6), rng.uniform(0.5, 2.0)) for _ in range(3)],
        bpfo_ratio=rng.uniform(3.05, 5.4),  # outer-race defect frequency / shaft frequency
        bearing_res=rng.uniform(2000.0, 5500.0),
        rub_res=rng.uniform(1500.0, 4500.0),
    )


def fan(p: dict, anomaly: str | None, s: float, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    speed = 1.0 + np.clip(rng.normal(0.0, 0.012), -0.03, 0.03)  # mains and load move the speed by ~1-3 %
    f_inst = p["f_rot"] * speed * (1.0 + 0.003 * slow_walk(rng, n, sr, 1.0))
    phase = TWO_PI * np.cumsum(f_inst) / sr
    shaft = harmonics(phase, p["shaft_amps"] * jitter_db(rng, 2.0, 6), rng.uniform(0, TWO_PI, 6))
    bpf = harmonics(phase, p["bpf_amps"] * jitter_db(rng, 2.0, 4), rng.uniform(0, TWO_PI, 4), p["blades"])
    tonal = 0.5 * shaft + bpf

    gain = lowpass(f, p["aero_fc"] * jitter_db(rng, 0.5), 1.0) * highpass(f, 40.0, 2)
    gain *= 1.0 + sum(w * bandpass(f, fc, q) for fc, q, w in p["housing"])
    aero = shaped_noise(rng, gain, n)
    aero *= 1.0 + 0.15 * np.sin(p["blades"] * phase + rng.uniform(0, TWO_PI))  # blades chop the flow
    x = tonal / rms(tonal) * 10.0 ** ((p["tone_db"] + rng.normal(0, 1.0)) / 20.0) + aero
    x *= 1.0 + 0.05 * slow_walk(rng, n, sr, 1.5)
    ref = rms(x)

    if anomaly == "imbalance":
        # Mass imbalance: a centrifugal force at 1x shaft speed that also modulates everything the
        # rotor radiates at the shaft rate.
        shaft_phase = phase + rng.uniform(0, TWO_PI)
        x = x * (1.0 + (0.05 + 0.35 * s) * np.sin(shaft_phase))
        x = add_at(x, np.sin(shaft_phase), sev_db(s, -18.0, 0.0), ref)
    elif anomaly == "rub":
        # A damaged blade touching the housing once per revolution, not on every turn.
        idx = crossings(phase / TWO_PI + rng.uniform())
        hit = rng.random(idx.size) < 0.4 + 0.6 * s
        amps = rng.lognormal(0.0, 0.5, idx.size) * hit
        table = [(p["rub_res"], 0.003, 1.0), (p["rub_res"] * 1.7, 0.002, 0.6), (700.0, 0.004, 0.4)]
        x = add_at(x, modes(impulses(n, idx, amps), sr, table), sev_db(s, -30.0, -8.0), ref)
    elif anomaly == "bearing":
        x = add_at(x, bearing_defect(rng, f_inst, p["bpfo_ratio"], p["bearing_res"], phase, sr),
                   sev_db(s, -30.0, -8.0), ref)
    return x


def bearing_defect(rng: np.random.Generator, f_shaft: np.ndarray, ratio: float, res: float,
                   shaft_phase: np.ndarray, sr: int) -> np.ndarray:
    """Outer-race defect: an impulse each time a rolling element passes it (a non-integer multiple of
    the shaft speed, with a little slip), each ringing the housing at a few kHz."""
    n = f_shaft.size
    slip = 1.0 + rng.normal(0.0, 0.01)
    idx = crossings(np.cumsum(f_shaft * ratio * slip) / sr + rng.uniform())
    idx = idx + np.round(rng.normal(0.0, 0.01 * sr / (f_shaft.mean() * ratio), idx.size)).astype(np.int64)
    # Load zone: hits are harder on the side the rotor's weight presses down on.
    amps = (1.0 + 0.5 * np.cos(shaft_phase[np.clip(idx, 0, n - 1)])) * rng.lognormal(0.0, 0.2, idx.size)
    return modes(impulses(n, idx, amps), sr, [(res, 0.0015, 1.0), (res * 1.38, 0.001, 0.5)])


# ---------------------------------------------------------------- pump


def pump_params(rng: np.random.Generator) -> dict:
    line = 50.0 if rng.random() < 0.6 else 60.0
    poles = int(rng.choice([2, 4]))
    return dict(
        line=line,
        f_rot=2.0 * line / poles * (1.0 - rng.uniform(0.02, 0.05)),  # induction motor slip
        vanes=int(rng.integers(5, 9)),
        slots=int(rng.integers(24, 45)),  # rotor slots: the motor's high whine
        motor_amps=rng.uniform(0.2, 1.0, 5) / np.arange(1, 6),
        flow_fc=rng.uniform(300.0, 1200.0),
        pipe=[(rng.uniform(150, 2000), rng.uniform(1.5, 5), rng.uniform(0.5, 2.0)) for _ in range(2)],
        motor_db=rng.uniform(-10.0, -2.0),
        leak_fc=rng.uniform(3000.0, 6000.0),
    )


def pump(p: dict, anomaly: str | None, s: float, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    load = rng.normal(0.0, 0.006)  # more load, more slip
    f_inst = p["f_rot"] * (1.0 - load) * (1.0 + 0.002 * slow_walk(rng, n, sr, 0.7))
    phase = TWO_PI * np.cumsum(f_inst) / sr
    t = np.arange(n) / sr
    motor = harmonics(phase, p["motor_amps"] * jitter_db(rng, 2.0, 5), rng.uniform(0, TWO_PI, 5))
    motor += 0.6 * np.sin(TWO_PI * 2 * p["line"] * t + rng.uniform(0, TWO_PI))  # magnetostriction hum
    motor += 0.15 * np.sin(p["slots"] * phase + rng.uniform(0, TWO_PI))
    vane_amp = 0.4 * jitter_db(rng, 2.0)

    flow_fc = p["flow_fc"] * jitter_db(rng, 0.7)
    pipe = list(p["pipe"])
    surge = 0.0
    if anomaly == "clogging":
        # A blocked intake throttles the flow: less low-frequency rush, a whistle at the constriction,
        # stronger pulsation at vane passing and slow surging of the pressure.
        flow_fc *= 1.0 - 0.2 * s
        pipe.append((rng.uniform(800, 2500), 3.0, 0.2 + 1.3 * s))
        vane_amp *= 1.0 + 2.0 * s
        surge = 0.05 + 0.3 * s
    gain = lowpass(f, flow_fc, 1.0) * highpass(f, 30.0, 2)
    gain *= 1.0 + sum(w * bandpass(f, fc, q) for fc, q, w in pipe)
    flow = shaped_noise(rng, gain, n)
    flow *= 1.0 + 0.1 * np.sin(p["vanes"] * phase) + surge * slow_walk(rng, n, sr, 2.5)
    motor += vane_amp * np.sin(p["vanes"] * phase + rng.uniform(0, TWO_PI))
    x = motor / rms(motor) * 10.0 ** ((p["motor_db"] + rng.normal(0, 1.0)) / 20.0) + flow
    ref = rms(x)

    if anomaly == "cavitation":
        # Vapour bubbles collapsing near the impeller: dense, heavy-tailed, very short crackle whose
        # density follows the vanes passing the cutwater.
        rate = (300.0 + 1200.0 * rng.random()) * (0.5 + s)
        k = rng.poisson(rate * n / sr)
        idx = rng.integers(0, n, k)
        keep = rng.random(k) < 0.5 + 0.5 * np.cos(p["vanes"] * phase[idx])
        amps = rng.exponential(1.0, k) ** 2 * keep * rng.choice([-1, 1], k)
        sos = butter(2, [min(2500.0, 0.3 * sr), min(7500.0, 0.47 * sr)], btype="band", fs=sr, output="sos")
        x = add_at(x, sosfilt(sos, impulses(n, idx, amps)), sev_db(s, -30.0, -8.0), ref)
    elif anomaly == "leakage":
        hiss = shaped_noise(rng, highpass(f, 2000.0, 2) * (0.3 + bandpass(f, p["leak_fc"], 2.0)), n)
        x = add_at(x, hiss * (1.0 + 0.1 * slow_walk(rng, n, sr, 3.0)), sev_db(s, -30.0, -10.0), ref)
    return x


# ---------------------------------------------------------------- valve


def valve_params(rng: np.random.Generator) -> dict:
    period = rng.uniform(0.45, 0.9)
    k = int(rng.integers(1, 3))  # actuations per cycle: the controller's program for this valve
    opens = np.sort(rng.uniform(0.0, 0.5, k)) * period / k + np.arange(k) * period / k
    return dict(
        period=period, opens=opens, durations=rng.uniform(0.25, 0.45, k) * period / k,
        open_modes=[(rng.uniform(1000, 6000), rng.uniform(0.002, 0.012), rng.uniform(0.3, 1.0))
                    for _ in range(3)] + [(rng.uniform(80, 250), 0.02, 0.8)],  # + armature thump
        close_modes=[(rng.uniform(1000, 6000), rng.uniform(0.002, 0.012), rng.uniform(0.3, 1.0))
                     for _ in range(3)] + [(rng.uniform(80, 250), 0.02, 1.0)],
        flow_fc=rng.uniform(500.0, 3000.0),
        rattle_res=rng.uniform(3000.0, 7000.0),
        leak_fc=rng.uniform(2500.0, 6000.0),
    )


def valve(p: dict, anomaly: str | None, s: float, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    period = p["period"] * (1.0 + rng.normal(0.0, 0.003))
    cycles = np.arange(-1, int(n / sr / period) + 2)
    t_open = (cycles[:, None] * period + p["opens"][None, :]).ravel() - rng.uniform(0, period)
    dur = np.tile(p["durations"], cycles.size)
    jit = 0.002  # the controller and solenoid are repeatable to a couple of milliseconds
    if anomaly == "timing":
        # Sticky spool or failing driver: late, irregular switching and a changed open time.
        jit = 0.002 + 0.03 * s * period
        dur = dur * (1.0 + rng.choice([-1, 1]) * 0.35 * s)
    t_open = t_open + rng.normal(0.0, jit, t_open.size)
    t_close = t_open + dur + rng.normal(0.0, jit, t_open.size)
    i_open, i_close = (np.round(t_open * sr).astype(np.int64), np.round(t_close * sr).astype(np.int64))

    a_open, a_close = jitter_db(rng, 2.0, i_open.size), jitter_db(rng, 2.0, i_close.size)
    drift = jitter_db(rng, 0.2)  # temperature shifts the resonances a little
    x = modes(impulses(n, i_open, a_open), sr, [(fr * drift, tau, w) for fr, tau, w in p["open_modes"]])
    x += modes(impulses(n, i_close, a_close), sr, [(fr * drift, tau, w) for fr, tau, w in p["close_modes"]])

    # Fluid rushes through while the valve is open; the gate is smoothed over ~5 ms.
    gate = np.cumsum(impulses(n, i_open) - impulses(n, i_close)) + (i_open < 0).sum() - (i_close < 0).sum()
    gate = np.clip(gate, 0, 1)
    width = max(1, int(0.005 * sr))
    gate = np.convolve(gate, np.ones(width) / width, mode="same")
    flow = shaped_noise(rng, bandpass(f, p["flow_fc"], 1.0), n) * gate
    ref = rms(x)
    x = add_at(x, flow, rng.uniform(-22.0, -16.0), ref)

    if anomaly == "contamination":
        # Debris caught in the seat: every click is followed by a few bounces, closer and closer.
        events = np.concatenate([i_open, i_close])
        bounces = rng.integers(3, 8)
        gaps = 0.006 * np.cumsum(0.7 ** np.arange(bounces)) * sr
        idx = (events[:, None] + gaps[None, :] * rng.uniform(0.8, 1.2, (events.size, 1))).ravel()
        amps = np.tile(0.7 ** np.arange(bounces), events.size) * rng.lognormal(0, 0.3, idx.size)
        rattle = modes(impulses(n, idx.astype(np.int64), amps), sr, [(p["rattle_res"], 0.001, 1.0)])
        x = add_at(x, rattle, sev_db(s, -26.0, -6.0), ref)
    elif anomaly == "leak":
        # Incomplete closure: the seat does not seal, so a hiss fills the gaps between clicks.
        hiss = shaped_noise(rng, highpass(f, 1500.0, 2) * bandpass(f, p["leak_fc"], 1.5), n) * (1.0 - gate)
        x = add_at(x, hiss, sev_db(s, -22.0, -4.0), ref)
    return x


# ---------------------------------------------------------------- slider


def slider_params(rng: np.random.Generator) -> dict:
    return dict(
        period=rng.uniform(0.6, 1.2),  # one stroke out and back
        move=rng.uniform(0.6, 0.85),  # fraction of each half-cycle spent moving
        accel=rng.uniform(0.15, 0.3),  # fraction of the move spent accelerating
        f_motor=rng.uniform(30.0, 80.0),  # screw rotation at full speed, Hz
        balls=int(rng.integers(6, 15)),
        motor_amps=rng.uniform(0.3, 1.0, 4) / np.arange(1, 5),
        friction_fc=rng.uniform(500.0, 2500.0),
        clunk=[(rng.uniform(200, 600), 0.01, 1.0), (rng.uniform(1000, 2500), 0.004, 0.5)],
        rail_res=rng.uniform(1500.0, 4000.0),
        squeal=rng.uniform(2000.0, 5000.0),
    )


def slider(p: dict, anomaly: str | None, s: float, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    half = p["period"] * (1.0 + rng.normal(0.0, 0.01)) / 2
    move, ramp = p["move"] * half, p["accel"] * p["move"] * half

    def profile(tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tm = tau % half
        speed = np.clip(np.minimum(tm / ramp, (move - tm) / ramp), 0.0, 1.0)  # trapezoid, 0..1
        return speed, speed * np.where(tau < half, 1.0, -1.0)

    # The carriage position over one full cycle, looked up by time-in-cycle: 0 at home, 1 at the far end.
    one_cycle = profile(np.arange(int(2 * half * sr)) / sr)[1]
    stroke = np.cumsum(one_cycle)
    stroke /= stroke.max()
    cyc = (np.arange(n) + rng.integers(0, one_cycle.size)) % one_cycle.size
    speed = profile(cyc / sr)[0]
    pos = stroke[cyc]

    wobble = 0.0
    if anomaly == "belt":
        # A loose belt stretches and snaps back: the speed ripples and the belt slaps the guard.
        wobble = (0.02 + 0.08 * s) * slow_walk(rng, n, sr, 12.0)
    f_inst = p["f_motor"] * speed * (1.0 + rng.normal(0.0, 0.01)) * (1.0 + wobble)
    phase = TWO_PI * np.cumsum(f_inst) / sr
    motor = harmonics(phase, p["motor_amps"] * jitter_db(rng, 2.0, 4), rng.uniform(0, TWO_PI, 4))
    motor += 0.3 * np.sin(p["balls"] * phase + rng.uniform(0, TWO_PI))
    motor *= np.sqrt(speed)
    friction = shaped_noise(rng, bandpass(f, p["friction_fc"] * jitter_db(rng, 0.5), 0.8), n) * speed
    starts = np.flatnonzero(np.diff((speed > 0).astype(np.int8)) != 0) + 1
    clunks = modes(impulses(n, starts, jitter_db(rng, 2.0, starts.size)), sr, p["clunk"])
    x = motor / rms(motor) * 0.5 + friction + clunks * 0.5
    ref = rms(x)

    if anomaly == "rail":
        # Dents in the rail: an impact each time the carriage rolls over one, harder when faster.
        hits = []
        for spot in rng.uniform(0.1, 0.9, rng.integers(1, 4)):
            hits.append(np.flatnonzero(np.diff(np.sign(pos - spot)) != 0) + 1)
        idx = np.concatenate(hits)
        table = [(p["rail_res"], 0.004, 1.0), (p["rail_res"] * 0.6, 0.006, 0.5)]
        x = add_at(x, modes(impulses(n, idx, speed[idx] + 0.1), sr, table), sev_db(s, -28.0, -6.0), ref)
    elif anomaly == "grease":
        # Dry rail: stick-slip squeal in bursts while moving, and friction shifted to a higher band.
        fs = p["squeal"] * (1.0 + 0.01 * slow_walk(rng, n, sr, 5.0))
        sq_phase = TWO_PI * np.cumsum(fs) / sr
        squeal = np.sin(sq_phase) + 0.3 * np.sin(2 * sq_phase)
        squeal *= speed * (slow_walk(rng, n, sr, 6.0) > 0.3 - 0.6 * s)
        rough = shaped_noise(rng, bandpass(f, p["friction_fc"] * 2.5, 1.2), n) * speed
        x = add_at(x, squeal + rough, sev_db(s, -22.0, -2.0), ref)
    elif anomaly == "belt":
        k = rng.poisson(rng.uniform(6, 15) * n / sr)
        idx = rng.integers(0, n, k)
        slaps = impulses(n, idx, (speed[idx] > 0) * rng.lognormal(0, 0.4, k))
        table = [(rng.uniform(80, 250), 0.015, 1.0), (rng.uniform(600, 1200), 0.003, 0.3)]
        x = add_at(x, modes(slaps, sr, table), sev_db(s, -22.0, -2.0), ref)
    return x


MACHINE_SOURCES = {"fan": (fan_params, fan), "pump": (pump_params, pump),
                   "valve": (valve_params, valve), "slider": (slider_params, slider)}
ANOMALIES = {"fan": ("imbalance", "rub", "bearing"), "pump": ("cavitation", "clogging", "leakage"),
             "valve": ("timing", "contamination", "leak"), "slider": ("rail", "grease", "belt")}
