"""A pretraining checkpoint whose Transformer is the fine-tuned copy of a fitted model (issue 12, item 4).

`fit` keeps the pretrained Transformer for the contrastive and code scorers and fine-tunes a copy for
the learned embedding. To measure the contrastive scorers on the fine-tuned Transformer, this writes the
pretrained checkpoint with the fine-tuned projection and Transformer put in (the feature layer norm stays
the pretrained one, since the quantizer reads its output: the codes and targets stay those of the
pretrained model; quantizer, codebook, final_proj and the frozen conv encoder unchanged), to fit again
with `finetune.steps=0`:

    python benchmarks/finetuned_checkpoint.py --model MODEL --out CKPT_RUN
    aiot-w2v2 fit --run CKPT_RUN --data DATA --out M2 --set finetune.steps=0 \\
        --set scorers=[contrastive,contrastive_bank,code_hist]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiot_w2v2.anomaly.scoring_model import load_scoring_model
from aiot_w2v2.checkpoint import save_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder of `aiot-w2v2 fit` with a fine-tuned embedder")
    p.add_argument("--out", required=True, help="run folder to write (OUT/checkpoint_last)")
    a = p.parse_args()
    model = load_scoring_model(a.model)
    if model.embedder is None:
        raise SystemExit(f"{a.model}: no fine-tuned embedder (fitted with finetune.steps=0?)")
    pretrained = model.frontend.model
    w2v = pretrained.wav2vec2
    if w2v.post_extract_proj is not None:
        w2v.post_extract_proj.load_state_dict(model.embedder.post_extract_proj.state_dict())
    w2v.encoder.load_state_dict(model.embedder.encoder.state_dict())
    out = save_pretrained(pretrained, model.meta.pretrain, Path(a.out) / "checkpoint_last")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
