"""Continued pretraining of a copy of the model on one machine type's normal clips (`fit --set adapt_steps=N`).

The copy keeps the checkpoint's masking and loss settings and the Gumbel temperature where its
pretraining ended; AdamW at a constant `lr`, gradient clipping as in pretraining, batches as in
pretraining (`data.make_loader`), randomness from an injected generator. One visible loop; no
checkpoints, no resume: it is part of fitting, minutes long, and its result is saved with the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import PretrainConfig
from ..data.dataset import make_loader
from ..data.manifest import build_manifest
from ..model.wav2vec2 import Wav2Vec2ForPreTraining
from ..train.pretrain import batch_stream


def adapt_model(pretrained: Wav2Vec2ForPreTraining, paths: list[str], cfg: PretrainConfig, steps: int, lr: float,
                seed: int = 0, progress: bool = True, desc: str = "adapt") -> tuple[Wav2Vec2ForPreTraining, dict]:
    """A copy of `pretrained` trained `steps` more updates on the clips `paths`; and its first/last metrics."""
    model = Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss)
    model.load_state_dict(pretrained.state_dict())
    model.set_num_updates(cfg.optim.max_steps)  # the temperature where pretraining ended
    model.train()
    manifest = build_manifest([Path(p) for p in paths])
    loader = make_loader(manifest, cfg.data, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    stream = batch_stream(loader, 0, 0, 1, torch.device("cpu"))
    history: list[dict[str, float]] = []
    bar = tqdm(total=steps, desc=desc, unit="upd", disable=not progress)
    done = 0
    while done < steps:
        batch = next(stream)[3]
        if batch is None:  # every clip of the batch failed to decode
            continue
        out = model(batch.waveform, batch.padding_mask, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.optim.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm)
        optimizer.step()
        done += 1
        history.append(dict(loss=float(out.loss.detach()), accuracy=float(out.accuracy),
                            chance=float(out.chance_accuracy)))
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['accuracy']:.3f}")
    bar.close()
    first, last = history[: max(1, steps // 10)], history[-max(1, steps // 10):]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    summary = {f"{when}_{k}": round(mean(rows, k), 4) for when, rows in (("first", first), ("last", last))
               for k in ("loss", "accuracy", "chance")}
    return model.eval(), summary
