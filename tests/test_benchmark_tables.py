"""The report tables of the generalisation benchmarks (benchmarks/ is a folder of scripts, loaded by path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _suite_and_report(tmp_path: Path) -> tuple[Path, Path]:
    """Two sections; `spectral` ranks fault 'rub' above every normal clip and 'leak' below them in section
    00, and 'rub' at AUC 0.6 in section 01; `learned` ranks every anomaly above the normals."""
    suite, report = tmp_path / "suite", tmp_path / "report"
    report.mkdir(parents=True)
    meta, scores = [], []
    for sec, rub_scores in (("00", [20.0, 21.0]), ("01", [0.5, 4.5])):
        clips = [(f"normal_{i}", "normal", "", float(i)) for i in range(5)]
        clips += [(f"rub_{i}", "anomaly", "rub", s) for i, s in enumerate(rub_scores)]
        if sec == "00":
            clips += [("leak_0", "anomaly", "leak", -1.0)]
        for name, label, fault, s in clips:
            rel = f"fan/test/section_{sec}_source_test_{name}.wav"
            meta.append(dict(path=rel, machine="fan", section=int(sec), machine_id=f"section_{sec}", family="a",
                             domain="source", split="test", label=label, fault=fault))
            for scorer, value in (("spectral", s), ("learned", 100.0 + s if label == "anomaly" else s)):
                scores.append(dict(path=str(suite / rel), machine="fan", machine_id=f"section_{sec}", label=label,
                                   scorer=scorer, score=value))
    suite.mkdir()
    pd.DataFrame(meta).to_csv(suite / "metadata.csv", index=False)
    pd.DataFrame(scores).to_csv(report / "scores.csv", index=False)
    return suite, report


def test_by_fault_averages_each_kind_over_the_sections_that_have_it(tmp_path: Path) -> None:
    gen = _load("generalisation")
    suite, report = _suite_and_report(tmp_path)
    table = gen.by_fault(report, suite, ["spectral", "learned"])
    assert list(table.index) == ["leak (1)", "rub (2)"]
    # rub: AUC 1.0 in section 00; in section 01 (normals 0..4) 0.5 beats 1 of 5 normals and 4.5 all 5: 0.6
    assert table.loc["rub (2)", "spectral"] == pytest.approx((1.0 + (1 / 5 + 5 / 5) / 2) / 2)
    assert table.loc["leak (1)", "spectral"] == pytest.approx(0.0)
    assert table["learned"].tolist() == [1.0, 1.0]
    md = gen.to_markdown(table.map(gen.fmt), first="fault kind (sections)")
    assert md.splitlines()[0] == "| fault kind (sections) | spectral | learned |"


def test_by_fault_is_empty_without_fault_labels(tmp_path: Path) -> None:
    gen = _load("generalisation")
    suite, report = _suite_and_report(tmp_path)
    pd.read_csv(suite / "metadata.csv").drop(columns="fault").to_csv(suite / "metadata.csv", index=False)
    assert len(gen.by_fault(report, suite, ["spectral"])) == 0


def test_per_domain_z_uses_the_target_mean_and_the_source_spread() -> None:
    probe = _load("branch_probe")
    sec = probe.Section(oof=np.array([0.0, 2.0, 0.0, 2.0, 10.0]), test=np.array([11.0, 3.0]), y=np.array([0, 1]),
                        oof_domain=np.array(["source"] * 4 + ["target"]), test_domain=np.array(["target", "source"]))
    z = probe.per_domain_z(sec)
    assert z == pytest.approx([(11.0 - 10.0) / 1.0, (3.0 - 1.0) / 1.0])
