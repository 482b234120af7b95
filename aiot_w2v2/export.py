"""`aiot-w2v2 export`: a fitted `ScoringModel` -> an edge bundle folder (model.onnx + bundle.json).

1. Optionally narrow the model to some machine IDs and scorers. The daemon listens to one machine,
   and every machine ID a bundle carries costs scorer time; a bundle without the contrastive scorers
   has no use for the context network, and tracing drops the Transformer passes altogether.
2. Fold the positional conv's weight norm into a plain weight and trace to ONNX with the TorchScript
   exporter (the `torch.export` one needs onnxscript, which this project does not depend on): input
   `audio` float32 [batch, samples], output `scores` float32 [batch, n_columns], both axes dynamic.
3. Check onnxruntime against torch on a few windows, with another batch size and another window
   length among them, and refuse a model whose fp32 scores differ by more than `tolerance`.
4. int8 (`aiot_w2v2.quantize`): dynamic int8 of the network's weight MatMuls, or static QDQ calibrated
   on normal clips; then weight-only storage (int8 positional conv / final_proj, fp16 banks, fp32 math);
   the Mahalanobis statistics, the feature encoder and the quantizer's code logits stay fp32.
5. Write model.onnx and bundle.json (docs/bundle.md) with the thresholds, calibration, provenance and
   the verification numbers; the bundle is read back with `aiot_edge.bundle.Bundle.load` before
   this returns.

It knows nothing about MQTT or the daemon.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from aiot_edge.bundle import FORMAT, FORMAT_VERSION, Bundle, sha256_file, write_bundle_json
from torch.nn.utils import parametrize

from .anomaly.clips import clip_windows
from .anomaly.scorers import ENSEMBLE
from .anomaly.scoring_model import (
    SHARED,
    ScoringModel,
    embedder_skeleton,
    entry_key,
    load_scoring_model,
    pretrained_copies,
)
from .quantize import quantize_dynamic_int8, quantize_static_int8

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
FP32_TOLERANCE = 1e-3  # max |onnx - torch| / max(1, |torch|); measured ~1e-6 (benchmarks/RESULTS.md)
MIN_OPSET = 14  # scaled_dot_product_attention exports from opset 14


class ExportError(ValueError):
    """The exported model does not reproduce the torch scores, or the request cannot be met."""


# ---------------------------------------------------------------------------------------------------
# model preparation


def narrow_model(model: ScoringModel, machines: Sequence[str] | None = None, scorers: Sequence[str] | None = None,
                 decision_scorer: str | None = None) -> ScoringModel:
    """A `ScoringModel` with only `machines` ("fan/id_00") and `scorers`; None keeps all.

    The ensemble stays when all its members stay; otherwise `decision_scorer` must name a kept scorer.
    """
    meta, cfg = model.meta, model.meta.config
    keys = [entry_key(*e) for e in meta.entries]
    rows = list(range(len(keys)))
    if machines is not None:
        unknown = [m for m in machines if m not in keys]
        if unknown or not machines:
            raise ExportError(f"machines {unknown or '(none)'}: the model serves {', '.join(keys)}")
        rows = [keys.index(m) for m in machines]
    kept = tuple(cfg.scorers) if scorers is None else tuple(s for s in cfg.scorers if s in scorers)
    if scorers is not None:
        unknown = [s for s in scorers if s not in cfg.scorers and s != ENSEMBLE]
        if unknown or not kept:
            raise ExportError(f"scorers {unknown or '(none)'}: the model has {', '.join(cfg.columns_per_entry())}")
    ensemble = cfg.ensemble if set(cfg.ensemble) <= set(kept) else ()
    decision = decision_scorer or cfg.decision_scorer
    new_cfg = dataclasses.replace(cfg, scorers=kept, ensemble=ensemble, decision_scorer=decision)
    if decision not in new_cfg.columns_per_entry():
        raise ExportError(f"decision scorer {decision!r} is not in the bundle (columns: "
                          f"{', '.join(new_cfg.columns_per_entry())}); the ensemble needs {', '.join(cfg.ensemble)}")
    if rows == list(range(len(keys))) and new_cfg == cfg:
        return model
    index = torch.tensor(rows)
    stats = {name: value.index_select(0, index) for name, value in model.stats().items()}  # (E', ...)
    entries = [meta.entries[i] for i in rows]
    keys_needed = sorted({meta.frontend_of(m) for m, _ in entries})
    new_meta = dataclasses.replace(meta, config=new_cfg, entries=entries, frontends=keys_needed)
    embedder = model.embedder if new_cfg.finetuned() and SHARED in keys_needed else None
    return ScoringModel({k: model.frontends[k].model for k in keys_needed}, new_meta, stats, embedder).eval()


def fold_weight_norm(model: ScoringModel) -> ScoringModel:
    """A copy with every parametrization (the positional conv's weight norm) replaced by its plain weight."""
    # A rebuilt copy, not copy.deepcopy: a deep copy shares the parametrized class with the original,
    # and removing the parametrization from the copy's class would break the original.
    copy = ScoringModel(pretrained_copies(model.meta), model.meta, {k: v.clone() for k, v in model.stats().items()},
                        embedder_skeleton(model.meta))
    copy.load_state_dict(model.state_dict(), strict=True)
    model = copy.eval()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model.eval()


def export_onnx(model: ScoringModel, path: str | Path, opset: int = 17) -> Path:
    """Trace `model` to ONNX at `path`: audio [batch, samples] -> scores [batch, n_columns], dynamic axes."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset}: at least {MIN_OPSET} is needed (attention)")
    cfg = model.meta.config
    if opset < 17 and (cfg.mel_bins or cfg.kurtosis_bands):
        branch = f"the log-mel branch (mel_bins={cfg.mel_bins})" if cfg.mel_bins else \
            f"the spectral kurtosis (kurtosis_bands={cfg.kurtosis_bands})"
        raise ExportError(f"opset {opset}: {branch} exports as STFT, which needs opset >= 17")
    model = fold_weight_norm(model)
    example = torch.zeros(2, model.meta.window)  # two windows: batch 1 would invite a traced batch size
    with warnings.catch_warnings(), torch.inference_mode():
        # TracerWarnings here are about the group count and codebook size turning into constants
        # (they are fixed by the model), and the index warning about negative indices (codes are >= 0).
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["audio"], output_names=["scores"],
                          dynamic_axes={"audio": {0: "batch", 1: "samples"}, "scores": {0: "batch"}},
                          opset_version=opset, do_constant_folding=True)
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# probe windows and parity


def normal_clips(folders: Sequence[str | Path], machines: Sequence[str] | None = None) -> list[str]:
    """Normal (or unlabelled) clips under `folders`, training split first, those of `machines` if any match."""
    from .data.manifest import build_manifest

    folders = [f for f in folders if Path(f).is_dir()]
    if not folders:
        return []
    m = build_manifest(list(folders))
    m = m[m["label"].fillna("normal") == "normal"]
    if machines:
        keys = [f"{a}/{b}" for a, b in zip(m["machine"], m["machine_id"].fillna(""), strict=True)]
        mine = m[[k in machines for k in keys]]
        m = mine if not mine.empty else m
    m = m.assign(order=(m["split"] != "train").astype(int)).sort_values(["order", "path"], kind="stable")
    return list(m["path"])


def probe_windows(model: ScoringModel, clips: Sequence[str], n: int, seed: int = 0, fill: bool = True) -> np.ndarray:
    """(<= n, window) float32: windows of clips spread over `clips` (several per clip when there are few).

    With `fill`, missing windows (no usable clips) are seeded machine-like hums in noise, so a parity
    check always has `n` windows; calibration passes `fill=False` and gets real audio only.
    """
    window, hop, sr = model.meta.window, model.meta.hop, model.meta.sample_rate
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    if clips:
        per_clip = -(-n // len(clips))  # ceil
        for i in np.unique(np.linspace(0, len(clips) - 1, num=min(n, len(clips))).astype(int)):
            try:
                w = clip_windows(clips[i], window, hop, model.frontend.min_samples, sr)
            except (OSError, ValueError) as exc:
                log.warning("probe window skipped: %s", exc)
                continue
            if w.shape[1] == window:
                out += list(w[rng.permutation(w.shape[0])[:per_clip]])
    t = np.arange(window) / sr
    while fill and len(out) < n:
        f0 = rng.uniform(50, 400)
        x = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) for k in range(1, 6))
        out.append((x + 0.05 * rng.standard_normal(window)).astype(np.float32))
    if not out:
        raise ExportError(f"no window of {window} samples in {len(clips)} clip(s)")
    return np.stack(out[:n]).astype(np.float32)


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    return sess.run(["scores"], {"audio": np.ascontiguousarray(windows, dtype=np.float32)})[0]


def torch_scores(model: ScoringModel, windows: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(windows)).numpy()


def check_parity(sess: ort.InferenceSession, model: ScoringModel, windows: np.ndarray,
                 tolerance: float = FP32_TOLERANCE) -> dict[str, Any]:
    """onnxruntime vs torch on `windows` (one by one, as a batch of 3, and cut to a longer window)."""
    ref = torch_scores(model, windows)  # (n, C)
    batch = [run(sess, windows[i: i + 1])[0] for i in range(len(windows))]
    got = np.stack(batch)
    if len(windows) >= 3:
        got3 = run(sess, windows[:3])
        got = np.concatenate([got, got3])
        ref = np.concatenate([ref, ref[:3]])
    # Another window length: two windows glued, cut to window + hop samples (dynamic time axis).
    longer = np.concatenate([windows[:1], windows[-1:]], 1)[:, : model.meta.window + model.meta.hop]
    got = np.concatenate([got, run(sess, longer)])
    ref = np.concatenate([ref, torch_scores(model, longer)])
    if not np.isfinite(got).all() or not np.isfinite(ref).all():
        raise ExportError(f"non-finite scores: onnxruntime {int((~np.isfinite(got)).sum())}, torch "
                          f"{int((~np.isfinite(ref)).sum())} of {got.size}")
    diff = np.abs(got - ref)
    rel = diff / np.maximum(1.0, np.abs(ref))
    worst = np.unravel_index(rel.argmax(), rel.shape)
    info = dict(windows=int(got.shape[0]), batch_sizes=[1, 3] if len(windows) >= 3 else [1],
                window_lengths=[model.meta.window, int(longer.shape[1])], max_abs_diff=float(diff.max()),
                max_rel_diff=float(rel.max()), tolerance=tolerance, worst_column=model.columns[worst[1]])
    if info["max_rel_diff"] > tolerance:
        raise ExportError(f"onnxruntime and torch disagree: max |diff| / max(1, |score|) = {info['max_rel_diff']:.3g} "
                          f"(column {info['worst_column']}) > {tolerance:g}. A code argmax near a tie can flip; "
                          "if the other columns agree, retry with another opset or report the model")
    return info


def compare_int8(model: ScoringModel, fp32: np.ndarray, int8: np.ndarray) -> dict[str, Any]:
    """int8 vs fp32 scores per scorer: max |diff|, also in units of the scorer's normal spread (calibration std)."""
    per_entry = model.meta.config.columns_per_entry()
    n = len(per_entry)
    diff = np.abs(int8 - fp32).reshape(len(fp32), -1, n)  # (windows, E, scorers)
    scale = np.ones((len(model.meta.entries), n))
    for e, (machine, machine_id) in enumerate(model.meta.entries):
        cal = model.meta.calibration.get(entry_key(machine, machine_id), {})
        for j, s in enumerate(per_entry):
            if s in cal:  # the ensemble is in z units already
                scale[e, j] = max(cal[s]["std"], 1e-8)
    std_units = diff / scale[None]
    return dict(windows=int(len(fp32)), finite=bool(np.isfinite(int8).all()),
                max_abs_diff={s: float(diff[..., j].max()) for j, s in enumerate(per_entry)},
                max_diff_in_std={s: float(std_units[..., j].max()) for j, s in enumerate(per_entry)})


# ---------------------------------------------------------------------------------------------------
# bundle


def bundle_json(model: ScoringModel, sha256: str, opset: int, quantization: str, name: str,
                verification: dict[str, Any], created: datetime) -> dict[str, Any]:
    """bundle.json per docs/bundle.md: window-level thresholds (the edge scores windows, not clips)."""
    meta, cfg = model.meta, model.meta.config
    per_entry = cfg.columns_per_entry()
    machines = {}
    for e, (machine, machine_id) in enumerate(meta.entries):
        key = entry_key(machine, machine_id)
        th = meta.thresholds.get(key, {})
        missing = [s for s in per_entry if s not in th]
        if missing:
            raise ExportError(f"{key}: no thresholds for {', '.join(missing)} in scoring.json (refit the model)")
        machines[key] = dict(
            machine=machine, machine_id=machine_id,
            scorers={s: e * len(per_entry) + j for j, s in enumerate(per_entry)},
            decision_scorer=cfg.decision_scorer,
            thresholds={s: float(th[s]["window"]) for s in per_entry},
            calibration={s: dict(mean=float(v["mean"]), std=float(v["std"]))
                         for s, v in meta.calibration.get(key, {}).items() if s in per_entry})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sample_rate": meta.sample_rate, "window": meta.window, "hop": meta.hop,
        "columns": list(model.columns),
        "machines": machines,
        "model": {"file": MODEL_FILE, "sha256": sha256, "opset": opset, "quantization": quantization, "name": name},
        "training": {"config_hash": meta.info.get("config_hash"), "run": meta.info.get("run")},
        "scoring": {"threshold": {"level": "window", "method": "gamma", "percentile": cfg.threshold_percentile},
                    "ensemble": list(cfg.ensemble), "calibration": "mean, std of out-of-fold normal windows"},
        "verification": verification,
    }


def export_bundle(model_dir: str | Path, out: str | Path, quantize: str = "int8", calibration: str | Path | None = None,
                  opset: int = 17, progress: bool = True, *, machines: Sequence[str] | None = None,
                  scorers: Sequence[str] | None = None, decision_scorer: str | None = None, name: str | None = None,
                  probe: int = 6, tolerance: float = FP32_TOLERANCE) -> Path:
    """Export the model folder `model_dir` (from `aiot-w2v2 fit`) to the bundle folder `out`; returns `out`.

    quantize "int8": dynamic int8 weights, or static QDQ calibrated on the normal clips under `calibration`;
    "none": fp32. `machines` / `scorers` / `decision_scorer` narrow the bundle (see `narrow_model`).
    """
    if quantize not in ("int8", "none"):
        raise ExportError(f"quantize must be 'int8' or 'none', got {quantize!r}")
    if calibration is not None and quantize != "int8":
        raise ExportError("--calibration is for static int8; it needs --quantize int8")
    if calibration is not None and not Path(calibration).is_dir():
        raise FileNotFoundError(f"--calibration {calibration}: no such folder")
    t0 = time.time()
    say = print if progress else (lambda *a, **k: None)
    out = Path(out)
    steps = 5 if quantize == "int8" else 4

    say(f"[1/{steps}] loading {model_dir}")
    model = narrow_model(load_scoring_model(model_dir), machines, scorers, decision_scorer)
    keys = [entry_key(*e) for e in model.meta.entries]
    data = [calibration] if calibration is not None else model.meta.info.get("data") or []
    windows = probe_windows(model, normal_clips(data, keys), probe)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:  # same file system as out
        fp32_path = Path(tmp) / "fp32.onnx"
        say(f"[2/{steps}] tracing to ONNX (opset {opset}, {len(model.columns)} columns)")
        export_onnx(model, fp32_path, opset)
        say(f"[3/{steps}] checking onnxruntime against torch on {len(windows)} windows")
        fp32_sess = session(fp32_path)
        parity = check_parity(fp32_sess, model, windows, tolerance)
        verification: dict[str, Any] = {"fp32": parity}
        sizes = {"fp32": fp32_path.stat().st_size}
        final, quantization = fp32_path, "none"
        if quantize == "int8":
            int8_path = Path(tmp) / "int8.onnx"
            if calibration is not None:
                clips = normal_clips([calibration], keys)
                if not clips:
                    raise ExportError(f"--calibration {calibration}: no normal clips found")
                calib = probe_windows(model, clips, 64, seed=1, fill=False)
                say(f"[4/{steps}] static int8 (QDQ) of the Transformer's MatMuls, calibrated on {len(calib)} "
                    f"windows of {len(clips)} clips")
                qinfo = quantize_static_int8(fp32_path, int8_path, calib, Path(tmp))
            else:
                say(f"[4/{steps}] dynamic int8 of the Transformer's MatMuls")
                qinfo = quantize_dynamic_int8(fp32_path, int8_path, Path(tmp))
            if qinfo["method"] == "none":
                say("      nothing to quantize (no Transformer in this bundle: no contrastive scorer); stays fp32")
                verification["int8"] = qinfo
            else:
                quantization = "int8" if qinfo["method"] == "dynamic" else "int8-static"
                int8_sess = session(int8_path)
                fp32_scores = np.stack([run(fp32_sess, windows[i: i + 1])[0] for i in range(len(windows))])
                int8_scores = np.stack([run(int8_sess, windows[i: i + 1])[0] for i in range(len(windows))])
                verification["int8"] = {**compare_int8(model, fp32_scores, int8_scores), **qinfo}
                if not verification["int8"]["finite"]:
                    raise ExportError("the int8 model returns NaN/Inf scores; export with --quantize none")
                sizes["int8"] = int8_path.stat().st_size
                final = int8_path
        verification["sizes_bytes"] = sizes
        say(f"[{steps}/{steps}] writing {out}")
        out.mkdir(parents=True, exist_ok=True)
        os.replace(final, out / MODEL_FILE)

    created = datetime.now(timezone.utc)
    run_name = Path(str(model.meta.info.get("run") or model_dir)).name
    name = name or f"{run_name}-{created:%Y-%m-%d}"
    write_bundle_json(out, bundle_json(model, sha256_file(out / MODEL_FILE), opset, quantization, name,
                                       verification, created))
    bundle = Bundle.load(out)  # what the daemon will do: refuse now rather than on the device
    if progress:
        _print_summary(bundle, model, verification, time.time() - t0)
    return out


def _print_summary(bundle: Bundle, model: ScoringModel, v: dict[str, Any], seconds: float) -> None:
    cfg = model.meta.config
    sizes = v["sizes_bytes"]
    p = v["fp32"]
    keys = list(bundle.machines)
    print()
    print(f"bundle      {bundle.path}  ({bundle.name}, {bundle.quantization}, opset {bundle.opset})")
    print(f"machines    {len(keys)}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    print(f"scorers     {', '.join(cfg.columns_per_entry())}; alerts from {cfg.decision_scorer}")
    print(f"windows     {bundle.window_s:g} s every {bundle.hop_s:g} s at {bundle.sample_rate} Hz")
    size = f"fp32 {sizes['fp32'] / 1e6:.2f} MB"
    if "int8" in sizes:
        size += f" -> int8 {sizes['int8'] / 1e6:.2f} MB ({100 * sizes['int8'] / sizes['fp32']:.0f}%)"
    print(f"model.onnx  {size}")
    print(f"parity      fp32 vs torch: max |diff| {p['max_abs_diff']:.2g} (relative {p['max_rel_diff']:.2g}, "
          f"tolerance {p['tolerance']:g}) over {p['windows']} windows, batch {p['batch_sizes']}, "
          f"lengths {p['window_lengths']}")
    if "max_diff_in_std" in v.get("int8", {}):
        q = v["int8"]["max_diff_in_std"]
        worst = max(q, key=q.get)
        print(f"int8        {v['int8']['quantized_nodes']} Transformer MatMuls int8 ({v['int8']['method']}), "
              f"{len(v['int8']['kept_fp32'])} other weight MatMuls fp32")
        print(f"            vs fp32, max |diff| in std of normal scores: {cfg.decision_scorer} "
              f"{q[cfg.decision_scorer]:.3f}, worst {worst} {q[worst]:.3f}")
    print(f"exported in {seconds:.0f} s; check it with: aiot-edge score --bundle {bundle.path} FILE.wav")
