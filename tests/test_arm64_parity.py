"""scripts/arm64_parity.py compare: the verdict of `make check-arm64` fails on any score, window or decision
that differs.

The arm64 run itself (a qemu-user chroot, minutes) is `scripts/check_arm64.sh`; here only its comparison,
on JSON lines written the way `aiot-edge score` writes them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("arm64_parity", REPO / "scripts" / "arm64_parity.py")
assert _spec is not None and _spec.loader is not None
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


def _row(file: str, start: float, mahalanobis: float, ensemble: float = -0.5, anomaly: bool = False) -> dict:
    return {"file": file, "machine": "fan", "machine_id": "id_00", "window_start": start, "window_end": start + 1,
            "scores": {"mahalanobis": mahalanobis, "ensemble": ensemble}, "score": ensemble, "anomaly": anomaly}


def _write(path: Path, rows: list[dict], raw: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw)
    return path


X86 = [_row("clips/fan/test/a.wav", 0.0, 568.5849609375), _row("clips/fan/test/a.wav", 0.5, 12.0, ensemble=0.0)]


def _verdict(tmp_path: Path, arm_rows: list[dict], capsys: pytest.CaptureFixture[str], raw: str = "") -> str:
    x86 = _write(tmp_path / "x86.jsonl", X86)
    arm = _write(tmp_path / "arm.jsonl", arm_rows, raw)
    code = parity.main(["compare", str(x86), str(arm)])
    out = capsys.readouterr().out
    assert out.startswith("PASS" if code == 0 else "FAIL")
    return out


def test_float32_rounding_passes_and_paths_may_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 4 float32 ulps at 568 (what the arm64 run measured) and an ensemble of 0 off by 5e-5
    arm = [_row("/mnt/work/clips/fan/test/a.wav", 0.0, 568.585205078125),
           _row("/mnt/work/clips/fan/test/a.wav", 0.5, 12.0, ensemble=5e-5)]
    out = _verdict(tmp_path, arm, capsys)
    assert out.startswith("PASS") and "max |diff| 0.000244" in out


@pytest.mark.parametrize("arm, why", [
    ([_row("a.wav", 0.0, 568.7), _row("a.wav", 0.5, 12.0, ensemble=0.0)], "scores.mahalanobis"),
    ([_row("a.wav", 0.0, 568.5849609375), _row("a.wav", 0.5, 12.0, ensemble=2e-3)], "score"),
    ([_row("a.wav", 0.0, 568.5849609375)], "windows differ: 1 only on x86"),
    ([_row("a.wav", 0.0, 568.5849609375), _row("a.wav", 0.5, 12.0, ensemble=0.0, anomaly=True)], "alert decision"),
    ([_row("a.wav", 0.0, float("nan")), _row("a.wav", 0.5, 12.0, ensemble=0.0)], "arm64 nan"),
])
def test_a_difference_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str], arm: list[dict], why: str) -> None:
    out = _verdict(tmp_path, arm, capsys)
    assert out.startswith("FAIL") and why in out


def test_output_that_is_not_json_lines_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="not a JSON line"):
        _verdict(tmp_path, X86, capsys, raw="Segmentation fault\n")
