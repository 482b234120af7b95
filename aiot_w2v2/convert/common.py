"""What every converter shares: the result type, key renaming, weight-norm names, safe `.pt` reading,
and building our model from a renamed state dict (strict: every tensor must find its place).

Converters map foreign keys to our `Wav2Vec2ForPreTraining` names (backbone under `wav2vec2.`);
`build_model` strips that prefix when the source has no pretraining head. Nothing here knows a
particular source format.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..asr.vocab import FAIRSEQ_SPECIALS, HF_SPECIALS, LIBRISPEECH_LETTERS
from ..config import PretrainConfig
from ..model import Wav2Vec2ForPreTraining, Wav2Vec2Model

BACKBONE = "wav2vec2."
# Our keys a source may lack without harm: HF and torchaudio models without masking have no mask
# embedding; it only matters for masking during (further) training and keeps its fresh init.
OPTIONAL_KEYS = ("wav2vec2.mask_emb",)

RESAVE_SCRIPT = '''\
# Run where fairseq is installed. torch's restricted loader (weights_only=True) reads tensors, plain data
# and, allowed here, the argparse Namespace of old fairseq files; if it names other classes (a newer
# file's omegaconf config), add the ones you trust to the list, for a file you trust.
import argparse, torch
torch.serialization.add_safe_globals([argparse.Namespace])
def plain(x):
    if isinstance(x, argparse.Namespace):
        x = vars(x)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x if x is None or isinstance(x, (bool, int, float, str)) else str(x)
ckpt = torch.load("IN.pt", map_location="cpu", weights_only=True)
cfg = ckpt.get("cfg") or {"model": ckpt["args"], "task": ckpt["args"]}
try:
    from omegaconf import OmegaConf
    cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
except ImportError:
    pass
torch.save({"cfg": plain(cfg), "model": ckpt["model"]}, "OUT.pt")'''


class ConversionError(ValueError):
    """A foreign checkpoint cannot be mapped onto our model; the message says what and why."""


# Where each source keeps the tokens of its CTC outputs, and the published LibriSpeech letter
# vocabulary in its layout (wav2vec2-base-960h's vocab.json, fairseq's dict.ltr.txt behind its
# Dictionary's 4 specials, torchaudio's ASR bundle labels): see asr/vocab.py.
VOCAB_FILES = {"hf": "vocab.json", "fairseq": "dict.ltr.txt", "torchaudio": None}
PUBLISHED_VOCABS = {"hf": (*HF_SPECIALS, *LIBRISPEECH_LETTERS), "fairseq": (*FAIRSEQ_SPECIALS, *LIBRISPEECH_LETTERS),
                    "torchaudio": ("-", *LIBRISPEECH_LETTERS)}


def published_vocab(fmt: str, source: Path, head: dict[str, Tensor]) -> list[str] | None:
    """The published letter vocabulary in `fmt`'s layout when the CTC head has its size, else None.

    For a CTC source whose vocabulary file is missing: the published checkpoints all use that
    vocabulary, so a head of its size is taken to use it, and a warning says so (a model trained
    with other tokens of the same count would decode wrongly; its own file fixes that).
    """
    tokens = PUBLISHED_VOCABS[fmt]
    if head["weight"].shape[0] != len(tokens):
        return None
    where = f"no {VOCAB_FILES[fmt]} beside it" if VOCAB_FILES[fmt] else "torchaudio files carry no labels"
    warnings.warn(f"{source}: a CTC head and {where}; its {len(tokens)} outputs match the published LibriSpeech "
                  f"letter vocabulary ({' '.join(tokens[:7])} ...), which is used. If the model was trained with "
                  "other tokens, put its own vocabulary beside it.", stacklevel=3)
    return list(tokens)


def missing_vocab_message(fmt: str, source: Path, head: dict[str, Tensor]) -> str:
    """Why a CTC head without a usable vocabulary cannot become a CTC model, and what to add."""
    rows, published = head["weight"].shape[0], len(PUBLISHED_VOCABS[fmt])
    file = VOCAB_FILES[fmt]
    need = (f"put the {file} the model was trained with beside it" if file else
            "torchaudio files carry no labels: use aiot_w2v2.convert.load_foreign_ctc for the encoder and the head")
    return (f"{source}: a CTC head of {rows} outputs but no usable {file or 'vocabulary'} (missing, or not "
            f"{rows} tokens), and {rows} is not the size of the published letter vocabulary ({published}): {need}")


@dataclass
class Converted:
    """A foreign model mapped onto ours.

    kind "pretraining": `model` is our `Wav2Vec2ForPreTraining` (the source had a quantizer head);
    kind "encoder": our `Wav2Vec2Model` (HF `Wav2Vec2Model`/`Wav2Vec2ForCTC`, fairseq fine-tuned,
    torchaudio). A CTC source also fills `ctc_head` ({"weight": (V, D), "bias": (V,)}: logits =
    hidden @ weight.T + bias on the final hidden states) and `vocab` (token of each output, if known).
    """

    model: nn.Module
    config: PretrainConfig
    kind: str
    ctc_head: dict[str, Tensor] | None = None
    vocab: list[str] | None = None
    step: int = 0  # training updates of the source (sets the Gumbel temperature), when known
    notes: list[str] = field(default_factory=list)  # what the conversion could not carry over
    source_format: str = ""  # "hf" | "fairseq" | "torchaudio": where a CTC source's vocabulary would be


def map_key(key: str, table: Mapping[str, str]) -> str | None:
    """`key` renamed by the first pattern of `table` that matches at its start; None if none does."""
    for pattern, repl in table.items():
        new, n = re.subn("^" + pattern, repl, key, count=1)
        if n:
            return new
    return None


def rename_keys(state: Mapping[str, Tensor], table: Mapping[str, str]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename every key with `map_key` (weight-norm names normalised first).

    Returns (renamed state, keys no pattern matched).
    """
    renamed: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in normalize_weight_norm(state).items():
        new = map_key(key, table)
        if new is None:
            unmatched.append(key)
        else:
            renamed[new] = value
    return renamed, unmatched


def normalize_weight_norm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Old `nn.utils.weight_norm` names (`weight_g`, `weight_v`) -> torch parametrization names."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


def split_weight_norm(state: dict[str, Tensor], prefix: str) -> None:
    """A positional conv saved without weight norm (`prefix.weight`) -> magnitude g and direction v.

    w = g * v / ||v|| with the norm over all dims but the kernel (dim=2), so g = ||w||, v = w.
    """
    key = prefix + "weight"
    if key in state:
        w = state.pop(key)
        state[prefix + "parametrizations.weight.original0"] = w.norm(dim=(0, 1), keepdim=True)
        state[prefix + "parametrizations.weight.original1"] = w


def build_model(cfg: PretrainConfig, state: dict[str, Tensor], kind: str, source: str) -> nn.Module:
    """Our model for `cfg`, loaded from `state` (keys in `Wav2Vec2ForPreTraining` naming), in eval mode."""
    if kind == "pretraining":
        model: nn.Module = Wav2Vec2ForPreTraining(cfg.model, cfg.masking, cfg.loss)
        backbone = model.wav2vec2
    elif kind == "encoder":
        model = backbone = Wav2Vec2Model(cfg.model)
    else:
        raise ValueError(f"unknown model kind '{kind}' (expected 'pretraining' or 'encoder')")
    state = dict(state)
    split_weight_norm(state, BACKBONE + "encoder.pos_conv.conv.")
    if backbone.post_extract_proj is None:
        _drop_identity_projection(state, source)
    if kind == "encoder":
        state = {k[len(BACKBONE):]: v for k, v in state.items() if k.startswith(BACKBONE)}
        optional = tuple(k[len(BACKBONE):] for k in OPTIONAL_KEYS)
    else:
        optional = OPTIONAL_KEYS
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConversionError(
            f"{source}: the weights do not fit the model its config describes"
            + (f"; missing {missing[:6]}" if missing else "")
            + (f"; not in our model {unexpected[:6]}" if unexpected else "")
            + (f"; shape mismatch {wrong[:4]}" if wrong else ""))
    model.load_state_dict(state, strict=False)
    return model.eval()


def _drop_identity_projection(state: dict[str, Tensor], source: str) -> None:
    # fairseq has no feature projection when conv_dim == embed_dim, nor do we; HF and torchaudio
    # always have one. An identity projection carries no information; anything else has no slot.
    w = state.pop(BACKBONE + "post_extract_proj.weight", None)
    b = state.pop(BACKBONE + "post_extract_proj.bias", None)
    if w is None:
        return
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    if w.shape != eye.shape or not torch.equal(w, eye) or (b is not None and bool(b.any())):
        raise ConversionError(
            f"{source}: the feature projection is a learned {tuple(w.shape)} matrix, but with conv dim == "
            "embed dim our model (like fairseq) has no feature projection to hold it")


def load_pt(path: str | Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)` with a clear refusal for pickled classes.

    Besides tensors and plain containers, only numpy scalars and dtypes (fairseq keeps them in its
    training metrics) are accepted; they are data, not code. An argparse Namespace (old fairseq
    `args`) or any other class is refused with the script to re-save the file without it.
    """
    path = Path(path)
    blocked: list[str] = []
    safe: list[Any] = []
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is not None:
        try:
            names = find(str(path))
        except Exception as exc:  # not a torch file at all
            raise ConversionError(f"{path}: not a readable torch checkpoint ({exc})") from exc
        for name in names:
            allowed = _numpy_data_globals(name)
            if allowed is None:
                blocked.append(name)
            else:
                safe.extend(allowed)
    if blocked:
        raise ConversionError(_refusal(path, blocked))
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # older torch without the scan: the unpickler names the global
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise ConversionError(_refusal(path, found)) from None
        raise ConversionError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _refusal(path: Path, names: list[str]) -> str:
    if "argparse.Namespace" in names:
        why = ("it stores its config as a pickled argparse Namespace (old fairseq `args`), which cannot be "
               "read without unpickling")
    else:
        why = f"it contains pickled Python objects ({', '.join(sorted(set(names)))})"
    return (f"{path}: refusing to load: {why}. Unpickling runs code from the file, so we only read tensors "
            "and plain data (torch.load(weights_only=True)). Re-save it once without the objects, e.g.:\n\n"
            + RESAVE_SCRIPT)


def _numpy_data_globals(name: str) -> list[Any] | None:
    """What to allow for the numpy global `name` (scalar reconstructor, dtypes), or None if it is not one."""
    try:
        import numpy as np
    except ImportError:
        return None
    if name in ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar"):
        core = getattr(np, "_core", None) or np.core
        return [(core.multiarray.scalar, name)]
    if name == "numpy.dtype" or name.startswith("numpy.dtypes."):
        # a pickled dtype names np.dtype but is rebuilt as its class (numpy.dtypes.Float64DType, ...)
        found = vars(getattr(np, "dtypes", np)).values()
        return [np.dtype, *(c for c in found if isinstance(c, type) and issubclass(c, np.dtype))]
    return None


def round_prob(x: float) -> float:
    """Undo float noise of p*M and /M (0.65 / 10 -> 0.065 exactly) so configs round-trip."""
    return round(float(x), 12)
