"""Training loops: wav2vec 2.0 pretraining (`pretrain`), single process or torchrun DDP.

`schedule` holds the pure learning-rate function, `metrics` where logged numbers go, `state` the
training state saved for exact resume, `pretrain` the loop and its `python -m` entry point.
"""

import warnings

# `python -m aiot_w2v2.train.pretrain` imports this package (and so the module) before running the
# module as __main__; runpy then warns about the double import, which is harmless here.
warnings.filterwarnings("ignore", message=r"'aiot_w2v2\.train\.pretrain' found in sys\.modules",
                        category=RuntimeWarning)

from .pretrain import (  # noqa: E402
    NoUsableAudioError,
    PretrainSummary,
    normalize_gradients,
    pretrain,
    release_process_group,
)
from .schedule import lr_at  # noqa: E402

__all__ = ["NoUsableAudioError", "PretrainSummary", "lr_at", "normalize_gradients", "pretrain", "release_process_group"]
