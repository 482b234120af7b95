"""Generator families for the evaluation suites: structurally different physics for the same machine.

A family is one way of making a machine's sound. The same machine type (fan, pump, valve, slider)
can come out of several families, so a method chosen on one family's quirks does not carry over for
free:

- `classic`    the original generator of `synth_sources` (per-machine caricatures: a fan is shaft
               harmonics + blade-pass tones + aerodynamic noise, a valve is timed solenoid clicks, ...).
- `harmonic`   a harmonic-series rotor: ~30 harmonics of one rotation rate under a resonant spectral
               envelope (formant-like), little noise. Faults: misalignment (2x/3x up, 2x modulation),
               looseness (half-order subharmonics and a clipped waveform), tooth (one hit per turn).
- `broadband`  a modulated broadband flow: coloured noise through broad resonances, amplitude
               modulated at the machine's cycle rate, no tones. Faults: obstruction (a wandering
               whistle, less low-frequency rush), turbulence (intermittent bright bursts), pulsation
               (a new, slow, deep modulation that also tilts the spectrum).
- `impact`     (held out) a cyclic mechanism: a fixed pattern of hits per cycle, each ringing a few
               structural modes. Faults: crack (modes lower and longer, a rattle mode), missing
               (skipped, weak and late hits), rebound (a second hit after the main one).
- `electrical` (held out) an inverter-driven motor heard mostly through its electromagnetics: mains
               magnetostriction harmonics, a PWM carrier at kHz with sidebands at twice the output
               frequency, cooling noise. Faults: winding (a slow beat of the hum at twice the slip
               frequency, odd harmonics up), arcing (crackle at the voltage peaks), carrier (the
               carrier wanders and grows a subharmonic).

Every family takes an operating condition (`speed` scales rotation and cycle rates, `load` changes
the balance of tones and noise) besides the machine type; rooms, microphones and background scenes
are added around the source in `synth_suite.py`, the same for every family.

`draw(family, machine, rng)` draws what is fixed for one machine instance; `render(...)` one clip's
source signal (unit-free float64; the suite normalises it). Randomness comes only from the given rng.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfilt

from aiot_w2v2.synth_sources import (
    ANOMALIES,
    MACHINE_SOURCES,
    TWO_PI,
    add_at,
    bandpass,
    crossings,
    freqs,
    harmonics,
    highpass,
    impulses,
    jitter_db,
    lowpass,
    modes,
    rms,
    sev_db,
    shaped_noise,
    slow_walk,
)

MACHINES = ("fan", "pump", "valve", "slider")

# Per machine type: the range of its rotation rate (Hz) for rotor-like families and of its cycle
# period (s) for cyclic ones. Different families of one machine share these, so "fan" stays a fan.
ROTATION_HZ = {"fan": (15.0, 45.0), "pump": (20.0, 50.0), "valve": (8.0, 20.0), "slider": (30.0, 80.0)}
CYCLE_S = {"fan": (0.03, 0.08), "pump": (0.08, 0.25), "valve": (0.4, 0.9), "slider": (0.6, 1.2)}
# A mechanism's hit pattern repeats more slowly than the flow it modulates (a fan's damper flaps,
# a piston pump's strokes): hits that overlap would not be heard as hits.
IMPACT_CYCLE_S = {"fan": (0.12, 0.3), "pump": (0.15, 0.35), "valve": (0.4, 0.9), "slider": (0.6, 1.2)}


@dataclass(frozen=True)
class Condition:
    """One clip's operating condition: speed (x nominal) and load (0 light .. 1 heavy)."""

    speed: float = 1.0
    load: float = 0.0


Draw = Callable[[str, np.random.Generator], dict]
Render = Callable[[dict, "str | None", float, Condition, np.random.Generator, int, int], np.ndarray]


@dataclass(frozen=True)
class Family:
    """A generator family: how instances are drawn, how clips are rendered, which faults it has."""

    name: str
    draw: Draw
    render: Render
    faults: Callable[[str], tuple[str, ...]]  # machine type -> fault kinds


# ---------------------------------------------------------------- classic (synth_sources)


def _classic_draw(machine: str, rng: np.random.Generator) -> dict:
    return MACHINE_SOURCES[machine][0](rng) | {"_machine": machine}


def _classic_render(p: dict, fault: str | None, s: float, c: Condition, rng: np.random.Generator,
                    n: int, sr: int) -> np.ndarray:
    # The original sources have no speed input: scale the instance's rates instead (more load, a
    # little more slip).
    speed = c.speed * (1.0 - 0.03 * c.load)
    q = dict(p)
    for key in ("f_rot", "f_motor"):
        if key in q:
            q[key] = q[key] * speed
    if "period" in q:
        q["period"] = q["period"] / speed
        for key in ("opens", "durations"):
            if key in q:
                q[key] = q[key] / speed
    return MACHINE_SOURCES[p["_machine"]][1](q, fault, s, rng, n, sr)


# ---------------------------------------------------------------- harmonic-series rotor


def _harmonic_draw(machine: str, rng: np.random.Generator) -> dict:
    return dict(
        f0=rng.uniform(*ROTATION_HZ[machine]),
        tilt=rng.uniform(0.3, 1.0),  # harmonic amplitudes fall as k^-tilt
        formants=[(rng.uniform(150, 4000), rng.uniform(1.0, 4.0), rng.uniform(1.0, 6.0)) for _ in range(3)],
        noise_db=rng.uniform(-30.0, -18.0),
        fm_depth=rng.uniform(0.001, 0.006),
        tooth_res=rng.uniform(2500.0, 6000.0),
    )


def _harmonic_render(p: dict, fault: str | None, s: float, c: Condition, rng: np.random.Generator,
                     n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    f0 = p["f0"] * c.speed * (1.0 + rng.normal(0.0, 0.004))
    f_inst = f0 * (1.0 + p["fm_depth"] * slow_walk(rng, n, sr, 2.0))
    phase = TWO_PI * np.cumsum(f_inst) / sr
    k_max = max(4, min(40, int(0.45 * sr / f0)))
    k = np.arange(1, k_max + 1)
    envelope = sum(w * bandpass(k * f0, fc, q) for fc, q, w in p["formants"]) + 0.2
    amps = k ** -(p["tilt"] - 0.3 * c.load) * envelope * jitter_db(rng, 1.5, k_max)
    if fault == "misalignment":
        amps[1:3] *= 1.0 + 4.0 * s  # 2x and 3x shaft orders grow with angular misalignment
    x = harmonics(phase, amps, rng.uniform(0, TWO_PI, k_max))
    if fault == "misalignment":
        x *= 1.0 + (0.05 + 0.25 * s) * np.sin(2 * phase + rng.uniform(0, TWO_PI))
    elif fault == "looseness":
        # A loose mount rattles at half order and truncates the motion (clipped, rich in harmonics).
        half = harmonics(phase, amps[:6] * (0.1 + 0.5 * s), rng.uniform(0, TWO_PI, 6), 0.5)
        x = x + half
        lim = np.quantile(np.abs(x), 1.0 - 0.25 * s)
        x = np.clip(x, -lim, lim)
    ref = rms(x)
    noise = shaped_noise(rng, lowpass(f, 2000.0 * (1 + c.load), 1.0) * highpass(f, 30.0, 2), n)
    x = add_at(x, noise, p["noise_db"] + 6.0 * c.load + rng.normal(0.0, 1.0), ref)
    if fault == "tooth":
        # One damaged tooth: a sharp hit once per turn and a once-per-turn modulation (sidebands).
        idx = crossings(phase / TWO_PI + rng.uniform())
        hits = modes(impulses(n, idx, rng.lognormal(0.0, 0.3, idx.size)), sr,
                     [(p["tooth_res"], 0.002, 1.0), (p["tooth_res"] * 0.62, 0.003, 0.5)])
        x = x * (1.0 + (0.03 + 0.2 * s) * np.sin(phase + rng.uniform(0, TWO_PI)))
        x = add_at(x, hits, sev_db(s, -28.0, -6.0), ref)
    return x


def _harmonic_faults(machine: str) -> tuple[str, ...]:
    return ("misalignment", "looseness", "tooth")


# ---------------------------------------------------------------- modulated broadband flow


def _broadband_draw(machine: str, rng: np.random.Generator) -> dict:
    lo, hi = CYCLE_S[machine]
    return dict(
        f_mod=1.0 / rng.uniform(lo, hi),  # the cycle rate that modulates the flow
        depth=rng.uniform(0.2, 0.6),
        bumps=[(rng.uniform(200, 5000), rng.uniform(0.5, 1.5), rng.uniform(0.5, 2.0)) for _ in range(4)],
        alpha=rng.uniform(0.5, 1.5),  # spectral slope of the rush
        whistle=rng.uniform(1000.0, 4000.0),
    )


def _broadband_render(p: dict, fault: str | None, s: float, c: Condition, rng: np.random.Generator,
                      n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    shift = np.sqrt(c.speed)  # faster flow: the turbulence moves up in frequency
    gain = f ** (-p["alpha"] / 2) * highpass(f, 40.0, 2)
    gain = gain * (0.3 + sum(w * bandpass(f, fc * shift, q) for fc, q, w in p["bumps"]))
    gain = gain * (1.0 + c.load * lowpass(f, 400.0, 2))  # heavy load: more low rumble
    if fault == "obstruction":
        gain = gain * (1.0 - 0.5 * s * lowpass(f, 600.0, 2))
    x = shaped_noise(rng, gain, n)
    t = np.arange(n) / sr
    f_mod = p["f_mod"] * c.speed * (1.0 + rng.normal(0.0, 0.01))
    x *= 1.0 + p["depth"] * np.sin(TWO_PI * f_mod * t + rng.uniform(0, TWO_PI)) + 0.05 * slow_walk(rng, n, sr, 3.0)
    ref = rms(x)
    if fault == "obstruction":
        fw = p["whistle"] * shift * (1.0 + 0.02 * slow_walk(rng, n, sr, 2.0))
        x = add_at(x, np.sin(TWO_PI * np.cumsum(fw) / sr), sev_db(s, -30.0, -8.0), ref)
    elif fault == "turbulence":
        gate = (slow_walk(rng, n, sr, 10.0) > 1.2 - 0.8 * s).astype(float)
        gate = np.convolve(gate, np.ones(80) / 80, mode="same")
        burst = shaped_noise(rng, highpass(f, 1500.0, 1), n) * gate
        x = add_at(x, burst, sev_db(s, -24.0, -2.0), ref)
    elif fault == "pulsation":
        slow = np.sin(TWO_PI * rng.uniform(0.7, 3.0) * t + rng.uniform(0, TWO_PI))
        bright = shaped_noise(rng, highpass(f, 2500.0, 1), n)
        x = x * (1.0 + (0.1 + 0.5 * s) * slow)
        x = add_at(x, bright * np.clip(slow, 0, None), sev_db(s, -26.0, -8.0), ref)
    return x


def _broadband_faults(machine: str) -> tuple[str, ...]:
    return ("obstruction", "turbulence", "pulsation")


# ---------------------------------------------------------------- cyclic impact mechanism (held out)


def _impact_draw(machine: str, rng: np.random.Generator) -> dict:
    k = int(rng.integers(1, 4))
    return dict(
        period=rng.uniform(*IMPACT_CYCLE_S[machine]),
        offsets=np.sort(rng.uniform(0.0, 1.0, k)),  # hit times within a cycle, as fractions
        weights=rng.uniform(0.4, 1.0, k),
        modes=[(rng.uniform(300, 6000), rng.uniform(0.002, 0.015), rng.uniform(0.3, 1.0)) for _ in range(4)],
        rattle=rng.uniform(1500.0, 4500.0),
        hiss_fc=rng.uniform(800.0, 3000.0),
    )


def _impact_render(p: dict, fault: str | None, s: float, c: Condition, rng: np.random.Generator,
                   n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    period = p["period"] / c.speed * (1.0 + rng.normal(0.0, 0.003))
    cycles = np.arange(-1, int(n / sr / period) + 2)
    t_hit = ((cycles[:, None] + p["offsets"][None, :]) * period).ravel() - rng.uniform(0, period)
    amps = np.tile(p["weights"], cycles.size) * jitter_db(rng, 1.5, t_hit.size) * (1.0 + 0.5 * c.load)
    jit = 0.001
    if fault == "missing":
        jit = 0.001 + 0.02 * s * period
        amps = amps * np.where(rng.random(amps.size) < 0.1 + 0.4 * s, rng.uniform(0.0, 0.3, amps.size), 1.0)
    t_hit = t_hit + rng.normal(0.0, jit, t_hit.size)
    idx = np.round(t_hit * sr).astype(np.int64)
    table = list(p["modes"])
    if fault == "crack":
        # A crack lowers the stiffness (modes down) and the damping (longer ring), and rattles.
        table = [(fr * (1.0 - 0.08 * s), tau * (1.0 + 2.0 * s), w) for fr, tau, w in table]
        table.append((p["rattle"], 0.01, 0.2 + 0.8 * s))
    drift = jitter_db(rng, 0.15)
    x = modes(impulses(n, idx, amps), sr, [(fr * drift, tau, w) for fr, tau, w in table])
    ref = rms(x)
    hiss = shaped_noise(rng, bandpass(f, p["hiss_fc"], 0.7), n)
    x = add_at(x, hiss, rng.uniform(-26.0, -18.0) + 4.0 * c.load, ref)
    if fault == "rebound":
        delay = (rng.uniform(0.005, 0.02) * sr)
        bounce = modes(impulses(n, idx + int(delay), amps * (0.3 + 0.5 * s)), sr, table[:2])
        x = add_at(x, bounce, sev_db(s, -20.0, -2.0), ref)
    return x


def _impact_faults(machine: str) -> tuple[str, ...]:
    return ("crack", "missing", "rebound")


# ---------------------------------------------------------------- inverter-driven motor (held out)


def _electrical_draw(machine: str, rng: np.random.Generator) -> dict:
    return dict(
        line=50.0 if rng.random() < 0.6 else 60.0,
        f_out=rng.uniform(*ROTATION_HZ[machine]),  # inverter output frequency ~ rotation
        carrier=rng.uniform(2000.0, 6000.0),
        hum_amps=rng.uniform(0.2, 1.0, 6) / np.arange(1, 7),
        carrier_db=rng.uniform(-14.0, -4.0),
        fan_fc=rng.uniform(400.0, 1500.0),
        slip=rng.uniform(0.01, 0.04),
    )


def _electrical_render(p: dict, fault: str | None, s: float, c: Condition, rng: np.random.Generator,
                       n: int, sr: int) -> np.ndarray:
    f = freqs(n, sr)
    t = np.arange(n) / sr
    f_out = p["f_out"] * c.speed
    # Magnetostriction: the core hums at twice the electrical frequency and its harmonics.
    amps = p["hum_amps"] * jitter_db(rng, 1.5, 6)
    if fault == "winding":
        amps = amps * np.array([1.0, 1.0 + 3.0 * s, 1.0, 1.0 + 3.0 * s, 1.0, 1.0 + 3.0 * s])
    hum = harmonics(TWO_PI * 2 * f_out * t, amps, rng.uniform(0, TWO_PI, 6))
    if fault == "winding":
        beat = 2.0 * p["slip"] * (1.0 + c.load) * f_out  # broken bar: the torque beats at 2 s f
        hum = hum * (1.0 + (0.1 + 0.5 * s) * np.sin(TWO_PI * beat * t + rng.uniform(0, TWO_PI)))
    carrier = p["carrier"] * (1.0 + rng.normal(0.0, 0.002))
    if fault == "carrier":
        carrier = carrier * (1.0 + (0.01 + 0.04 * s) * slow_walk(rng, n, sr, 4.0))
    c_phase = TWO_PI * np.cumsum(np.broadcast_to(carrier, (n,))) / sr
    o_phase = TWO_PI * 2 * f_out * t
    pwm = np.sin(c_phase) * (0.3 + np.cos(o_phase)) + 0.4 * np.sin(2 * c_phase) * np.sin(o_phase)
    if fault == "carrier":
        pwm = pwm + (0.2 + 0.8 * s) * np.sin(0.5 * c_phase)
    cooling = shaped_noise(rng, lowpass(f, p["fan_fc"] * np.sqrt(c.speed), 1.5) * highpass(f, 50.0, 2), n)
    x = hum / rms(hum) + pwm / rms(pwm) * 10.0 ** ((p["carrier_db"] + 4.0 * c.load) / 20.0)
    x = add_at(x, cooling, rng.uniform(-12.0, -4.0))
    ref = rms(x)
    if fault == "arcing":
        # Arcing flashes near the voltage peaks (twice per mains cycle), not on every one.
        peaks = crossings(2 * p["line"] * t + 0.25 + rng.uniform())
        hits = rng.random(peaks.size) < 0.1 + 0.5 * s
        k = peaks[hits]
        spray = (k[:, None] + rng.integers(0, int(0.002 * sr), (k.size, 8))).ravel()
        sos = butter(2, [min(3000.0, 0.3 * sr), min(7000.0, 0.45 * sr)], btype="band", fs=sr, output="sos")
        crackle = sosfilt(sos, impulses(n, spray, rng.standard_normal(spray.size)))
        x = add_at(x, crackle, sev_db(s, -28.0, -6.0), ref)
    return x


def _electrical_faults(machine: str) -> tuple[str, ...]:
    return ("winding", "arcing", "carrier")


FAMILIES: dict[str, Family] = {
    "classic": Family("classic", _classic_draw, _classic_render, lambda m: ANOMALIES[m]),
    "harmonic": Family("harmonic", _harmonic_draw, _harmonic_render, _harmonic_faults),
    "broadband": Family("broadband", _broadband_draw, _broadband_render, _broadband_faults),
    "impact": Family("impact", _impact_draw, _impact_render, _impact_faults),
    "electrical": Family("electrical", _electrical_draw, _electrical_render, _electrical_faults),
}

HELDOUT_FAMILIES = ("impact", "electrical")
"""FROZEN held-out families. Never look at their clips or scores while choosing methods, settings
or defaults: they exist only for the held-out column of a final report (`synth --suite heldout`).
The pretraining corpus (`--suite pretrain`) does not contain them either."""

DEV_FAMILIES = tuple(name for name in FAMILIES if name not in HELDOUT_FAMILIES)
"""The development families: every method choice is made on these (`synth --suite dev`)."""

HELDOUT_FAULTS = tuple(dict.fromkeys(f for name in HELDOUT_FAMILIES for m in MACHINES
                                     for f in FAMILIES[name].faults(m)))
"""FROZEN held-out fault kinds (those of the held-out families); no development family has them."""


def family(name: str) -> Family:
    """The family called `name`; a clear error for an unknown one."""
    if name not in FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[name]
