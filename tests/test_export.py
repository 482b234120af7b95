"""aiot_w2v2.export: ONNX parity with torch, dynamic axes, int8, the bundle contract, the CLIs, the demo's edge stage.

A tiny random pretraining model, fitted on a tiny synthetic set (1 s windows), exported once per module.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from aiot_edge.bundle import Bundle, BundleError, write_bundle_json
from aiot_edge.cli import main as edge_main
from aiot_edge.runtime import Scorer
from conftest import save_tiny_pretraining_run

from aiot_w2v2.anomaly.finetune import AnomalyFinetuneConfig
from aiot_w2v2.anomaly.fit import fit_scoring
from aiot_w2v2.anomaly.scoring_model import ScoringConfig, load_scoring_model
from aiot_w2v2.cli import main as cli_main
from aiot_w2v2.export import ExportError, check_parity, export_bundle, narrow_model, session
from aiot_w2v2.synth import generate_dataset

# every scorer, with a fine-tuned embedder for the learned one (a few updates: the export, not its quality)
CFG = ScoringConfig(window_seconds=1.0, hop_seconds=0.5, folds=2, bank_frames=64, max_knn_windows=64,
                    ensemble=("mahalanobis", "contrastive_bank"), decision_scorer="ensemble",
                    finetune=AnomalyFinetuneConfig(part="transformer", steps=3, batch_windows=4, crop_seconds=0.5,
                                                   warmup_steps=1, embedding_dim=8, min_clips=2))
CONTRACT = {"file", "machine", "machine_id", "window_start", "window_end", "scores", "score", "anomaly"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, machines=["fan", "valve"], ids_per_machine=1, n_train=4, n_test_normal=2,
                     n_test_anomaly=2, seconds=2.0, progress=False)
    return root


@pytest.fixture(scope="module")
def fitted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = save_tiny_pretraining_run(tmp_path_factory.mktemp("run"))
    out = tmp_path_factory.mktemp("fitted") / "model"
    torch.set_num_threads(1)
    fit_scoring(run, data, out, CFG, progress=False)
    return out


@pytest.fixture(scope="module")
def fp32_bundle(fitted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(fitted, tmp_path_factory.mktemp("b") / "fp32", quantize="none", progress=False)


@pytest.fixture(scope="module")
def int8_bundle(fitted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(fitted, tmp_path_factory.mktemp("b") / "int8", quantize="int8", progress=False)


def _windows(data: Path, seconds: float, n: int) -> np.ndarray:
    import soundfile as sf

    clips = sorted((data / "fan" / "test").glob("*.wav")) + sorted((data / "valve" / "test").glob("*.wav"))
    return np.stack([sf.read(c, dtype="float32")[0][: int(seconds * 16000)] for c in clips[:n]])


def test_onnx_matches_torch_with_dynamic_batch_and_length(fitted: Path, fp32_bundle: Path, data: Path) -> None:
    model = load_scoring_model(fitted)
    assert model.embedder is not None and "learned" in model.meta.config.scorers  # the fine-tuned encoder too
    sess = session(fp32_bundle / "model.onnx")
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("audio", "scores")
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[1], str) and isinstance(out.shape[0], str)
    assert out.shape[1] == len(model.columns)
    for seconds in (1.0, 1.5):  # the window the model was fitted on, and another length
        x = _windows(data, seconds, 3)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        for batch in (x[:1], x):  # batch 1 and 3
            got = sess.run(["scores"], {"audio": batch})[0]
            assert got.shape == (len(batch), len(model.columns))
            np.testing.assert_allclose(got, ref[: len(batch)], rtol=1e-4, atol=1e-4)


def test_a_conv_finetuned_model_exports_with_its_fine_tuned_blocks(data: Path, tmp_path: Path) -> None:
    run = save_tiny_pretraining_run(tmp_path / "run")
    cfg = replace(CFG, scorers=("mahalanobis", "learned", "spectral"), ensemble=("spectral", "learned"),
                  decision_scorer="ensemble", finetune=replace(CFG.finetune, part="conv"),
                  learned_layers=("conv0", "conv2"))
    fit_scoring(run, data, tmp_path / "m", cfg, progress=False)
    bundle = export_bundle(tmp_path / "m", tmp_path / "b", quantize="none", progress=False)  # checks parity
    model = load_scoring_model(tmp_path / "m")
    names = {i.name for i in onnx.load(str(bundle / "model.onnx")).graph.initializer}
    assert "frontends.shared.embedder.blocks.2.conv.weight" in names  # the fine-tuned copy travels
    assert not any(".encoder." in n for n in names)  # no Transformer: conv blocks and spectrograms only
    x = _windows(data, 1.0, 3)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session(bundle / "model.onnx").run(["scores"], {"audio": x})[0], ref,
                               rtol=1e-4, atol=1e-4)


def test_weight_norm_is_folded_into_a_plain_weight(fitted: Path, fp32_bundle: Path) -> None:
    model = load_scoring_model(fitted)
    graph = onnx.load(str(fp32_bundle / "model.onnx")).graph
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    name = "frontends.shared.model.wav2vec2.encoder.pos_conv.conv.weight"
    assert name in weights and not any("original0" in k or "original1" in k for k in weights)
    folded = model.frontend.model.wav2vec2.encoder.pos_conv.conv.weight.detach().numpy()  # g * v / |v|
    np.testing.assert_allclose(weights[name], folded, rtol=1e-6, atol=1e-7)


def test_bundle_json_follows_the_contract(fitted: Path, fp32_bundle: Path) -> None:
    model = load_scoring_model(fitted)
    bundle = Bundle.load(fp32_bundle)
    raw = bundle.raw
    assert raw["format"] == "aiot-w2v2-bundle" and raw["format_version"] == 1 and raw["created"].endswith("Z")
    assert (bundle.sample_rate, bundle.window, bundle.hop) == (16000, 16000, 8000)
    assert list(bundle.columns) == model.columns and set(bundle.machines) == {"fan/id_00", "valve/id_00"}
    fan = bundle.machines["fan/id_00"]
    assert fan.decision_scorer == "ensemble"
    assert [bundle.columns[c] for c in fan.scorers.values()] == [f"fan/id_00/{s}" for s in fan.scorers]
    assert fan.thresholds == {s: v["window"] for s, v in model.meta.thresholds["fan/id_00"].items()}
    assert set(fan.calibration) == set(CFG.scorers) and "std" in fan.calibration["knn"]
    assert raw["model"]["quantization"] == "none" and raw["model"]["opset"] == 17
    assert raw["training"]["config_hash"] == model.meta.info["config_hash"]
    parity = raw["verification"]["fp32"]
    # Mahalanobis over 15 training windows of a ~320-dim embedding amplifies float rounding (log-mel and
    # kurtosis of near-silent bands, STFT vs torch's FFT): 5.2e-4 here, within the export's tolerance
    assert parity["max_rel_diff"] < parity["tolerance"] == 1e-3
    assert parity["batch_sizes"] == [1, 3] and parity["window_lengths"][1] > 16000


def test_int8_bundle_loads_and_scores_close_to_fp32(fp32_bundle: Path, int8_bundle: Path, data: Path) -> None:
    bundle = Bundle.load(int8_bundle)
    assert bundle.quantization == "int8"
    v = bundle.raw["verification"]
    assert v["int8"]["quantized_nodes"] > 0 and v["int8"]["method"] == "dynamic"  # (too tiny to get smaller)
    x = _windows(data, 1.0, 8)
    fp32 = Scorer.from_bundle(Bundle.load(fp32_bundle)).score(x)
    int8 = Scorer.from_bundle(bundle).score(x)
    assert np.isfinite(int8).all()
    for j, name in enumerate(bundle.columns):
        scorer = name.rsplit("/", 1)[1]
        if scorer.startswith("code_") or scorer == "mahalanobis":
            np.testing.assert_allclose(int8[:, j], fp32[:, j], rtol=1e-5, atol=1e-5)  # their path stays fp32
        elif scorer == "knn":  # fp32 features, a float16-stored bank
            np.testing.assert_allclose(int8[:, j], fp32[:, j], rtol=1e-3, atol=1e-3)
        elif fp32[:, j].std() > 1e-6:
            assert np.corrcoef(int8[:, j], fp32[:, j])[0, 1] > 0.99, name


def test_int8_bundle_stores_weights_compactly_with_fp32_math(fp32_bundle: Path, int8_bundle: Path) -> None:
    fp32 = {i.name: i for i in onnx.load(str(fp32_bundle / "model.onnx")).graph.initializer}
    graph = onnx.load(str(int8_bundle / "model.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    ops = {n.output[0]: n for n in graph.node}
    T = onnx.TensorProto
    # Fitted statistics: float16 + Cast; the Mahalanobis precision stays float32.
    for name in ("stat_bank_targets", "stat_knn_bank"):
        assert name not in inits and inits[f"{name}_fp16"].data_type == T.FLOAT16 and ops[name].op_type == "Cast"
        want = onnx.numpy_helper.to_array(fp32[name])
        np.testing.assert_allclose(onnx.numpy_helper.to_array(inits[f"{name}_fp16"]), want, rtol=1e-3, atol=1e-4)
    assert inits["stat_maha_prec"].data_type == T.FLOAT
    # The positional conv: int8 per output channel, dequantized into the fp32 Conv (no ConvInteger).
    name = "frontends.shared.model.wav2vec2.encoder.pos_conv.conv.weight"
    q, scale = inits[f"{name}_int8"], inits[f"{name}_scale"]
    assert q.data_type == T.INT8 and ops[name].op_type == "DequantizeLinear"
    w = onnx.numpy_helper.to_array(q).astype(np.float32) * onnx.numpy_helper.to_array(scale)[:, None, None]
    np.testing.assert_allclose(w, onnx.numpy_helper.to_array(fp32[name]), atol=float(onnx.numpy_helper.to_array(
        scale).max()) / 2 + 1e-7)
    assert not any(n.op_type == "ConvInteger" for n in graph.node)
    # The code path stays fp32: feature-encoder convs.
    assert all(i.data_type == T.FLOAT for k, i in inits.items() if "feature_extractor" in k and k.endswith("weight"))
    info = Bundle.load(int8_bundle).raw["verification"]["int8"]["weight_only"]
    assert info["int8_weights"] >= 1 and info["fp16_stats"] == 2 and info["stored_bytes"] < info["fp32_bytes"] / 2
    v = Bundle.load(int8_bundle).raw["verification"]
    assert v["sizes_bytes"]["int8"] < v["sizes_bytes"]["fp32"]


def test_narrowed_bundle_keeps_the_columns_it_names(fitted: Path, data: Path) -> None:
    full = load_scoring_model(fitted)
    one = narrow_model(full, machines=["valve/id_00"], scorers=["mahalanobis", "code_hist"],
                       decision_scorer="mahalanobis")
    assert one.columns == ["valve/id_00/code_hist", "valve/id_00/mahalanobis"]
    x = torch.from_numpy(_windows(data, 1.0, 2))
    with torch.inference_mode():
        want = full(x)[:, [full.columns.index(c) for c in one.columns]]
        torch.testing.assert_close(one(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="decision scorer 'ensemble'"):
        narrow_model(full, scorers=["mahalanobis", "knn"])  # the ensemble needs contrastive_bank
    with pytest.raises(ExportError, match="the model serves"):
        narrow_model(full, machines=["pump/id_00"])


def test_an_alerts_only_bundle_runs_the_first_conv_layer_alone(fitted: Path, fp32_bundle: Path, data: Path,
                                                                tmp_path: Path) -> None:
    small = export_bundle(fitted, tmp_path / "maha", quantize="int8", machines=["fan/id_00"],
                          scorers=["mahalanobis"], decision_scorer="mahalanobis", progress=False)
    graph = onnx.load(str(small / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "Softmax" not in ops and "ArgMax" not in ops  # no Transformer, no codes
    # conv0, the log-mel branch and the spectral kurtosis, nothing deeper
    assert ops.count("Conv") == 1 and ops.count("STFT") == 2
    x = _windows(data, 1.0, 3)
    full_bundle = Bundle.load(fp32_bundle)
    full, alone = Scorer.from_bundle(full_bundle), Scorer.from_bundle(Bundle.load(small))
    want = full.score(x)[:, full_bundle.columns.index("fan/id_00/mahalanobis")]
    np.testing.assert_allclose(alone.score(x)[:, 0], want, rtol=1e-4, atol=1e-4)


def test_parity_check_refuses_a_model_that_does_not_match(fitted: Path, fp32_bundle: Path, data: Path) -> None:
    model = load_scoring_model(fitted)
    model.stat_maha_mean.add_(1.0)  # torch now scores differently from the exported graph
    with pytest.raises(ExportError, match="disagree"):
        check_parity(session(fp32_bundle / "model.onnx"), model, _windows(data, 1.0, 3))


def test_aiot_edge_score_prints_one_json_line_per_window(int8_bundle: Path, data: Path, capsys) -> None:
    clip = sorted((data / "fan" / "test").glob("anomaly_*.wav"))[0]
    assert edge_main(["score", "--bundle", str(int8_bundle), str(clip)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3  # 2 s clip, 1 s windows every 0.5 s
    assert all(set(r) >= CONTRACT for r in rows)
    assert (rows[0]["machine"], rows[0]["machine_id"]) == ("fan", "id_00")  # read from the DCASE path
    assert [r["window_start"] for r in rows] == [0.0, 0.5, 1.0] and rows[-1]["window_end"] == 2.0
    assert rows[0]["score"] == rows[0]["scores"]["ensemble"] and isinstance(rows[0]["anomaly"], bool)


def test_tampered_model_is_refused(int8_bundle: Path, data: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(bad)
    clip = next((data / "fan" / "test").glob("*.wav"))
    assert edge_main(["score", "--bundle", str(bad), str(clip)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err


def test_cli_export_end_to_end_with_static_int8(fitted: Path, data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bundle"
    assert cli_main(["export", "--model", str(fitted), "--out", str(out), "--calibration", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx  fp32" in printed and "parity" in printed and str(out) in printed
    bundle = Bundle.load(out)
    assert bundle.quantization == "int8-static" and bundle.raw["verification"]["int8"]["calibration_windows"] > 0
    assert cli_main(["export", "--model", str(fitted), "--out", str(tmp_path / "x"), "--quantize", "none",
                     "--calibration", str(data), "--quiet"]) == 2  # calibration is for int8 only


def test_edge_stage_of_the_demo_returns_the_alerts(int8_bundle: Path, data: Path, tmp_path: Path) -> None:
    from aiot_w2v2.edge_demo import run_edge_stage

    # Every window is over a threshold below any score (bundle.json is not covered by the sha256): a Mahalanobis
    # distance is > 0, and thresholds must be >= 0 (the ensemble's z-scores can be negative).
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    raw = json.loads((bundle / "bundle.json").read_text())
    raw["machines"]["fan/id_00"]["decision_scorer"] = "mahalanobis"
    raw["machines"]["fan/id_00"]["thresholds"]["mahalanobis"] = 0.0
    write_bundle_json(bundle, raw)
    files = sorted((data / "fan" / "test").glob("*.wav"))[:2]
    alerts = run_edge_stage(bundle, files, "fan", "id_00", timeout_s=60,
                            overrides={"decision.k": 1, "decision.n": 1, "decision.cooldown_s": 0.0}, echo=False)
    assert len(alerts) == 1  # every window over the threshold: one episode, one alert (k-of-n debounce)
    a = alerts[0]
    assert (a["machine"], a["machine_id"], a["scorer"], a["threshold"]) == ("fan", "id_00", "mahalanobis", 0.0)
    assert {"ts", "score", "severity", "window_start", "window_end", "model", "device"} <= set(a)


def test_an_opset_without_stft_is_refused_for_the_log_mel_branch(fitted: Path, tmp_path: Path) -> None:
    from aiot_w2v2.export import export_onnx

    model = load_scoring_model(fitted)
    assert model.meta.config.mel_bins > 0
    with pytest.raises(ExportError, match="STFT, which needs opset >= 17"):
        export_onnx(model, tmp_path / "m.onnx", opset=16)
    assert not (tmp_path / "m.onnx").exists()
    model.meta.config = replace(model.meta.config, mel_bins=0)  # the spectral kurtosis alone needs it too
    with pytest.raises(ExportError, match=r"spectral kurtosis \(kurtosis_bands=24\).*opset >= 17"):
        export_onnx(model, tmp_path / "m.onnx", opset=16)
