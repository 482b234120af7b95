"""`aiot-w2v2` command line: parses arguments and calls library functions, nothing more.

Heavy imports (torch, pandas) happen inside each command so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .logs import setup_logging


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate_dataset
    from .synth_suite import generate_suite

    machines = [m.strip() for m in args.machines.split(",") if m.strip()]
    if args.suite is None:
        if args.hours is not None:
            raise SystemExit("synth: --hours needs --suite pretrain")
        df = generate_dataset(args.out, machines=machines, ids_per_machine=args.ids,
                              n_train=40 if args.n_train is None else args.n_train,
                              n_test_normal=12 if args.n_test is None else args.n_test,
                              n_test_anomaly=12 if args.n_test is None else args.n_test, seconds=args.seconds,
                              seed=args.seed)
        counts = df.groupby(["machine", "split", "label"]).size()
    else:
        try:
            df = generate_suite(args.out, args.suite, machines=machines, sections=args.sections,
                                n_train_source=80 if args.n_train is None else args.n_train,
                                n_train_target=args.n_target_train, n_test=10 if args.n_test is None else args.n_test,
                                hours=args.hours, instances=args.instances, seconds=args.seconds, seed=args.seed)
        except ValueError as err:
            raise SystemExit(f"synth: {err}") from err
        counts = df.groupby(["machine", "family", "domain", "split", "label"]).size()
    print(f"wrote {len(df)} clips to {args.out}")
    print(counts.to_string())
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_pretrain_config
    from .train.pretrain import pretrain

    cfg = load_pretrain_config(args.config, args.set)
    pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from . import convert

    if args.to:
        if args.to != "hf":
            raise SystemExit(f"--to {args.to}: only 'hf' is supported")
        convert.export_hf(args.src, args.out)
        print(f"wrote a Hugging Face folder to {args.out}")
    else:
        convert.convert(args.src, args.from_, args.out)
        print(f"wrote an aiot-w2v2 checkpoint to {args.out}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from . import load_model
    from .audio import load_audio

    model = load_model(args.model).eval()
    wav = torch.from_numpy(load_audio(args.file, 16000))[None, :]  # (1, S)
    with torch.inference_mode():
        states = model.extract_features(wav)
    layer = args.layer if args.layer is not None else len(states) - 1
    if not -len(states) <= layer < len(states):
        raise SystemExit(f"--layer {layer}: the model has layers 0..{len(states) - 1} "
                         "(0 = Transformer input, last = final output)")
    out = states[layer][0].float().numpy()  # (frames, dim)
    np.save(args.out, out)
    print(f"wrote {args.out}: {out.shape[0]} frames x {out.shape[1]} dims (layer {layer % len(states)})")
    return 0


def _cmd_asr_finetune(args: argparse.Namespace) -> int:
    from .asr.config import load_finetune_config
    from .asr.finetune import finetune
    from .asr.librispeech import librispeech_manifest

    cfg = load_finetune_config(args.config, args.set)
    train = librispeech_manifest(args.librispeech, args.train, min_seconds=cfg.data.min_seconds,
                                 max_seconds=cfg.data.max_seconds)
    valid = librispeech_manifest(args.librispeech, args.valid) if args.valid else None
    finetune(cfg, train, valid, args.init, args.out, resume=args.resume, progress=not args.quiet)
    return 0


def _cmd_asr_evaluate(args: argparse.Namespace) -> int:
    import json

    from .asr.decode import DecoderUnavailableError, make_decoder
    from .asr.evaluate import METRICS_JSON, evaluate
    from .asr.librispeech import librispeech_manifest
    from .loading import load_ctc_model

    model = load_ctc_model(args.model)
    try:
        decoder = make_decoder(model.vocabulary, args.beam, lexicon=args.lexicon, lm=args.lm,
                               lm_weight=args.lm_weight, word_score=args.word_score)
    except DecoderUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = librispeech_manifest(args.librispeech, args.subset)
    meta = {"model": str(args.model), "librispeech": str(args.librispeech), "subset": args.subset,
            "decoder": {"beam": args.beam, "lexicon": args.lexicon, "lm": args.lm, "lm_weight": args.lm_weight,
                        "word_score": args.word_score}}
    result = evaluate(model, manifest, decoder, out=args.out, batch_seconds=args.batch_seconds, device=args.device,
                      progress=not args.quiet, meta=meta)
    print(f"{args.subset}: {result.format()}")
    print(f"wrote {Path(args.out) / METRICS_JSON}, hypotheses.txt, utterances.csv")
    if args.verbose:
        print(json.dumps(result.scores.as_dict(), indent=2))
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .anomaly.baseline import run_baseline

    run_baseline(args.data, args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .anomaly.fit import fit_scoring
    from .anomaly.scoring_model import load_scoring_config

    fit_scoring(args.run, args.data, args.out, load_scoring_config(args.config, args.set), progress=not args.quiet,
                resume=args.resume)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .anomaly.evaluate import evaluate

    evaluate(args.model, args.data, args.out, baseline=args.baseline, progress=not args.quiet)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_bundle

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    export_bundle(args.model, args.out, quantize=args.quantize, calibration=args.calibration, opset=args.opset,
                  progress=not args.quiet, machines=split(args.machines), scorers=split(args.scorers),
                  decision_scorer=args.decision_scorer)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), minutes=args.minutes, seed=args.seed, keep_dashboard=args.keep_dashboard)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiot-w2v2", description="wav2vec 2.0 for anomaly detection on machine sounds")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, third-party libraries' INFO included (default: theirs at WARNING)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic machine sounds (DCASE 2020 layout; --suite: DCASE 2021+)")
    s.add_argument("--out", required=True)
    s.add_argument("--suite", choices=("dev", "heldout", "pretrain"), default=None,
                   help="DCASE 2021+ layout with generator families and source/target domains: dev (method "
                        "choices), heldout (frozen families, final reports only), pretrain (unlabeled corpus)")
    s.add_argument("--machines", default="fan,pump,valve,slider")
    s.add_argument("--ids", type=int, default=2, help="machine IDs per machine type (DCASE 2020 layout)")
    s.add_argument("--sections", type=int, default=2, help="--suite dev/heldout: sections (machine instances) "
                                                           "per machine type")
    s.add_argument("--n-train", type=int, default=None, help="normal training clips per machine ID (default 40); "
                                                             "--suite: source-domain ones per section (default 80)")
    s.add_argument("--n-target-train", type=int, default=6, help="--suite: target-domain training clips per section")
    s.add_argument("--n-test", type=int, default=None,
                   help="normal and anomalous test clips per machine ID (default 12); --suite: per section and "
                        "domain (default 10)")
    s.add_argument("--hours", type=float, default=None, help="--suite pretrain: hours of audio to write")
    s.add_argument("--instances", type=int, default=8, help="--suite pretrain: machine instances per machine "
                                                            "type and family")
    s.add_argument("--seconds", type=float, default=4.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("pretrain", help="self-supervised pretraining on audio folders")
    s.add_argument("--config", required=True, help="preset name (tiny, edge, base, large) or YAML file")
    s.add_argument("--data", required=True, nargs="+", help="audio folders (DCASE/MIMII/ToyADMOS layouts or plain)")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-3")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last")
    s.add_argument("--quiet", action="store_true", help="periodic log lines instead of a progress bar")
    s.set_defaults(func=_cmd_pretrain)

    s = sub.add_parser("convert", help="import fairseq / Hugging Face / torchaudio weights, or export to HF")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="from_", choices=["hf", "fairseq", "torchaudio"])
    src.add_argument("--to", choices=["hf"])
    s.add_argument("src", help="source path (HF folder, fairseq .pt, torchaudio state dict, or our checkpoint)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("embed", help="write a clip's hidden states [frames, dim] to .npy")
    s.add_argument("--model", required=True, help="checkpoint (ours, HF folder or fairseq .pt)")
    s.add_argument("--layer", type=int, default=None, help="0 = Transformer input, -1/default = final output")
    s.add_argument("file")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_embed)

    asr = sub.add_parser("asr", help="speech recognition: CTC fine-tuning and WER evaluation on LibriSpeech")
    asr_sub = asr.add_subparsers(dest="asr_command", required=True)
    s = asr_sub.add_parser("finetune", help="fine-tune a CTC head (and the encoder) on LibriSpeech subsets")
    s.add_argument("--librispeech", required=True, help="ROOT with LibriSpeech/<subset>/... (or LibriSpeech/ itself)")
    s.add_argument("--train", required=True, help="subset(s), comma-separated, e.g. train-clean-100")
    s.add_argument("--valid", default=None, help="subset(s) for validation WER, e.g. dev-other")
    s.add_argument("--init", required=True,
                   help="pretraining run or checkpoint (ours), HF folder, fairseq .pt, a CTC model, or 'scratch'")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--config", default=None, help="preset (asr_tiny, asr_10m, asr_1h, asr_10h, asr_100h, asr_960h) "
                                                  "or YAML file; default: fairseq base_10m/1h values")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=1e-4")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=_cmd_asr_finetune)

    s = asr_sub.add_parser("evaluate", help="decode a subset and score WER / CER")
    s.add_argument("--model", required=True, help="fine-tuning run or CTC checkpoint (ours), HF Wav2Vec2ForCTC "
                                                  "folder, or fairseq fine-tuned .pt with dict.ltr.txt beside it")
    s.add_argument("--librispeech", required=True)
    s.add_argument("--subset", required=True, help="e.g. test-clean, or several comma-separated")
    s.add_argument("--out", required=True, help="folder for metrics.json, hypotheses.txt, utterances.csv")
    s.add_argument("--beam", type=int, default=0, help="beam size (0/1: greedy)")
    s.add_argument("--lexicon", default=None, help="flashlight lexicon (WORD W O R D |) for beam search")
    s.add_argument("--lm", default=None, help="KenLM model (ARPA or binary): a word LM with --lexicon")
    s.add_argument("--lm-weight", type=float, default=2.0)
    s.add_argument("--word-score", type=float, default=0.0, help="score added per word (insertion bonus)")
    s.add_argument("--batch-seconds", type=float, default=200.0, help="padded audio seconds per batch")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_asr_evaluate)

    s = sub.add_parser("baseline", help="DCASE 2020 Task 2 autoencoder baseline (log-mel, one model per machine)")
    s.add_argument("--data", required=True, help="DCASE-layout folder (<machine>/train, <machine>/test)")
    s.add_argument("--out", required=True, help="report folder: results.csv, DCASE csvs, report.html")
    s.add_argument("--epochs", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_baseline)

    s = sub.add_parser("fit", help="fit the anomaly scorers on normal training clips of a pretrained model")
    s.add_argument("--run", required=True, help="pretraining run folder (or a pretraining checkpoint)")
    s.add_argument("--data", required=True, nargs="+", help="DCASE-layout folder(s): <machine>/train/normal_*.wav")
    s.add_argument("--out", required=True, help="model folder: scoring.safetensors + scoring.json")
    s.add_argument("--config", default=None, help="YAML with scoring settings (see docs/anomaly.md)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. finetune.steps=300 (anomaly fine-tuning; off by default) or "
                        "window_seconds=1")
    s.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning in OUT/finetune")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_fit)

    s = sub.add_parser("evaluate", help="score test clips: AUC/pAUC per machine ID, DCASE csvs, report.html")
    s.add_argument("--model", required=True, help="model folder written by `aiot-w2v2 fit`")
    s.add_argument("--data", required=True, nargs="+", help="DCASE-layout folder(s): <machine>/test/*.wav")
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument("--baseline", default=None, help="a `aiot-w2v2 baseline` report folder to show beside")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("export", help="export a fitted model to an edge bundle (ONNX, optional int8)")
    s.add_argument("--model", required=True, help="model folder written by `aiot-w2v2 fit`")
    s.add_argument("--out", required=True, help="bundle folder: model.onnx + bundle.json")
    s.add_argument("--quantize", choices=["int8", "none"], default="int8")
    s.add_argument("--calibration", default=None,
                   help="folder of normal clips: static int8 (QDQ) calibrated on them instead of dynamic int8")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (<= 18 for onnxruntime on Jetson/Pi)")
    s.add_argument("--machines", default=None,
                   help="only these machine IDs, comma-separated (e.g. fan/id_00): a smaller, faster bundle per device")
    s.add_argument("--scorers", default=None, help="only these scorers, comma-separated (default: all fitted)")
    s.add_argument("--decision-scorer", default=None, help="the column that raises alerts (default: the model's)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("demo", help="the whole pipeline on synthetic machine sounds")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--keep-dashboard", action="store_true",
                   help="keep the broker and the live dashboard up after the demo, until Ctrl-C")
    s.add_argument("--minutes", type=float, default=None,
                   help="cap on pretraining wall time (default: none; the tiny preset runs 400 updates)")
    s.add_argument("--seed", type=int, default=0)
    # Also after the subcommand (`aiot-w2v2 demo --verbose`); SUPPRESS keeps a `-v` given before it.
    s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, the broker's and the web server's INFO lines included")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting made a 2-thread CPU step 2-6x slower whenever anything else
    # ran on the machine (benchmarks/RESULTS.md); passive waiting costs nothing measurable when idle.
    # It must be set before torch loads its OpenMP runtime, i.e. before any command imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:  # config, data and checkpoint errors carry clear messages
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
