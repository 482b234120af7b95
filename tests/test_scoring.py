"""Anomaly scorers, ScoringModel, `fit` and `evaluate` on a tiny random model and tiny synthetic data."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import save_tiny_pretraining_run
from sklearn.covariance import LedoitWolf, ShrunkCovariance

from aiot_w2v2.anomaly.clips import ClipTooShort, clip_windows
from aiot_w2v2.anomaly.embedder import AnomalyEmbedder, ConvEmbedder
from aiot_w2v2.anomaly.evaluate import evaluate
from aiot_w2v2.anomaly.finetune import AnomalyFinetuneConfig
from aiot_w2v2.anomaly.fit import extract, fit_scoring
from aiot_w2v2.anomaly.frontend import ScoringFrontend
from aiot_w2v2.anomaly.scorers import score_windows, stack_stats
from aiot_w2v2.anomaly.scoring_model import ScoringConfig, load_scoring_config, load_scoring_model
from aiot_w2v2.cli import main as cli_main
from aiot_w2v2.config import ConfigError
from aiot_w2v2.synth import generate_dataset

# a few updates of fine-tuning on short crops: seconds, not minutes
FAST_FINETUNE = AnomalyFinetuneConfig(part="transformer", steps=3, batch_windows=4, crop_seconds=0.5, warmup_steps=1,
                                      embedding_dim=8, min_clips=2)
CFG = ScoringConfig(window_seconds=1.0, hop_seconds=0.5, folds=2, bank_frames=64, max_knn_windows=64,
                    finetune=FAST_FINETUNE)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, machines=["fan", "valve"], ids_per_machine=1, n_train=5, n_test_normal=2,
                     n_test_anomaly=2, seconds=2.0, progress=False)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pretraining_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def fitted(run: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fitted") / "model"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that refit and compare (fine-tuning's sums depend on the threads)
    fit_scoring(run, data, out, CFG, progress=False)
    torch.set_num_threads(before)
    return out


def test_fit_saves_a_model_that_reloads_to_the_same_scores(fitted: Path, data: Path) -> None:
    model = load_scoring_model(fitted)
    meta = json.loads((fitted / "scoring.json").read_text())
    assert meta["format"] == "aiot-w2v2-scoring" and meta["entries"] == [["fan", "id_00"], ["valve", "id_00"]]
    per_entry = CFG.columns_per_entry()
    assert model.columns == [f"{m}/id_00/{s}" for m in ("fan", "valve") for s in per_entry]
    for key in ("fan/id_00", "valve/id_00"):
        assert set(meta["thresholds"][key]) == set(per_entry)
        assert all(np.isfinite([v["window"], v["clip"]]).all() for v in meta["thresholds"][key].values())
        assert meta["info"]["counts"][key]["clips"] == 5
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        a, b = model(x), load_scoring_model(fitted)(x)
        one = model(x[:1])
    assert a.shape == (x.shape[0], len(model.columns)) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # deterministic, and saved/loaded exactly
    torch.testing.assert_close(one[0], a[0], rtol=1e-5, atol=1e-5)  # a window's score does not depend on its batch


def test_embedding_scorers_alone_stop_after_the_embedding_layer(run: Path, data: Path, fitted: Path,
                                                                 tmp_path: Path) -> None:
    cfg = replace(CFG, scorers=("knn", "mahalanobis"), ensemble=(), decision_scorer="mahalanobis")
    fit_scoring(run, data, tmp_path / "m", cfg, progress=False)
    small, full = load_scoring_model(tmp_path / "m"), load_scoring_model(fitted)
    x = torch.from_numpy(clip_windows(next((data / "valve" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        f = small.frontend(x)
        got, want = small(x), full(x)
    assert f.codes.shape[1] == 0 and f.self_loss.shape == (x.shape[0], 0)  # no frames: no Transformer, no codes
    for col in ("fan/id_00/mahalanobis", "valve/id_00/knn"):
        torch.testing.assert_close(got[:, small.columns.index(col)], want[:, full.columns.index(col)],
                                   rtol=1e-4, atol=1e-4)


def test_fixed_masks_cover_every_frame_once_and_give_the_masked_pass_context(run: Path, data: Path) -> None:
    from aiot_w2v2 import load_model

    pretrained = load_model(run / "checkpoint_last").eval()
    fe = ScoringFrontend(pretrained, mask_span=4, mask_patterns=3)
    x = torch.from_numpy(clip_windows(next((data / "fan" / "train").glob("*.wav")), 16000, 16000, 0))
    with torch.inference_mode():
        f = fe(x)
        w2v = pretrained.wav2vec2
        enc = w2v.encode(x)
        T = enc.features.shape[1]
        for p in range(3):
            masked = (torch.arange(T) // 4) % 3 == p
            inp = torch.where(masked[None, :, None], w2v.mask_emb, enc.projected)
            c = torch.nn.functional.normalize(pretrained.final_proj(w2v.encoder(inp, None)[-1]), dim=-1)
            torch.testing.assert_close(f.context[:, masked], c[:, masked], rtol=1e-4, atol=1e-5)
    assert f.self_loss.shape == (x.shape[0], T) and torch.isfinite(f.self_loss).all() and (f.self_loss >= 0).all()
    codes = pretrained.quantizer.codes(enc.features[0])
    assert torch.equal(f.codes[0], codes)


def test_rhythm_features_are_band_envelope_autocorrelations(run: Path, data: Path) -> None:
    from aiot_w2v2 import load_model

    pretrained = load_model(run / "checkpoint_last").eval()
    lags_ms = (20.0, 40.0, 300.0, 5000.0)  # the last is longer than the window: no overlap, 0
    fe = ScoringFrontend(pretrained, envelope_bands=3, envelope_frame_ms=10.0, envelope_lags_ms=lags_ms)
    x = torch.from_numpy(clip_windows(next((data / "valve" / "train").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        got = fe(x).embedding.double().numpy()
    conv = pretrained.wav2vec2.feature_extractor.blocks[0].conv
    w, stride = conv.weight.detach().double().numpy()[:, 0], conv.stride[0]  # (C, K)
    C, K = w.shape
    bias = 0.0 if conv.bias is None else conv.bias.detach().double().numpy()
    # bands: channels sorted by the spectral centroid of their filter, split into 3 contiguous groups
    power = np.abs(np.fft.rfft(w, n=256, axis=1)) ** 2
    order = np.argsort((power * np.arange(power.shape[1])).sum(1) / power.sum(1), kind="stable")
    bands = np.array_split(order, 3)
    assert sorted(np.concatenate(bands).tolist()) == list(range(C))
    frame = round(0.010 * 16000 / stride)
    for i, win in enumerate(x.double().numpy()):
        n = (win.size - K) // stride + 1
        pre = np.stack([win[t * stride: t * stride + K] for t in range(n)]) @ w.T + bias
        e = pre**2  # (T, C)
        m = (n // frame) * frame
        env = np.log(e[:m].reshape(-1, frame, C).mean(1) + 1e-10)  # (T', C)
        for b, idx in enumerate(bands):
            g = env[:, idx].mean(1)
            g = g - g.mean()
            for j, lag in enumerate(round(ms / 10.0) for ms in lags_ms):
                want = (g[:-lag] * g[lag:]).sum() / (g @ g) if lag < g.size else 0.0
                assert got[i, 2 * C + b * len(lags_ms) + j] == pytest.approx(want, abs=2e-3)
    off = ScoringFrontend(pretrained)  # envelope_bands=0: only the channel statistics
    with torch.inference_mode():
        assert off(x).embedding.shape[1] == 2 * C
    with pytest.raises(ValueError, match="envelope_bands"):
        ScoringFrontend(pretrained, envelope_bands=C + 1, envelope_lags_ms=(20.0,))


def test_log_mel_branch_matches_torchaudio_and_its_numpy_definition(run: Path, data: Path) -> None:
    import torchaudio

    from aiot_w2v2 import load_model

    pretrained = load_model(run / "checkpoint_last").eval()
    lags_ms = (20.0, 60.0, 5000.0)  # the last is longer than the window: 0
    fe = ScoringFrontend(pretrained, energy_smoothing_ms=40.0, envelope_bands=2, envelope_lags_ms=lags_ms,
                         mel_bins=16, mel_fft=256, mel_hop_ms=10.0)
    x = torch.from_numpy(clip_windows(next((data / "fan" / "train").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        got = fe(x).embedding.double().numpy()
        no_mel = ScoringFrontend(pretrained, energy_smoothing_ms=40.0, envelope_bands=2,
                                 envelope_lags_ms=lags_ms)(x).embedding.double().numpy()
    conv_dim = no_mel.shape[1]
    assert got.shape[1] == conv_dim + 2 * 16 + 2 * len(lags_ms)
    np.testing.assert_array_equal(got[:, :conv_dim], no_mel)  # the conv part is unchanged
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=256, hop_length=160, n_mels=16, center=False,
                                               power=2.0)(x).double().numpy()  # (B, 16, T)
    log_mel = np.log(mel + 1e-10)
    mean_log = log_mel.mean(2)
    mean_log -= mean_log.mean(1, keepdims=True)  # relative, like the conv energies
    T = mel.shape[2] // 4 * 4
    std_log = np.log(mel[:, :, :T].reshape(len(x), 16, -1, 4).mean(3) + 1e-10).std(2, ddof=1)  # 40 ms pools
    np.testing.assert_allclose(got[:, conv_dim:conv_dim + 16], mean_log, atol=2e-3)
    np.testing.assert_allclose(got[:, conv_dim + 16:conv_dim + 32], std_log, atol=2e-3)
    for i in range(len(x)):
        for b, rows in enumerate((slice(0, 8), slice(8, 16))):  # 2 contiguous bands of mel bins
            g = np.log(mel[i, rows].mean(0) + 1e-10)
            g = g - g.mean()
            for j, lag in enumerate(round(ms / 10.0) for ms in lags_ms):
                want = (g[:-lag] * g[lag:]).sum() / (g @ g) if lag < g.size else 0.0
                assert got[i, conv_dim + 32 + b * len(lags_ms) + j] == pytest.approx(want, abs=2e-3)
    with pytest.raises(ValueError, match="mel_bins"):
        ScoringFrontend(pretrained, mel_bins=200, mel_fft=256)
    with pytest.raises(ConfigError, match="mel_bins"):
        replace(CFG, mel_bins=1).validate()


def test_spectral_kurtosis_matches_torchaudio_and_rises_with_impacts(run: Path, data: Path) -> None:
    import torchaudio
    from torchaudio.functional import melscale_fbanks

    from aiot_w2v2 import load_model

    pretrained = load_model(run / "checkpoint_last").eval()
    fe = ScoringFrontend(pretrained, mel_bins=0, kurtosis_bands=12, kurtosis_fft=256, kurtosis_hop_ms=4.0)
    plain = ScoringFrontend(pretrained, mel_bins=0)
    x = torch.from_numpy(clip_windows(next((data / "fan" / "train").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        got = fe(x).embedding.double().numpy()
        conv = plain(x).embedding.double().numpy()
    conv_dim = conv.shape[1]
    assert got.shape[1] == conv_dim + 12
    np.testing.assert_array_equal(got[:, :conv_dim], conv)  # appended, the rest unchanged
    power = torchaudio.transforms.MelSpectrogram(16000, n_fft=256, hop_length=64, n_mels=12, center=False,
                                                 power=2.0)(x).double().numpy()  # (B, 12, T)
    want = np.log((power ** 2).mean(2) / power.mean(2) ** 2)
    np.testing.assert_allclose(got[:, conv_dim:], want, atol=1e-3)

    # Short impacts ringing at 3 kHz on steady noise: the kurtosis of the bands around 3 kHz rises, the
    # noise-only window stays near the Gaussian-noise value, and digital silence is 0 (a steady band).
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 16000)
    ring = np.sin(2 * np.pi * 3000 * np.arange(64) / 16000) * np.exp(-np.arange(64) / 16)
    impacts = noise.copy()
    for start in range(1000, 15000, 2500):
        impacts[start:start + 64] += 0.3 * ring
    batch = torch.tensor(np.stack([noise, impacts, np.zeros(16000)]), dtype=torch.float32)
    with torch.inference_mode():
        sk = fe(batch).embedding[:, conv_dim:].double().numpy()
    centres = melscale_fbanks(129, 0.0, 8000.0, 12, 16000).argmax(0).numpy() * 16000 / 256  # peak bin, Hz
    band = int(np.argmin(np.abs(centres - 3000)))
    assert sk[1, band] > sk[0, band] + 0.4  # 0.69 vs 0.09
    np.testing.assert_allclose(sk[1, :band - 1], sk[0, :band - 1], atol=0.05)  # the bands below: unchanged
    assert abs(sk[0, band]) < 0.2  # steady noise: near 0 (log 1)
    np.testing.assert_allclose(sk[2], 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="kurtosis_bands"):
        ScoringFrontend(pretrained, kurtosis_bands=200, kurtosis_fft=256)
    with pytest.raises(ConfigError, match="kurtosis_bands"):
        replace(CFG, kurtosis_bands=1).validate()
    with pytest.raises(ConfigError, match="kurtosis_bands"):
        replace(CFG, kurtosis_hop_ms=0.0).validate()


def test_scorers_equal_their_definitions(run: Path, data: Path) -> None:
    from aiot_w2v2 import load_model

    pretrained = load_model(run / "checkpoint_last").eval()
    fe = ScoringFrontend(pretrained, learned=True)  # CFG's scorers hold `learned`
    paths = [str(p) for p in sorted((data / "fan" / "train").glob("*.wav"))]
    per_clip, errors = extract(fe, paths, 16000, 8000, CFG, progress=False)
    assert not errors
    windows = [w for c in per_clip for w in c]
    from aiot_w2v2.anomaly.fit import _features_of, _fit

    stats = _fit(windows, CFG, pretrained.quantizer.num_vars, 0)
    f = _features_of(windows[:3])
    got = score_windows(f, stack_stats([stats]), CFG.scorers, fe.logit_temp, knn_k=1)
    emb = np.stack([w.embedding for w in windows]).astype(np.float64)
    cov = ShrunkCovariance(shrinkage=CFG.mahalanobis_shrinkage).fit(emb)
    np.testing.assert_allclose(got["mahalanobis"][:, 0].numpy(), np.sqrt(cov.mahalanobis(emb[:3])), rtol=1e-3)
    lw_stats = _fit(windows, replace(CFG, mahalanobis_shrinkage=None), pretrained.quantizer.num_vars, 0)
    lw = score_windows(f, stack_stats([lw_stats]), ("mahalanobis",), fe.logit_temp)["mahalanobis"][:, 0]
    np.testing.assert_allclose(lw.numpy(), np.sqrt(LedoitWolf().fit(emb).mahalanobis(emb[:3])), rtol=1e-3)
    # unigram NLL by hand, from counts with additive smoothing
    codes = np.concatenate([w.codes for w in windows])
    V = pretrained.quantizer.num_vars
    uni = np.stack([np.bincount(codes[:, g], minlength=V) + CFG.code_smoothing for g in range(codes.shape[1])])
    logp = np.log(uni / uni.sum(1, keepdims=True))
    c0 = windows[0].codes
    want = -np.mean([sum(logp[g, c0[t, g]] for g in range(c0.shape[1])) for t in range(c0.shape[0])])
    assert got["code_unigram"][0, 0].item() == pytest.approx(want, rel=1e-4)
    # a training window is its own nearest neighbour: kNN distance ~0
    assert got["knn"][:, 0].abs().max().item() < 1e-4
    assert (got["code_hist"] >= 0).all() and (got["code_hist"] <= np.log(2) * c0.shape[1] + 1e-5).all()


def test_the_learned_scorer_is_a_mahalanobis_distance_and_old_banks_still_score(run: Path, data: Path) -> None:
    from aiot_w2v2 import load_model
    from aiot_w2v2.anomaly.fit import _features_of, _fit

    pretrained = load_model(run / "checkpoint_last").eval()
    fe = ScoringFrontend(pretrained, learned=True, learned_layers=("conv0", "conv2"))
    paths = [str(p) for p in sorted((data / "fan" / "train").glob("*.wav"))]
    per_clip, _ = extract(fe, paths, 16000, 8000, CFG, progress=False)
    windows = [w for c in per_clip for w in c]
    learned = np.stack([w.learned for w in windows]).astype(np.float64)
    assert learned.shape[1] == 2 * (pretrained.wav2vec2.feature_extractor.blocks[0].conv.out_channels
                                    + pretrained.wav2vec2.feature_extractor.blocks[2].conv.out_channels)
    f = _features_of(windows[:3])
    z = (learned - learned.mean(0)) / (learned.std(0) + 1e-6)
    for shrinkage, cov in ((None, LedoitWolf()), (0.1, ShrunkCovariance(shrinkage=0.1))):
        stats = _fit(windows, replace(CFG, learned_shrinkage=shrinkage), pretrained.quantizer.num_vars, 0)
        got = score_windows(f, stack_stats([stats]), ("learned",), fe.logit_temp)["learned"][:, 0].numpy()
        np.testing.assert_allclose(got, np.sqrt(cov.fit(z).mahalanobis(z[:3])), rtol=1e-3)
    # A model fitted before (session 6) holds a bank of standardised unit-length windows instead, and its
    # learned score stays 1 - cosine similarity to the nearest: a training window is its own neighbour.
    mu, sd = learned.mean(0), learned.std(0) + 1e-6
    bank = z / np.linalg.norm(z, axis=1, keepdims=True)
    old = stack_stats([dict(lrn_mean=mu.astype(np.float32), lrn_std=sd.astype(np.float32),
                            lrn_bank=bank.astype(np.float32), maha_mean=np.zeros(1, np.float32))])
    got = score_windows(f, old, ("learned",), fe.logit_temp)["learned"][:, 0]
    assert got.abs().max().item() < 1e-4


def test_fit_never_reads_test_clips(run: Path, data: Path, fitted: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    for p in broken.glob("*/test/*.wav"):
        p.write_bytes(b"not audio")  # any read of a test clip would now fail or change the statistics
    with pytest.warns(UserWarning, match="skipped 8 unreadable"):  # the manifest's header probe notices them
        fit_scoring(run, broken, tmp_path / "model", CFG, progress=False)
    a = load_scoring_model(fitted).state_dict()
    b = load_scoring_model(tmp_path / "model").state_dict()
    assert a.keys() == b.keys()
    for k in a:  # statistics exactly equal; the calibration's float sums up to rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6) if k.startswith("cal_") else \
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_evaluate_writes_the_contract_files(fitted: Path, data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    res = evaluate(fitted, data, out, progress=True)
    assert list(res.columns) == ["machine", "machine_id", "scorer", "auc", "pauc"]
    per_entry = CFG.columns_per_entry()
    assert len(res) == 2 * 2 * len(per_entry)  # (id_00, all) x 2 machines x scorers
    assert set(res.machine_id) == {"id_00", "all"} and res.auc.between(0, 1).all()
    for name in ("results.csv", "results_extended.csv", "scores.csv", "report.html", "evaluation.json",
                 "code_usage.png", "anomaly_score_fan_id_00.csv", "decision_result_valve_id_00.csv"):
        assert (out / name).is_file(), name
    for s in per_entry:
        assert (out / "scorers" / s / "anomaly_score_fan_id_00.csv").is_file()
    with open(out / "anomaly_score_fan_id_00.csv") as fh:
        assert len(list(csv.reader(fh))) == 4
    html = (out / "report.html").read_text()
    assert "Code usage" in html and "ROC" in html
    assert re.search(r"^mahalanobis +[0-9.]+ / [0-9.]+", capsys.readouterr().out, re.M)  # the summary table


def test_evaluate_reports_the_learned_and_the_spectral_branch(fitted: Path, data: Path, tmp_path: Path) -> None:
    evaluate(fitted, data, tmp_path / "r", progress=False)
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert {"learned", "spectral"} <= set(table.scorer)
    scores = pd.read_csv(tmp_path / "r" / "scores.csv")
    by = {s: scores[scores.scorer == s].sort_values("path").score.to_numpy() for s in ("spectral", "mahalanobis",
                                                                                        "learned")}
    np.testing.assert_allclose(by["spectral"], by["mahalanobis"])  # the fixed branch: today's conv0 Mahalanobis
    assert not np.allclose(by["learned"], by["spectral"])
    info = json.loads((fitted / "scoring.json").read_text())["info"]
    assert info["finetune"]["steps"] == 3 and (fitted / "finetune" / "checkpoint_last" / "finetune.json").is_file()
    model = load_scoring_model(fitted)
    assert model.embedder is not None
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():  # the learned embedding is the fine-tuned embedder's, from the conv features only
        feats = model.frontend.model.wav2vec2.feature_extractor(x, None)[0].transpose(1, 2)
        torch.testing.assert_close(model.frontend(x).learned, model.embedder(feats))


def test_finetuning_off_reads_pooled_pretrained_layers(run: Path, data: Path, tmp_path: Path) -> None:
    cfg = replace(CFG, scorers=("learned", "spectral"), ensemble=("learned", "spectral"), decision_scorer="ensemble",
                  finetune=replace(CFG.finetune, steps=0), learned_layers=("conv0", "transformer2"),
                  learned_rhythm_layer="", learned_fine_rhythm_layer="", learned_kurtosis_layers=())  # own tests
    fit_scoring(run, data, tmp_path / "m", cfg, progress=False)
    model = load_scoring_model(tmp_path / "m")
    assert model.embedder is None and not (tmp_path / "m" / "finetune").exists()
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    w2v = model.frontend.model.wav2vec2
    with torch.inference_mode():  # the named layers' outputs, mean and std over time, in the order named
        block = w2v.feature_extractor.blocks[0]
        conv0 = torch.nn.functional.gelu(block.norm(block.conv(x[:, None]).transpose(1, 2)))
        h = w2v.extract_features(x)[2]
        want = torch.cat([conv0.mean(1), conv0.std(1), h.mean(1), h.std(1)], 1)
        torch.testing.assert_close(model.frontend(x).learned, want, rtol=1e-4, atol=1e-5)
    # The scorer is a Mahalanobis distance of the standardised embedding: 0 at the normal mean, larger away.
    stats = model.stats()
    assert {"lrn_loc", "lrn_prec"} <= set(stats) and "lrn_bank" not in stats
    # () = the final Transformer state (as models fitted before learned_layers existed)
    cfg = replace(cfg, learned_layers=())
    fit_scoring(run, data, tmp_path / "m2", cfg, progress=False)
    model = load_scoring_model(tmp_path / "m2")
    with torch.inference_mode():
        h = model.frontend.model.wav2vec2.extract_features(x)[-1]
        torch.testing.assert_close(model.frontend(x).learned, torch.cat([h.mean(1), h.std(1)], 1))
    with pytest.raises(ConfigError, match="learned_layers: 'mel3'"):
        replace(cfg, learned_layers=("mel3",)).validate()
    with pytest.raises(ConfigError, match="learned_shrinkage"):
        replace(cfg, learned_shrinkage=1.5).validate()
    with pytest.raises(ConfigError, match="spectral scorer reads a conv"):
        replace(cfg, embedding_layer="transformer1").validate()
    with pytest.raises(ConfigError, match="finetune.steps and adapt_steps"):
        replace(CFG, adapt_steps=2).validate()


def _rhythm_reference(out: np.ndarray, pool: int, lags: tuple[int, ...], groups: int) -> np.ndarray:
    """A block's output (B, T, C) -> per channel: mean over `pool`-frame chunks, centred; autocorrelation
    sum_t x_t x_t+lag / sum_t x_t^2 at each lag; averaged over `groups` contiguous channel groups."""
    B, T, C = out.shape
    n = T // pool
    x = out[:, : n * pool].reshape(B, n, pool, C).mean(2)
    x = x - x.mean(1, keepdims=True)
    power = (x * x).sum(1) + 1e-9
    ac = np.stack([(x[:, :-lag] * x[:, lag:]).sum(1) / power for lag in lags], 1)  # (B, L, C)
    return ac.reshape(B, len(lags), groups, C // groups).mean(3).reshape(B, -1)


def test_learned_rhythm_is_the_autocorrelation_of_a_blocks_output(run: Path, data: Path, tmp_path: Path) -> None:
    cfg = replace(CFG, scorers=("learned", "spectral"), ensemble=("learned", "spectral"), decision_scorer="spectral",
                  finetune=replace(CFG.finetune, steps=0), learned_layers=("conv0", "conv2"),
                  learned_rhythm_layer="conv2", learned_rhythm_frame_ms=10.0, learned_rhythm_lags_ms=(10.0, 30.0),
                  learned_rhythm_groups=2, learned_fine_rhythm_layer="", learned_kurtosis_layers=())
    fit_scoring(run, data, tmp_path / "m", cfg, progress=False)
    model = load_scoring_model(tmp_path / "m")
    blocks = model.frontend.model.wav2vec2.feature_extractor.blocks
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        out, parts = x[:, :, None], []
        for i, block in enumerate(blocks[:3]):
            out, _ = block(out, None)
            if i in (0, 2):
                parts += [out.mean(1), out.std(1)]
        stride = blocks[0].stride * blocks[1].stride * blocks[2].stride
        rhythm = _rhythm_reference(out.double().numpy(), round(160 / stride), (1, 3), 2)
        learned = model.frontend(x).learned
    torch.testing.assert_close(learned[:, : -rhythm.shape[1]], torch.cat(parts, 1))
    np.testing.assert_allclose(learned[:, -rhythm.shape[1]:].numpy(), rhythm, rtol=1e-4, atol=1e-5)
    assert rhythm.shape[1] == 2 * 2 and np.abs(rhythm).max() <= 1.0 + 1e-6
    # a fine-tuned copy of the blocks appends its own rhythm, read the same way
    cfg = replace(cfg, finetune=replace(CFG.finetune, part="conv"))
    fit_scoring(run, data, tmp_path / "ft", cfg, progress=False)
    tuned = load_scoring_model(tmp_path / "ft")
    assert tuned.embedder.extras == model.frontend.learned_extras
    with torch.inference_mode():
        assert tuned.frontend(x).learned.shape == learned.shape
    with pytest.raises(ConfigError, match="learned_rhythm_layer: 'mel2'"):
        replace(cfg, learned_rhythm_layer="mel2").validate()
    with pytest.raises(ConfigError, match="learned_rhythm_frame_ms"):
        replace(cfg, learned_rhythm_lags_ms=()).validate()
    with pytest.raises(ValueError, match="groups must divide"):
        fit_scoring(run, data, tmp_path / "bad", replace(cfg, learned_rhythm_groups=7), progress=False)
    with pytest.raises(ValueError, match="out of range"):
        fit_scoring(run, data, tmp_path / "bad", replace(cfg, learned_rhythm_layer="conv9"), progress=False)


def test_learned_fine_rhythm_and_kurtosis_follow_the_rhythm(run: Path, data: Path, tmp_path: Path) -> None:
    """The session-12 extras: a second rhythm (block 0, 5 ms frames) and the log kurtosis over time of each
    channel of blocks 0 and 1, appended in that order after the pooled blocks and the rhythm."""
    cfg = replace(CFG, scorers=("learned", "spectral"), ensemble=("learned", "spectral"), decision_scorer="spectral",
                  finetune=replace(CFG.finetune, steps=0), learned_layers=("conv2",), learned_rhythm_layer="conv2",
                  learned_rhythm_frame_ms=20.0, learned_rhythm_lags_ms=(20.0, 40.0), learned_rhythm_groups=2,
                  learned_fine_rhythm_layer="conv0", learned_fine_rhythm_frame_ms=5.0,
                  learned_fine_rhythm_lags_ms=(5.0, 10.0, 20.0), learned_kurtosis_layers=("conv0", "conv1"))
    fit_scoring(run, data, tmp_path / "m", cfg, progress=False)
    model = load_scoring_model(tmp_path / "m")
    blocks = model.frontend.model.wav2vec2.feature_extractor.blocks
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))

    def log_kurtosis(out: np.ndarray) -> np.ndarray:  # (B, T, C) -> (B, C)
        z = (out - out.mean(1, keepdims=True)) / (out.std(1, ddof=1, keepdims=True) + 1e-6)
        return np.log((z**4).mean(1))

    with torch.inference_mode():
        out, outs = x[:, :, None], []
        for block in blocks[:3]:
            out, _ = block(out, None)
            outs.append(out.double().numpy())
        learned = model.frontend(x).learned.double().numpy()
    s2 = blocks[0].stride * blocks[1].stride * blocks[2].stride
    want = np.concatenate([outs[2].mean(1), outs[2].std(1, ddof=1),
                           _rhythm_reference(outs[2], round(320 / s2), (1, 2), 2),
                           _rhythm_reference(outs[0], round(80 / blocks[0].stride), (1, 2, 4), 2),
                           log_kurtosis(outs[0]), log_kurtosis(outs[1])], 1)
    assert learned.shape == want.shape
    np.testing.assert_allclose(learned, want, rtol=1e-3, atol=1e-4)
    # a click train makes block 0's channels more impulsive: their log kurtosis grows
    c0, c1 = blocks[0].conv.out_channels, blocks[1].conv.out_channels
    clicks = torch.zeros_like(x)
    clicks[:, ::800] = float(x.abs().max()) * 4
    with torch.inference_mode():
        with_clicks = model.frontend(x + clicks).learned[:, -(c0 + c1):-c1]
    assert with_clicks.mean() > learned[:, -(c0 + c1):-c1].mean() + 0.5
    # a fine-tuned copy of the blocks appends the same extras
    tuned_cfg = replace(cfg, learned_layers=("conv0", "conv2"), finetune=replace(CFG.finetune, part="conv"))
    fit_scoring(run, data, tmp_path / "ft", tuned_cfg, progress=False)
    tuned = load_scoring_model(tmp_path / "ft")
    assert tuned.embedder.extras == model.frontend.learned_extras
    with pytest.raises(ConfigError, match="learned_fine_rhythm_layer: 'mel0'"):
        replace(cfg, learned_fine_rhythm_layer="mel0").validate()
    with pytest.raises(ConfigError, match="learned_fine_rhythm_frame_ms"):
        replace(cfg, learned_fine_rhythm_frame_ms=0.0).validate()
    with pytest.raises(ConfigError, match="learned_kurtosis_layers: 'transformer1'"):
        replace(cfg, learned_kurtosis_layers=("transformer1",)).validate()
    with pytest.raises(ValueError, match="learned_kurtosis_layers: conv9 out of range"):
        fit_scoring(run, data, tmp_path / "bad", replace(cfg, learned_kurtosis_layers=("conv9",)), progress=False)
    with pytest.raises(ValueError, match="learned_fine_rhythm_layer conv9 out of range"):
        fit_scoring(run, data, tmp_path / "bad", replace(cfg, learned_fine_rhythm_layer="conv9"), progress=False)


def test_conv_finetuning_feeds_the_learned_scorer(run: Path, data: Path, tmp_path: Path) -> None:
    cfg = replace(CFG, scorers=("mahalanobis", "learned", "spectral"), ensemble=("spectral", "learned"),
                  finetune=replace(CFG.finetune, part="conv"), learned_layers=("conv0", "conv2"))
    fit_scoring(run, data, tmp_path / "m", cfg, progress=False)
    model = load_scoring_model(tmp_path / "m")
    assert isinstance(model.embedder, ConvEmbedder) and model.embedder.layers == (0, 2)
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    frozen = load_scoring_model(tmp_path / "m").frontend.model.wav2vec2.feature_extractor
    with torch.inference_mode():  # the fine-tuned copy's pooled statistics, not the frozen encoder's
        learned = model.frontend(x).learned
        torch.testing.assert_close(learned, model.embedder.pooled(x))
        out, parts = x[:, :, None], []
        for i, block in enumerate(frozen.blocks[:3]):
            out, _ = block(out, None)
            if i in (0, 2):
                parts += [out.mean(1), out.std(1)]
        frozen_stats = torch.cat(parts, 1)  # then the (default) rhythm of block 2
        assert not torch.allclose(learned[:, : frozen_stats.shape[1]], frozen_stats)
    with pytest.raises(ConfigError, match="must all be conv<i>"):
        replace(cfg, learned_layers=("conv0", "transformer1")).validate()


def test_cli_fit_resumes_an_interrupted_finetuning(run: Path, data: Path, fitted: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    settings = ["window_seconds=1.0", "hop_seconds=0.5", "folds=2", "bank_frames=64", "max_knn_windows=64",
                "finetune.steps=3", "finetune.min_clips=2", "finetune.batch_windows=4", "finetune.crop_seconds=0.5",
                "finetune.warmup_steps=1", "finetune.embedding_dim=8"]
    args = ["fit", "--run", str(run), "--data", str(data), "--out", str(out), "--quiet"]
    args += [a for kv in settings for a in ("--set", kv)]
    assert cli_main(args) == 0
    first = load_scoring_model(out).embedder.state_dict()
    assert cli_main(args + ["--resume"]) == 0  # already finished: resumed at update 3, nothing more to train
    info = json.loads((out / "scoring.json").read_text())["info"]["finetune"]
    assert info["start_step"] == 3 and info["steps"] == 3
    for k, v in load_scoring_model(out).embedder.state_dict().items():
        assert torch.equal(v, first[k]), k


def test_bad_clips_are_skipped_counted_and_reported(fitted: Path, data: Path, tmp_path: Path) -> None:
    d = tmp_path / "data"
    shutil.copytree(data, d)
    test = d / "fan" / "test"
    (test / "normal_id_00_00000090.wav").write_bytes(b"RIFF garbage")  # corrupt
    sf.write(test / "normal_id_00_00000091.wav", np.zeros(0, dtype=np.float32), 16000)  # empty
    sf.write(test / "normal_id_00_00000092.wav", np.zeros(800, dtype=np.float32), 16000)  # 50 ms: too short
    nan = np.zeros(16000, dtype=np.float32)
    nan[100] = np.nan
    sf.write(test / "normal_id_00_00000093.wav", nan, 16000, subtype="FLOAT")
    sf.write(test / "normal_id_00_00000094.wav", np.zeros(24000, dtype=np.float32), 16000)  # silence: scored
    loud = np.clip(np.random.default_rng(0).normal(0, 3, 24000), -1, 1).astype(np.float32)
    sf.write(test / "anomaly_id_00_00000095.wav", loud, 16000)  # clipped: scored
    sf.write(test / "anomaly_id_04_00000000.wav", loud, 16000)  # an ID the model was not fitted on
    out = tmp_path / "report"
    with pytest.warns(UserWarning, match="skipped 2 unreadable or empty"):
        res = evaluate(fitted, d, out, progress=False)
    info = json.loads((out / "evaluation.json").read_text())
    assert info["clips_failed"] == 2 and len(info["failed_files"]) == 2
    assert any("shorter" in v for v in info["failed_files"].values())
    assert any("NaN" in v or "nan" in v.lower() for v in info["failed_files"].values())
    assert "fan/id_04" in info["skipped_machine_ids"]
    scores = pd.read_csv(out / "scores.csv")
    assert scores.score.notna().all()
    assert {"normal_id_00_00000094.wav", "anomaly_id_00_00000095.wav"} <= {Path(p).name for p in scores.path}
    assert res.auc.notna().all()


def test_unlabelled_test_clips_are_scored_without_metrics(fitted: Path, data: Path, tmp_path: Path) -> None:
    d = tmp_path / "eval"
    (d / "fan" / "test").mkdir(parents=True)
    for k, p in enumerate(sorted((data / "fan" / "test").glob("*.wav"))):
        shutil.copy(p, d / "fan" / "test" / f"id_00_{k:08d}.wav")
    res = evaluate(fitted, d, tmp_path / "report", progress=False)
    assert res.auc.isna().all()
    assert pd.read_csv(tmp_path / "report" / "scores.csv").score.notna().all()


def test_short_clips_and_config_errors(run: Path, data: Path, tmp_path: Path) -> None:
    short = tmp_path / "s.wav"
    sf.write(short, np.zeros(12000, dtype=np.float32), 16000)
    assert clip_windows(short, 16000, 8000, 8000).shape == (1, 12000)  # shorter than a window: one window
    with pytest.raises(ClipTooShort, match="shorter than the scorers need"):
        clip_windows(short, 16000, 8000, 13000)
    with pytest.raises(ConfigError, match="scorers"):
        load_scoring_config(None, ["scorers=[mahalanobis,telepathy]"])
    with pytest.raises(ConfigError, match="unknown config key 'scoring.windw'"):
        load_scoring_config(None, ["windw=2"])
    with pytest.raises(ValueError, match="embedding_layer 'conv99'"):
        fit_scoring(run, data, tmp_path / "m", ScoringConfig(embedding_layer="conv99"), progress=False)
    with pytest.raises(FileNotFoundError, match="no aiot-w2v2 checkpoint"):
        fit_scoring(tmp_path, data, tmp_path / "m", CFG, progress=False)


def test_cli_fit_and_evaluate(run: Path, data: Path, tmp_path: Path, capsys) -> None:
    model, report = tmp_path / "model", tmp_path / "report"
    assert cli_main(["fit", "--run", str(run), "--data", str(data), "--out", str(model), "--quiet",
                     "--set", "window_seconds=1.0", "--set", "hop_seconds=0.5", "--set", "folds=2",
                     "--set", "scorers=[code_unigram,mahalanobis]", "--set", "ensemble=[code_unigram,mahalanobis]",
                     "--set", "decision_scorer=ensemble"]) == 0
    assert load_scoring_model(model).columns[:3] == ["fan/id_00/code_unigram", "fan/id_00/mahalanobis",
                                                     "fan/id_00/ensemble"]
    assert cli_main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(report)]) == 0
    assert re.search(r"^ensemble +[0-9.]+ / [0-9.]+", capsys.readouterr().out, re.M)
    assert cli_main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(data), "--out", str(report)]) == 2


def test_bad_training_clips_are_skipped_and_listed(run: Path, data: Path, tmp_path: Path) -> None:
    d = tmp_path / "data"
    shutil.copytree(data / "fan" / "train", d / "fan" / "train")
    nan = np.zeros(16000, dtype=np.float32)
    nan[5] = np.inf
    sf.write(d / "fan" / "train" / "normal_id_00_00000090.wav", nan, 16000, subtype="FLOAT")
    sf.write(d / "fan" / "train" / "normal_id_00_00000091.wav", np.zeros(400, dtype=np.float32), 16000)
    fit_scoring(run, d, tmp_path / "model", CFG, progress=False)
    info = json.loads((tmp_path / "model" / "scoring.json").read_text())["info"]
    assert sorted(Path(p).name for p in info["failed_files"]) == ["normal_id_00_00000090.wav",
                                                                   "normal_id_00_00000091.wav"]
    assert info["counts"]["fan/id_00"] == dict(clips=5, windows=15, failed=2, note="")


def test_adaptation_gives_each_machine_type_its_own_model(run: Path, data: Path, tmp_path: Path) -> None:
    from dataclasses import replace as dc_replace

    from aiot_w2v2 import load_model
    from aiot_w2v2.export import narrow_model

    cfg = dc_replace(CFG, adapt_steps=2, scorers=("code_unigram", "mahalanobis"), ensemble=(),
                     decision_scorer="mahalanobis")
    fit_scoring(run, data, tmp_path / "model", cfg, progress=False)
    model = load_scoring_model(tmp_path / "model")
    assert sorted(model.frontends) == ["fan", "valve"] and model.meta.frontends == ["fan", "valve"]
    base = load_model(run / "checkpoint_last").state_dict()
    for key in ("fan", "valve"):
        adapted = model.frontends[key].model.state_dict()
        assert any(not torch.equal(adapted[k], base[k]) for k in base if base[k].is_floating_point())
    info = json.loads((tmp_path / "model" / "scoring.json").read_text())["info"]["adapted"]
    assert set(info) == {"fan", "valve"} and np.isfinite(info["fan"]["last_loss"])
    x = torch.from_numpy(clip_windows(next((data / "valve" / "test").glob("*.wav")), 16000, 8000, 0))
    one = narrow_model(model, machines=["valve/id_00"])
    assert list(one.frontends) == ["valve"]
    with torch.inference_mode():
        full, part = model(x), one(x)
    torch.testing.assert_close(part, full[:, 2:], rtol=1e-5, atol=1e-5)  # valve's columns, same scores


def test_a_model_folder_missing_newer_settings_warns(fitted: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(fitted, old)
    meta = json.loads((old / "scoring.json").read_text())
    del meta["config"]["energy_smoothing_ms"]
    (old / "scoring.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="without the scoring settings energy_smoothing_ms"):
        load_scoring_model(old)


def test_a_model_folder_from_before_the_rhythm_and_mel_features_loads_without_them(run: Path, data: Path,
                                                                                   tmp_path: Path) -> None:
    fit_scoring(run, data, tmp_path / "m", replace(CFG, envelope_bands=0, mel_bins=0, kurtosis_bands=0),
                progress=False)
    meta = json.loads((tmp_path / "m" / "scoring.json").read_text())
    for key in ("envelope_bands", "envelope_frame_ms", "envelope_lags_ms", "mel_bins", "mel_fft", "mel_hop_ms",
                "kurtosis_bands", "kurtosis_fft", "kurtosis_hop_ms"):
        del meta["config"][key]  # as written before the setting existed
    shutil.copytree(tmp_path / "m", tmp_path / "old")
    (tmp_path / "old" / "scoring.json").write_text(json.dumps(meta))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the feature was off then, and is off now
        old = load_scoring_model(tmp_path / "old")
    assert old.meta.config.envelope_bands == 0 and old.meta.config.mel_bins == 0
    assert old.meta.config.kurtosis_bands == 0
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        assert torch.equal(old(x), load_scoring_model(tmp_path / "m")(x))


def test_a_model_folder_from_before_fine_tuning_loads_and_scores_as_before(run: Path, data: Path,
                                                                           tmp_path: Path) -> None:
    old_scorers = ("contrastive", "contrastive_bank", "code_unigram", "code_bigram", "code_hist", "knn", "mahalanobis")
    fit_scoring(run, data, tmp_path / "m", replace(CFG, scorers=old_scorers, ensemble=("mahalanobis", "knn"),
                                                   finetune=replace(CFG.finetune, steps=0)), progress=False)
    meta = json.loads((tmp_path / "m" / "scoring.json").read_text())
    del meta["config"]["finetune"]  # as written before the setting existed
    del meta["info"]["finetune"]
    shutil.copytree(tmp_path / "m", tmp_path / "old")
    (tmp_path / "old" / "scoring.json").write_text(json.dumps(meta))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fine-tuning was off then, and is off now: nothing to warn about
        old = load_scoring_model(tmp_path / "old")
    assert old.embedder is None and old.meta.config.finetune.steps == 0
    assert not any(k.startswith("stat_lrn") for k in old.state_dict())
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        assert torch.equal(old(x), load_scoring_model(tmp_path / "m")(x))


def test_a_transformer_fine_tuned_folder_from_before_part_existed_loads_as_transformer(fitted: Path, data: Path,
                                                                                       tmp_path: Path) -> None:
    # finetune.part's default is now "conv"; a folder written before the key existed fine-tuned the Transformer
    meta = json.loads((fitted / "scoring.json").read_text())
    assert meta["config"]["finetune"]["part"] == "transformer" and meta["config"]["finetune"]["steps"] > 0
    del meta["config"]["finetune"]["part"]
    shutil.copytree(fitted, tmp_path / "old")
    (tmp_path / "old" / "scoring.json").write_text(json.dumps(meta))
    old = load_scoring_model(tmp_path / "old")
    assert old.meta.config.finetune.part == "transformer" and isinstance(old.embedder, AnomalyEmbedder)
    x = torch.from_numpy(clip_windows(next((data / "fan" / "test").glob("*.wav")), 16000, 8000, 0))
    with torch.inference_mode():
        assert torch.equal(old(x), load_scoring_model(fitted)(x))


def test_windows_too_short_for_the_smoothing_are_a_config_error(run: Path, data: Path, tmp_path: Path) -> None:
    # 600 ms smoothing needs two periods (1.2 s) in a window: a 1 s window would give NaN features
    with pytest.raises(ConfigError, match=r"window_seconds 1: these settings need windows of at least 1\.2"):
        fit_scoring(run, data, tmp_path / "m", replace(CFG, energy_smoothing_ms=600.0), progress=False)
    assert not (tmp_path / "m").exists()
