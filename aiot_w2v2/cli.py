"""`aiot-w2v2` command line: parses arguments and calls library functions, nothing more.

Heavy imports (torch, pandas) happen inside each command so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate_dataset

    machines = [m.strip() for m in args.machines.split(",") if m.strip()]
    df = generate_dataset(args.out, machines=machines, ids_per_machine=args.ids, n_train=args.n_train,
                          n_test_normal=args.n_test, n_test_anomaly=args.n_test, seconds=args.seconds,
                          seed=args.seed)
    counts = df.groupby(["machine", "split", "label"]).size()
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), minutes=args.minutes, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiot-w2v2", description="wav2vec 2.0 for anomaly detection on machine sounds")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic machine sounds in the DCASE 2020 layout")
    s.add_argument("--out", required=True)
    s.add_argument("--machines", default="fan,pump,valve,slider")
    s.add_argument("--ids", type=int, default=2, help="machine IDs per machine type")
    s.add_argument("--n-train", type=int, default=40, help="normal training clips per machine ID")
    s.add_argument("--n-test", type=int, default=12, help="normal and anomalous test clips per machine ID")
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

    s = sub.add_parser("demo", help="the whole pipeline on synthetic machine sounds")
    s.add_argument("--out", default="demo_out")
    s.add_argument("--minutes", type=float, default=None, help="pretraining budget (default: the tiny preset's)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
