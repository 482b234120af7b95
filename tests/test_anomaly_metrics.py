"""Tests for anomaly.metrics and anomaly.report: DCASE AUC/pAUC, thresholds, tables, csv files, report."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from aiot_w2v2.anomaly.metrics import (
    EXTENDED_COLUMNS,
    auc_pauc,
    dcase_csv_names,
    extended_results,
    fit_threshold,
    fit_threshold_info,
    harmonic_mean,
    precision_recall_f1,
    results_table,
    summarise,
    undefined_reason,
    write_dcase_csvs,
)
from aiot_w2v2.anomaly.report import print_summary, write_report


def _mcclish(partial_area: float, max_fpr: float = 0.1) -> float:
    """sklearn's standardised partial AUC from the raw area under the ROC on [0, max_fpr]."""
    lo, hi = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1 + (partial_area - lo) / (hi - lo))


# ---------------------------------------------------------------------------------------------------
# AUC / pAUC


def test_perfect_inverted_and_tied_scores() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    assert auc_pauc(y, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == (1.0, 1.0)
    auc, pauc = auc_pauc(y, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert auc == 0.0
    assert pauc == pytest.approx(_mcclish(0.0))  # no area at all = 0.4737 after standardisation
    assert auc_pauc(y, np.ones(6)) == (0.5, 0.5)  # all tied: the diagonal, chance


def test_hand_computed_case() -> None:
    # ROC: (0, .5) -> (.5, .5) -> (.5, 1) -> (1, 1); AUC = .75; area on FPR <= .1 is .1 * .5
    auc, pauc = auc_pauc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert auc == pytest.approx(0.75)
    assert pauc == pytest.approx(_mcclish(0.05))


def test_pauc_is_sklearns_with_max_fpr_point_one() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + 0.8 * y
    auc, pauc = auc_pauc(y, s)
    assert auc == roc_auc_score(y, s)
    assert pauc == roc_auc_score(y, s, max_fpr=0.1)
    assert 0.4 < auc_pauc(y, rng.normal(size=300))[0] < 0.6  # random scores: near chance


def test_undefined_cases_give_nan_with_a_reason() -> None:
    assert all(math.isnan(v) for v in auc_pauc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert "no anomalous clips" in undefined_reason([0, 0, 0], [0.1, 0.2, 0.3])
    assert "no normal clips" in undefined_reason([1, 1], [0.1, 0.2])
    assert all(math.isnan(v) for v in auc_pauc([0, 1], [0.1, float("nan")]))
    assert "NaN" in undefined_reason([0, 1], [0.1, float("nan")])
    assert undefined_reason([0, 1], [0.1, 0.2]) is None


# ---------------------------------------------------------------------------------------------------
# thresholds, precision / recall / F1, means


def test_gamma_threshold_is_the_90th_percentile_on_gamma_data() -> None:
    s = scipy.stats.gamma.rvs(a=3.0, loc=1.0, scale=2.0, size=2000, random_state=0)
    fit = fit_threshold_info(s)
    assert fit.method == "gamma" and len(fit.params) == 3
    true_q = scipy.stats.gamma.ppf(0.9, 3.0, loc=1.0, scale=2.0)
    assert fit.value == pytest.approx(true_q, rel=0.05)
    assert fit.value == pytest.approx(np.quantile(s, 0.9), rel=0.05)
    # the free loc handles negative scores without a shift
    assert fit_threshold(s - 100.0) == pytest.approx(np.quantile(s - 100.0, 0.9), abs=0.5)


def test_threshold_falls_back_to_the_empirical_percentile() -> None:
    info = fit_threshold_info(np.full(30, 3.0))
    assert info.value == 3.0 and info.method == "percentile" and "constant" in info.note
    assert fit_threshold([1.0, 2.0]) == pytest.approx(np.quantile([1.0, 2.0], 0.9))
    assert fit_threshold(np.arange(10.0), method="percentile") == pytest.approx(np.quantile(np.arange(10.0), 0.9))
    assert math.isnan(fit_threshold([float("nan")]))
    with pytest.raises(ValueError):
        fit_threshold([1.0, 2.0], method="median")


def test_precision_recall_f1() -> None:
    y, s = [0, 0, 1, 1], [0.1, 0.5, 0.4, 0.9]
    assert precision_recall_f1(y, s, 0.45) == pytest.approx((0.5, 0.5, 0.5))
    assert precision_recall_f1(y, s, 0.9) == (0.0, 0.0, 0.0)  # strict >, nothing flagged: 0 as DCASE
    assert precision_recall_f1(y, s, 0.0) == pytest.approx((0.5, 1.0, 2 / 3))
    assert all(math.isnan(v) for v in precision_recall_f1(y, s, float("nan")))


def test_harmonic_mean() -> None:
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.0, 1.0]) == 0.0
    assert harmonic_mean([0.5, float("nan")]) == 0.5
    assert math.isnan(harmonic_mean([float("nan")]))


# ---------------------------------------------------------------------------------------------------
# tables


def _per_clip(rng: np.random.Generator, machines=("fan", "pump"), ids=("id_00", "id_02"),
              scorers=("a", "b"), n: int = 10, labeled: bool = True) -> pd.DataFrame:
    rows = []
    for m in machines:
        for i in ids:
            for k, label in enumerate(["normal"] * n + ["anomaly"] * n):
                name = f"{label}_{i}_{k:08d}.wav"
                for j, scorer in enumerate(scorers):
                    score = rng.normal() + (1.0 + j) * (label == "anomaly")
                    rows.append(dict(path=f"/data/{m}/test/{name}", machine=m, machine_id=i, scorer=scorer,
                                     score=score, label=label if labeled else None, domain=None, threshold=0.5))
    return pd.DataFrame(rows)


def test_results_table_has_the_contract_columns_and_all_rows() -> None:
    df = _per_clip(np.random.default_rng(0))
    res = results_table(df)
    assert list(res.columns) == ["machine", "machine_id", "scorer", "auc", "pauc"]
    assert len(res) == 2 * (2 + 1) * 2
    assert list(res[(res.machine == "fan") & (res.scorer == "a")]["machine_id"]) == ["id_00", "id_02", "all"]
    for _, g in res.groupby(["machine", "scorer"]):
        ids = g[g.machine_id != "all"]
        allrow = g[g.machine_id == "all"].iloc[0]
        assert allrow.auc == pytest.approx(ids.auc.mean()) and allrow.pauc == pytest.approx(ids.pauc.mean())
    one = df[(df.machine == "pump") & (df.machine_id == "id_02") & (df.scorer == "b")]
    row = res[(res.machine == "pump") & (res.machine_id == "id_02") & (res.scorer == "b")].iloc[0]
    y = (one.label == "anomaly").astype(int)
    assert row.auc == roc_auc_score(y, one.score) and row.pauc == roc_auc_score(y, one.score, max_fpr=0.1)


def test_extended_results_and_summarise() -> None:
    df = _per_clip(np.random.default_rng(1))
    ext = extended_results(df)
    assert list(ext.columns) == list(EXTENDED_COLUMNS)
    assert set(ext.mean_kind) == {"none", "amean", "hmean"}
    fan_a = ext[(ext.machine == "fan") & (ext.scorer == "a")]
    ids = fan_a[fan_a.mean_kind == "none"]
    h = fan_a[fan_a.mean_kind == "hmean"].iloc[0]
    assert h.auc == pytest.approx(len(ids) / (1 / ids.auc).sum())
    assert {"precision", "recall", "f1"} <= set(ext.columns) and ids.threshold.eq(0.5).all()
    overall = ext[(ext.machine == "all") & (ext.mean_kind == "amean") & (ext.scorer == "a")].iloc[0]
    assert overall.auc == pytest.approx(ext[(ext.mean_kind == "none") & (ext.scorer == "a")].auc.mean())
    means = summarise(ext[ext.mean_kind == "none"])
    assert (means.machine_id == "all").all()


def test_per_domain_rows_follow_dcase_2022() -> None:
    # one section: source normals 0.1, 0.2; target normals 0.6, 0.7; anomalies (one per domain) 0.5, 0.8
    rows = [("source", "normal", 0.1), ("source", "normal", 0.2), ("target", "normal", 0.6),
            ("target", "normal", 0.7), ("source", "anomaly", 0.5), ("target", "anomaly", 0.8)]
    df = pd.DataFrame([dict(path=f"/d/gearbox/test/section_00_{d}_test_{lab}_{k:04d}.wav", machine="gearbox",
                            machine_id="section_00", scorer="s", score=s, label=lab, domain=d)
                       for k, (d, lab, s) in enumerate(rows)])
    ext = extended_results(df)
    per = ext[ext.mean_kind == "none"].set_index("domain")
    # domain AUC: that domain's normals against every anomaly of the section
    assert per.loc["source", "auc"] == pytest.approx(roc_auc_score([0, 0, 1, 1], [0.1, 0.2, 0.5, 0.8]))
    assert per.loc["target", "auc"] == pytest.approx(roc_auc_score([0, 0, 1, 1], [0.6, 0.7, 0.5, 0.8]))
    assert per.loc["all", "auc"] == pytest.approx(roc_auc_score([0, 0, 0, 0, 1, 1], [r[2] for r in rows]))
    assert per.loc["source", "n_normal"] == 2 and per.loc["source", "n_anomaly"] == 1


def test_unlabeled_clips_give_nan_and_a_note() -> None:
    df = _per_clip(np.random.default_rng(2), machines=("fan",), ids=("id_05",), scorers=("a",), labeled=False)
    res = results_table(df)
    assert res.auc.isna().all() and res.pauc.isna().all() and len(res) == 2
    ext = extended_results(df)
    row = ext[ext.mean_kind == "none"].iloc[0]
    assert "no labels" in row.note
    assert "no ID has metrics" in ext[ext.mean_kind == "amean"].iloc[0].note


# ---------------------------------------------------------------------------------------------------
# DCASE files, report


def test_dcase_csv_names() -> None:
    assert dcase_csv_names("fan", "id_00") == ("anomaly_score_fan_id_00.csv", "decision_result_fan_id_00.csv")
    assert dcase_csv_names("gearbox", "section_01") == ("anomaly_score_gearbox_section_01_test.csv",
                                                        "decision_result_gearbox_section_01_test.csv")


def test_write_dcase_csvs(tmp_path) -> None:
    df = _per_clip(np.random.default_rng(3), machines=("fan",), ids=("id_00", "id_02"), scorers=("a", "b"), n=3)
    written = write_dcase_csvs(df, tmp_path, "a")
    assert sorted(p.name for p in written) == ["anomaly_score_fan_id_00.csv", "anomaly_score_fan_id_02.csv",
                                              "decision_result_fan_id_00.csv", "decision_result_fan_id_02.csv"]
    with open(tmp_path / "anomaly_score_fan_id_00.csv") as f:
        rows = list(csv.reader(f))
    sub = df[(df.scorer == "a") & (df.machine_id == "id_00")].assign(name=lambda d: d.path.str.split("/").str[-1])
    assert [r[0] for r in rows] == sorted(sub.name)  # no header, file names only, sorted
    assert all(re.fullmatch(r"(normal|anomaly)_id_00_\d{8}\.wav", r[0]) and len(r) == 2 for r in rows)
    expected = dict(zip(sub.name, sub.score, strict=True))
    assert all(float(r[1]) == pytest.approx(expected[r[0]]) for r in rows)
    with open(tmp_path / "decision_result_fan_id_00.csv") as f:
        decisions = {r[0]: int(r[1]) for r in csv.reader(f)}
    assert decisions == {n: int(s > 0.5) for n, s in expected.items()}
    # without thresholds only the scores are written; an unknown scorer is an error
    assert len(write_dcase_csvs(df.drop(columns="threshold"), tmp_path / "x", "b")) == 2
    with pytest.raises(ValueError, match="no scores"):
        write_dcase_csvs(df, tmp_path, "c")


def test_report_and_summary(tmp_path, capsys) -> None:
    df = _per_clip(np.random.default_rng(4), machines=("fan",), n=6)  # one machine: figures are slow to draw
    res = results_table(df)
    base = res[res.scorer == "a"].assign(scorer="ae_baseline")
    fig = tmp_path / "extra.png"
    fig.write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # a PNG signature is enough to embed
    path = write_report(tmp_path / "rep", df, res, title="Test <report>", extra_figures={"Extra": fig},
                        baseline_results=base)
    text = path.read_text()
    assert path.name == "report.html" and "Test &lt;report&gt;" in text
    assert text.count("data:image/png;base64,") == 1 + 1 + 1  # ROC, one histogram figure per machine, extra
    assert not re.search(r'src="(?!data:)', text)  # self-contained
    assert "ae_baseline" in text
    out = print_summary(res, baseline_df=base)
    lines = out.splitlines()
    assert "fan" in lines[0] and "mean" in lines[0] and "AUC / pAUC" in out
    row = next(line for line in lines if line.startswith("ae_baseline"))
    want = res[(res.scorer == "a") & (res.machine_id == "all")].iloc[0]
    assert f"{want.auc:.3f} / {want.pauc:.3f}" in row  # the baseline row holds its machine-level AUC / pAUC
    assert out in capsys.readouterr().out
