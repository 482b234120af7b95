"""Pretraining step throughput on this CPU: our `Wav2Vec2ForPreTraining` vs Hugging Face's.

One step is what a training loop does per batch: draw the span mask and the distractors, forward,
backward, AdamW update, set the Gumbel temperature. Hugging Face's step follows its pretraining
example (`run_wav2vec2_pretraining_no_trainer.py`): the mask and negatives come from numpy
(`_compute_mask_indices`, `_sample_negative_indices`) every step, and the summed loss is divided by
the number of masked frames. Both models get the same architecture, the same waveforms and the same
optimizer; weights are random (a step's cost does not depend on them).

Each model runs in its own worker process, so that its peak RSS (`ru_maxrss`) is its own. The parent
alternates single steps between the two workers (ours, HF, ours, ...), so a noisy neighbour on the
machine slows both alike. Besides wall time, each step's process CPU time is recorded. The fp32
matmul peak is the best rate of a 2048^2 `torch.mm` at the same thread count; the FLOPs of a step are
counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; not the
elementwise work or the optimizer).

    python benchmarks/pretrain_throughput.py --configs tiny,base4 --out benchmarks/results/pretrain_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aiot_w2v2.config import (
    BASE_CONV,
    ConfigError,
    LossConfig,
    MaskingConfig,
    ModelConfig,
    load_pretrain_config,
    to_dict,
)

DEFAULT_BATCH = {"tiny": (4, 4.0), "base4": (2, 4.0)}  # (clips, seconds per clip)
SAMPLE_RATE = 16000
TINY_FALLBACK_CONV = ((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2


@dataclasses.dataclass(frozen=True)
class BenchSetup:
    """One benchmarked architecture with its objective."""

    name: str
    model: ModelConfig
    masking: MaskingConfig
    loss: LossConfig
    source: str  # where the architecture came from


def bench_setup(name: str) -> BenchSetup:
    """`tiny` (configs/tiny.yaml if present) or `base4` (BASE dims, 4 layers), made comparable with HF.

    Both models get layerdrop 0 (steady timing), feature_grad_mult 1 (HF has no gradient scaling)
    and K = 100 same-clip distractors only (HF has no cross-sample distractors).
    """
    model, masking, loss = ModelConfig(conv_layers=BASE_CONV, num_layers=4), MaskingConfig(), LossConfig()
    source = "BASE, 4 layers"
    if name == "tiny":
        try:
            cfg = load_pretrain_config("tiny")
            model, masking, loss, source = cfg.model, cfg.masking, cfg.loss, "configs/tiny.yaml"
        except ConfigError:  # no such preset
            model = ModelConfig(conv_layers=TINY_FALLBACK_CONV, embed_dim=256, num_layers=4, num_heads=4,
                                ffn_dim=1024, latent_vars=128, final_dim=128, conv_pos=32, conv_pos_groups=8)
            source = "built-in fallback (no configs/tiny.yaml)"
    elif name != "base4":
        raise ValueError(f"unknown benchmark config '{name}' (known: tiny, base4)")
    model = dataclasses.replace(model, layerdrop=0.0, feature_grad_mult=1.0)
    loss = dataclasses.replace(loss, num_negatives=100, cross_sample_negatives=0)
    return BenchSetup(name, model, masking, loss, source)


def hf_config(setup: BenchSetup) -> Any:
    """The `transformers.Wav2Vec2Config` with the same architecture, dropouts and objective."""
    from transformers import Wav2Vec2Config

    m, mk, lc = setup.model, setup.masking, setup.loss
    return Wav2Vec2Config(
        conv_dim=[c for c, _, _ in m.conv_layers], conv_kernel=[k for _, k, _ in m.conv_layers],
        conv_stride=[s for _, _, s in m.conv_layers], num_feat_extract_layers=len(m.conv_layers),
        conv_bias=m.conv_bias, feat_extract_norm="group" if m.extractor_mode == "group_norm" else "layer",
        do_stable_layer_norm=m.layer_norm_first,
        hidden_size=m.embed_dim, num_hidden_layers=m.num_layers, intermediate_size=m.ffn_dim,
        num_attention_heads=m.num_heads, num_conv_pos_embeddings=m.conv_pos,
        num_conv_pos_embedding_groups=m.conv_pos_groups,
        hidden_dropout=m.dropout, attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout,
        feat_proj_dropout=m.dropout_input, feat_quantizer_dropout=m.dropout_features, layerdrop=m.layerdrop,
        num_codevector_groups=m.latent_groups, num_codevectors_per_group=m.latent_vars,
        codevector_dim=m.codevector_dim, proj_codevector_dim=m.final_dim,
        num_negatives=lc.num_negatives, contrastive_logits_temperature=lc.logit_temp,
        diversity_loss_weight=lc.diversity_weight,
        # HF draws mask_time_prob * T / M spans, we draw p * T: the same count with mask_time_prob = p * M.
        mask_time_prob=mk.mask_prob * mk.mask_length, mask_time_length=mk.mask_length,
        mask_time_min_masks=mk.min_masks, mask_feature_prob=0.0,
    )


def make_waveforms(clips: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """(clips, samples): three tones plus noise per clip; the same batch for both models."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    freqs = torch.rand(clips, 3, 1, generator=g) * 2000 + 100
    tones = torch.sin(2 * torch.pi * freqs * t).sum(1)  # (clips, n)
    return 0.3 * tones + 0.1 * torch.randn(clips, n, generator=g)


def make_adamw(model: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                             fused=fused)


class OursStep:
    """Our step: the model draws its own mask and distractors from an injected generator."""

    def __init__(self, setup: BenchSetup, fused_adamw: bool) -> None:
        from aiot_w2v2.model import Wav2Vec2ForPreTraining

        self.model = Wav2Vec2ForPreTraining(setup.model, setup.masking, setup.loss).train()
        self.opt = make_adamw(self.model, fused_adamw)
        self.generator = torch.Generator().manual_seed(1)
        self.step_count = 0

    def __call__(self, waveform: torch.Tensor) -> dict[str, int]:
        self.model.set_num_updates(self.step_count)
        out = self.model(waveform, generator=self.generator)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        # Only masked frames are quantized and scored.
        return {"masked_frames": out.num_masked, "frames": out.mask.numel(), "quantized_frames": out.num_masked,
                "logit_rows": out.logits.shape[0], "logit_cols": out.logits.shape[1]}


class HFStep:
    """HF's step as in its pretraining example: numpy mask + negatives per step, loss / masked frames."""

    def __init__(self, setup: BenchSetup, fused_adamw: bool) -> None:
        from transformers import Wav2Vec2ForPreTraining

        self.loss_config = setup.loss
        self.model = Wav2Vec2ForPreTraining(hf_config(setup)).train()
        self.opt = make_adamw(self.model, fused_adamw)
        self.step_count = 0

    def __call__(self, waveform: torch.Tensor) -> dict[str, int]:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        cfg = self.model.config
        B = waveform.shape[0]
        T = int(self.model._get_feat_extract_output_lengths(waveform.shape[1]))
        mask = _compute_mask_indices((B, T), cfg.mask_time_prob, cfg.mask_time_length,
                                     min_masks=cfg.mask_time_min_masks)
        negatives = _sample_negative_indices((B, T), cfg.num_negatives, mask_time_indices=mask)
        mask_t = torch.tensor(mask, dtype=torch.long)
        negatives_t = torch.tensor(negatives, dtype=torch.long)
        num_losses = int(mask_t.sum())
        lc = self.loss_config
        self.model.set_gumbel_temperature(max(lc.temp_start * lc.temp_decay ** self.step_count, lc.temp_end))
        out = self.model(waveform, mask_time_indices=mask_t, sampled_negative_indices=negatives_t)
        (out.loss / num_losses).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        # HF quantizes every frame and scores it against 1 + K candidates; the loss drops unmasked rows.
        return {"masked_frames": num_losses, "frames": B * T, "quantized_frames": B * T, "logit_rows": B * T,
                "logit_cols": 1 + cfg.num_negatives}


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(which: str, name: str, clips: int, seconds: float, threads: int, fused_adamw: bool,
           profile: int) -> None:
    """One model in its own process. Reads commands from stdin ("step", "finish"), answers JSON lines."""
    torch.set_num_threads(threads)
    import transformers  # noqa: F401  (both workers import it, so their baseline RSS is alike)

    torch.manual_seed(0)
    setup = bench_setup(name)
    step = OursStep(setup, fused_adamw) if which == "ours" else HFStep(setup, fused_adamw)
    waveform = make_waveforms(clips, seconds)
    reply = {"rss_before_steps_mib": rss_mib(), "params": sum(p.numel() for p in step.model.parameters())}
    if which == "hf":
        reply["hf_attn_implementation"] = step.model.config._attn_implementation
    print(json.dumps(reply), flush=True)
    for command in sys.stdin:
        if command.strip() == "step":
            wall, cpu = time.perf_counter(), time.process_time()
            work = step(waveform)
            reply = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, **work}
        elif command.strip() == "finish":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                step(waveform)
            reply = {"peak_rss_mib": peak, "flops_per_step": counter.get_total_flops()}
            if profile:
                print_profile(step, waveform, profile, f"{which}/{name}")
            print(json.dumps(reply), flush=True)
            return
        print(json.dumps(reply), flush=True)


def print_profile(step: OursStep | HFStep, waveform: torch.Tensor, steps: int, title: str) -> None:
    """Top ops by self CPU time over `steps` steps, on stderr."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(waveform)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=45)
    print(f"==== profile {title}, {steps} steps\n{table}", file=sys.stderr, flush=True)


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        self.ready = self._read()

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            sys.exit(f"worker {self.proc.args} exited with {self.proc.returncode}")
        return json.loads(line)

    def finish(self) -> dict[str, Any]:
        out = self.ask("finish")
        self.proc.wait()
        return out


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 `torch.mm` rate for n x n matrices at this thread count, GFLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    import transformers

    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def summarize(ready: dict[str, Any], steps: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    wall = [s["wall_s"] for s in steps]
    cpu = [s["cpu_s"] for s in steps]
    median = statistics.median(wall)
    return {
        **ready, **final,
        "step_s_median": median, "step_s_mean": statistics.fmean(wall), "step_s_min": min(wall),
        "steps_per_s": 1.0 / median, "cpu_s_median": statistics.median(cpu),
        "gflops_per_s": final["flops_per_step"] / median / 1e9,
        "masked_frames_mean": statistics.fmean(s["masked_frames"] for s in steps),
        "frames": steps[0]["frames"], "quantized_frames_mean": statistics.fmean(s["quantized_frames"] for s in steps),
        "logit_rows_mean": statistics.fmean(s["logit_rows"] for s in steps), "logit_cols": steps[0]["logit_cols"],
    }


def print_table(rows: list[dict[str, Any]], peak: float) -> None:
    head = (f"{'config':<7} {'batch':<7} {'ours st/s':>9} {'HF st/s':>8} {'ratio':>6} {'cpu ratio':>9} "
            f"{'ours GF/s':>9} {'%peak':>6} {'HF GF/s':>8} {'%peak':>6} {'RSS ours':>9} {'RSS HF':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        o, h = r["ours"], r["hf"]
        print(f"{r['config']:<7} {r['clips']}x{r['seconds']:g}s{'':<2} {o['steps_per_s']:>9.2f} "
              f"{h['steps_per_s']:>8.2f} {r['ratio']:>5.2f}x {r['cpu_ratio']:>8.2f}x "
              f"{o['gflops_per_s']:>9.1f} {100 * o['gflops_per_s'] / peak:>5.1f}% "
              f"{h['gflops_per_s']:>8.1f} {100 * h['gflops_per_s'] / peak:>5.1f}% "
              f"{o['peak_rss_mib']:>7.0f}Mi {h['peak_rss_mib']:>6.0f}Mi")
    print(f"fp32 matmul peak (2048^2 torch.mm, best of two measurements): {peak:.1f} GFLOP/s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tiny,base4", help="comma-separated: tiny, base4")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=None, help="clips per batch (default: tiny 4, base4 2)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per clip (default 4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-fused-adamw", action="store_true", help="for-loop AdamW (PyTorch's CPU default) for both")
    p.add_argument("--out", default="results.json")
    p.add_argument("--profile", type=int, default=0, help="then profile N steps per model; tables on stderr")
    p.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active", "unset"],
                   help="OMP_WAIT_POLICY for the workers; passive keeps idle OpenMP threads from spinning, which "
                        "on a shared machine otherwise costs several times the step time (default passive)")
    p.add_argument("--worker", choices=["ours", "hf", "peak"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    fused = not args.no_fused_adamw

    def batch_for(name: str) -> tuple[int, float]:
        clips, seconds = DEFAULT_BATCH.get(name, (2, 4.0))
        return args.batch or clips, args.seconds or seconds

    if args.worker == "peak":
        print(json.dumps({"matmul_peak_gflops": matmul_peak_gflops(args.threads)}))
        return
    if args.worker:
        worker(args.worker, names[0], *batch_for(names[0]), args.threads, fused, args.profile)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy != "unset":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()

    def measure_peak() -> float:  # in a worker, so that it runs under the workers' OpenMP settings
        cmd = [sys.executable, __file__, "--worker", "peak", "--threads", str(args.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["matmul_peak_gflops"]

    info = machine_info()
    peak = measure_peak()
    load = [os.getloadavg()[0]]
    rows = []
    for name in names:
        clips, seconds = batch_for(name)
        workers = {}
        for which in ("ours", "hf"):
            cmd = [sys.executable, __file__, "--worker", which, "--configs", name, "--threads", str(args.threads),
                   "--batch", str(clips), "--seconds", str(seconds), "--profile", str(args.profile)]
            workers[which] = Worker(cmd + (["--no-fused-adamw"] if not fused else []), env)
        steps: dict[str, list[dict[str, Any]]] = {"ours": [], "hf": []}
        for i in range(args.warmup + args.steps):
            for which, w in workers.items():  # alternate: ours, HF, ours, HF, ...
                reply = w.ask("step")
                if i >= args.warmup:
                    steps[which].append(reply)
            print(f"{name}: step {i + 1}/{args.warmup + args.steps}", file=sys.stderr, end="\r", flush=True)
        setup = bench_setup(name)
        row: dict[str, Any] = {"config": name, "clips": clips, "seconds": seconds, "config_source": setup.source,
                               "model_config": to_dict(setup.model), "masking_config": to_dict(setup.masking),
                               "loss_config": to_dict(setup.loss)}
        for which, w in workers.items():
            row[which] = summarize(w.ready, steps[which], w.finish())
        row["ratio"] = row["ours"]["steps_per_s"] / row["hf"]["steps_per_s"]
        row["cpu_ratio"] = row["hf"]["cpu_s_median"] / row["ours"]["cpu_s_median"]
        rows.append(row)
        load.append(os.getloadavg()[0])
        print(f"{name}: ours {row['ours']['steps_per_s']:.2f} steps/s, HF {row['hf']['steps_per_s']:.2f} steps/s",
              file=sys.stderr)
    peak = max(peak, measure_peak())

    print_table(rows, peak)
    result = {"command": " ".join(["python", *sys.argv]), "machine": info, "threads": args.threads,
              "omp_wait_policy": args.omp_wait_policy, "fused_adamw": fused, "steps": args.steps,
              "warmup": args.warmup, "matmul_peak_gflops": peak, "load_average_1min": load, "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
