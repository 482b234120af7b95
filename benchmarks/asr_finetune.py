"""CTC fine-tuning on the shipped espeak-ng corpus, on this CPU.

1. For each preset (tiny, edge): the WER on the held-out `test-tiny` split that fine-tuning reaches
   within a wall-time budget (default 15 minutes), from scratch and from a checkpoint pretrained
   briefly (`aiot_w2v2.train.pretrain.pretrain`) on the audio of `train-tiny`. The number of updates is
   fitted to the budget from a short calibration run, so that the tri-stage schedule completes; the
   WER is that of the final model (no checkpoint selection on the test split), greedy, and also with
   beam search over a lexicon + bigram LM estimated from the *train* transcripts.
2. Step throughput of our `Wav2Vec2ForCTC` against Hugging Face's `Wav2Vec2ForCTC` on the same
   architecture and batch: forward, CTC loss, backward, Adam step; steps alternate between the two
   models so that a noisy neighbour slows both alike.

    python benchmarks/asr_finetune.py [--minutes 15] [--pretrain-minutes 5] [--presets tiny,edge]
        [--out benchmarks/results/asr_finetune.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aiot_w2v2.asr import BeamSearchDecoder, GreedyDecoder, letter_vocabulary, write_lexicon
from aiot_w2v2.asr.config import load_finetune_config
from aiot_w2v2.asr.evaluate import evaluate
from aiot_w2v2.asr.finetune import finetune
from aiot_w2v2.asr.librispeech import librispeech_manifest
from aiot_w2v2.asr.lm import write_bigram_arpa
from aiot_w2v2.config import load_pretrain_config, to_dict
from aiot_w2v2.loading import load_ctc_model
from aiot_w2v2.train.pretrain import pretrain

CORPUS = Path(__file__).resolve().parents[1] / "data" / "speech_corpus"


def fit_steps(cfg_args: list[str], init: str, minutes: float, train, work: Path) -> tuple[int, float]:
    """Updates that fit `minutes` (95 %, leaving room for validation), from a 12-update calibration run."""
    cfg = load_finetune_config("asr_tiny", cfg_args + ["optim.max_steps=1000", "valid.every=0",
                                                       "train.max_minutes=0"])
    t0 = time.monotonic()
    finetune(cfg, train, None, init, work / "calibrate", progress=False, stop_after=12)
    per_step = (time.monotonic() - t0) / 12
    shutil.rmtree(work / "calibrate")
    return max(20, int(0.9 * minutes * 60 / per_step)), per_step


def run_finetune(name: str, preset: str, init: str, extra: list[str], minutes: float, train, test,
                 work: Path, decoders: dict[str, Any]) -> dict[str, Any]:
    args = [f"scratch_architecture={preset}", *extra]
    steps, per_step = fit_steps(args, init, minutes, train, work)
    cfg = load_finetune_config("asr_tiny", args + [f"optim.max_steps={steps}", f"valid.every={max(1, steps // 6)}",
                                                   f"train.max_minutes={minutes}"])
    print(f"[{name}] {steps} updates ({per_step:.2f} s each in calibration), budget {minutes} min", flush=True)
    cpu0 = time.process_time()
    summary = finetune(cfg, train, test, init, work / name, progress=False)
    cpu = time.process_time() - cpu0
    model = load_ctc_model(work / name / "checkpoint_last")
    result = {"init": summary.init, "updates": summary.steps, "stopped_by": summary.stopped_by,
              "seconds": round(summary.wall_seconds, 1), "cpu_seconds": round(cpu, 1),
              "seconds_per_update_calibration": round(per_step, 3),
              "valid_curve": _curve(work / name / "metrics.csv")}
    for label, decoder in decoders.items():
        res = evaluate(model, test, decoder, progress=False)
        result[f"wer_{label}"], result[f"cer_{label}"] = res.scores.wer, res.scores.cer
    print(f"[{name}] WER greedy {100 * result['wer_greedy']:.2f} %, lexicon+LM {100 * result['wer_lexicon_lm']:.2f} % "
          f"after {summary.steps} updates in {summary.wall_seconds:.0f} s", flush=True)
    return result


def _curve(metrics_csv: Path) -> list[tuple[int, float, float]]:
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    df = df[df["valid_wer"].notna()]
    return [(int(r.step), round(float(r.wall_s), 1), round(float(r.valid_wer), 4)) for r in df.itertuples()]


def pretrain_preset(preset: str, minutes: float, work: Path) -> tuple[Path, dict[str, Any]]:
    """The preset's pretraining recipe on train-tiny's audio (a plain folder of FLAC) for `minutes`."""
    cfg = load_pretrain_config(preset, [f"train.max_minutes={minutes}", "train.tensorboard=false",
                                        "data.group_by=none", "data.min_sample_size=8000", "data.normalize=true",
                                        "optim.max_steps=100000"])
    # the step count is unknown in advance: schedule over what fits, measured like fit_steps
    t0 = time.monotonic()
    pretrain(cfg, CORPUS / "LibriSpeech" / "train-tiny", work / f"pre_{preset}_cal", progress=False, stop_after=10)
    per_step = (time.monotonic() - t0) / 10
    shutil.rmtree(work / f"pre_{preset}_cal")
    steps = max(50, int(0.9 * minutes * 60 / per_step))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=steps,
                                                             warmup_steps=min(cfg.optim.warmup_steps, steps // 10)))
    cpu0 = time.process_time()
    s = pretrain(cfg, CORPUS / "LibriSpeech" / "train-tiny", work / f"pre_{preset}", progress=False)
    info = {"updates": s.steps, "seconds": round(s.wall_seconds, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "final_loss": s.final.get("loss"),
            "accuracy": s.accuracy, "code_perplexity": s.code_perplexity}
    print(f"[pretrain {preset}] {s.steps} updates in {s.wall_seconds:.0f} s, accuracy {s.accuracy:.3f}", flush=True)
    return work / f"pre_{preset}", info


# ----------------------------------------------------------------------------------------------
# Throughput: ours vs Hugging Face Wav2Vec2ForCTC


def throughput(preset: str, steps: int = 20, batch: int = 4, seconds: float = 2.0) -> dict[str, Any]:
    import transformers

    from aiot_w2v2.asr import Wav2Vec2ForCTC
    from aiot_w2v2.config import MaskingConfig
    from aiot_w2v2.convert.hf import hf_config_from_ours

    transformers.logging.set_verbosity_error()
    pcfg = load_pretrain_config(preset)
    model_cfg = dataclasses.replace(pcfg.model, layerdrop=0.0, feature_grad_mult=1.0)  # HF has neither
    pcfg = dataclasses.replace(pcfg, model=model_cfg, masking=MaskingConfig(mask_prob=0.0, channel_prob=0.0))
    vocab = letter_vocabulary()
    torch.manual_seed(0)
    ours = Wav2Vec2ForCTC(model_cfg, vocab).train()
    hf_cfg = hf_config_from_ours(pcfg)
    hf_cfg.update({"vocab_size": len(vocab), "pad_token_id": vocab.blank, "ctc_loss_reduction": "sum",
                   "ctc_zero_infinity": True, "apply_spec_augment": False, "final_dropout": 0.0})
    hf = transformers.Wav2Vec2ForCTC(hf_cfg).train()
    g = torch.Generator().manual_seed(0)
    n = int(seconds * 16000)
    wave = torch.randn(batch, n, generator=g)
    frames = int(ours.num_frames(torch.tensor(n)))
    labels = torch.randint(4, len(vocab), (batch, frames // 3), generator=g)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-5)
    opt_hf = torch.optim.Adam(hf.parameters(), lr=1e-5)

    def step_ours() -> None:
        out = ours(wave)
        lprobs = F.log_softmax(out.logits.float(), -1).transpose(0, 1)
        loss = F.ctc_loss(lprobs, labels, out.lengths, torch.full((batch,), labels.shape[1]), blank=vocab.blank,
                          reduction="sum", zero_infinity=True)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf() -> None:
        hf(wave, labels=labels).loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    order = (("ours", step_ours), ("hf", step_hf))
    for i in range(steps + 3):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    audio = batch * seconds
    return {"preset": preset, "batch": f"{batch} x {seconds} s", "steps": steps,
            "ours_s_per_step": round(med["ours"], 4), "hf_s_per_step": round(med["hf"], 4),
            "ours_audio_s_per_s": round(audio / med["ours"], 2), "hf_audio_s_per_s": round(audio / med["hf"], 2),
            "speedup_ours_over_hf": round(med["hf"] / med["ours"], 3),
            "params": sum(p.numel() for p in ours.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="fine-tuning budget per run")
    p.add_argument("--pretrain-minutes", type=float, default=5.0)
    p.add_argument("--presets", default="tiny,edge")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-wer", action="store_true", help="throughput only")
    p.add_argument("--out", default="benchmarks/results/asr_finetune.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    results: dict[str, Any] = {"threads": args.threads, "budget_minutes": args.minutes,
                               "pretrain_minutes": args.pretrain_minutes, "throughput": [], "wer": {}}
    # the presets change as the project learns; record what was measured
    results["architectures"] = {p: to_dict(load_pretrain_config(p).model) for p in presets}
    for preset in presets:
        results["throughput"].append(throughput(preset))
        print(json.dumps(results["throughput"][-1]), flush=True)
    if not args.skip_wer:
        train = librispeech_manifest(CORPUS, "train-tiny")
        test = librispeech_manifest(CORPUS, "test-tiny")
        vocab = letter_vocabulary()
        with tempfile.TemporaryDirectory(prefix="asr_bench_") as tmp:
            work = Path(tmp)
            words = {w for t in train["transcript"] for w in t.split()}
            lexicon = write_lexicon(words, work / "lexicon.txt", vocab)
            lm = write_bigram_arpa(train["transcript"], work / "lm.arpa")
            decoders = {"greedy": GreedyDecoder(vocab),
                        "lexicon_lm": BeamSearchDecoder(vocab, beam_size=50, lexicon=lexicon, lm=lm, lm_weight=1.0,
                                                        word_score=0.0)}
            for preset in presets:
                runs = results["wer"].setdefault(preset, {})
                runs["scratch"] = run_finetune(f"{preset}_scratch", preset, "scratch", [], args.minutes, train, test,
                                               work, decoders)
                pre_dir, info = pretrain_preset(preset, args.pretrain_minutes, work)
                runs["pretrained"] = run_finetune(f"{preset}_pretrained", preset, str(pre_dir), [], args.minutes,
                                                  train, test, work, decoders)
                runs["pretrained"]["pretraining"] = info
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x)
                              else str(x)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
