"""The anomaly scorers: statistics fitted on normal windows, and scores computed from them.

Each scorer is two functions, a fit (numpy/torch on the features of normal training windows of one
machine ID) and a score (torch, on `WindowFeatures` and the statistics of E machine IDs stacked
along the first axis). The scores are plain tensor math, so `ScoringModel` traces them to ONNX and
`fit` uses the very same functions for cross-fitted calibration. Higher = more anomalous.

- `contrastive`       mean (or top fraction) of the fixed-mask contrastive loss, distractors = the
                      window's own frames (no fitted statistics).
- `contrastive_bank`  the same, distractors = a fixed bank of quantized targets from normal training
                      windows of the machine ID (frames with the positive's codes excluded).
- `code_unigram`      negative log-likelihood of the codes under per-group unigram statistics.
- `code_bigram`       negative log-likelihood of code transitions t-1 -> t (per group), smoothed
                      towards the unigram.
- `code_hist`         Jensen-Shannon divergence between the window's code histogram and the normal one.
- `knn`               1 - mean cosine similarity to the k nearest normal embeddings (standardised).
- `mahalanobis`       Mahalanobis distance of the embedding (covariance shrunk towards a scaled identity,
                      `mahalanobis_shrinkage`; Ledoit-Wolf with null; scikit-learn).
- `learned`           what the network learned alone: the Mahalanobis distance of the standardised `learned`
                      embedding (the fine-tuned pooled embedding, or pooled outputs of pretrained layers),
                      covariance shrunk by `learned_shrinkage` (Ledoit-Wolf with null). No log-mel, kurtosis
                      or energy statistics. Models fitted before it was a Mahalanobis distance carry a bank
                      (`lrn_bank`) and score 1 - cosine similarity to the nearest normal window, as then.
- `spectral`          the fixed signal-processing branch alone: the Mahalanobis distance of a `conv<i>`
                      embedding (conv energies, rhythm, log-mel, spectral kurtosis); the same statistics
                      and value as `mahalanobis` with such an embedding, under the name reports compare.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf, ShrunkCovariance
from torch import Tensor

from .frontend import WindowFeatures

SCORERS = ("contrastive", "contrastive_bank", "code_unigram", "code_bigram", "code_hist", "knn", "mahalanobis",
           "learned", "spectral")
ENSEMBLE = "ensemble"
EMBEDDING_SCORERS = ("knn", "mahalanobis", "learned", "spectral")  # need no codes, contrastive passes or targets


# ---------------------------------------------------------------------------------------------------
# fitting (one machine ID; arrays from the frontend's features of its normal training windows)


def fit_stats(embeddings: np.ndarray, codes: list[np.ndarray], bank_targets: np.ndarray, bank_codes: np.ndarray,
              num_vars: int, smoothing: float, max_knn: int, rng: np.random.Generator,
              shrinkage: float | None = None, learned: np.ndarray | None = None,
              learned_shrinkage: float | None = None) -> dict[str, np.ndarray]:
    """embeddings (N, D); codes: per window (T, G) ints; bank_targets (Nb, F), bank_codes (Nb, G);
    learned (N, L) the `learned` embeddings (None: the scorer is not fitted), its covariance shrunk by
    `learned_shrinkage` (None: Ledoit-Wolf).

    `shrinkage`: of the Mahalanobis covariance towards a scaled identity; None = Ledoit-Wolf's estimate.
    A small value makes the distance mostly the residual outside the subspace normal windows span.

    Returns the statistics of one machine ID as float32/int64 arrays (see `score_windows`).
    """
    if embeddings.shape[0] < 2:
        raise ValueError("need at least 2 normal windows to fit the scorers")
    G = codes[0].shape[1]
    uni = np.full((G, num_vars), smoothing, dtype=np.float64)
    big = np.zeros((G, num_vars, num_vars), dtype=np.float64)
    for c in codes:  # (T, G)
        for g in range(G):
            uni[g] += np.bincount(c[:, g], minlength=num_vars)
            np.add.at(big[g], (c[:-1, g], c[1:, g]), 1.0)
    uni_p = uni / uni.sum(1, keepdims=True)  # (G, V)
    # Bigram smoothed towards the unigram: p(b | a) = (n_ab + s * V * p(b)) / (n_a + s * V).
    prior = smoothing * num_vars
    big_p = (big + prior * uni_p[:, None, :]) / (big.sum(2, keepdims=True) + prior)  # (G, V, V)

    mu, sd = embeddings.mean(0), embeddings.std(0) + 1e-6
    z = (embeddings - mu) / sd
    if z.shape[0] > max_knn:
        z = z[np.sort(rng.choice(z.shape[0], max_knn, replace=False))]
    bank = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-8)
    lw = LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)
    lw.fit(embeddings.astype(np.float64))
    extra = {} if learned is None else _fit_learned(learned, learned_shrinkage)
    return extra | dict(
        uni_logp=np.log(uni_p).astype(np.float32),
        big_logp=np.log(big_p).astype(np.float32),
        hist_ref=uni_p.astype(np.float32),
        emb_mean=mu.astype(np.float32), emb_std=sd.astype(np.float32),
        knn_bank=bank.astype(np.float32),
        maha_mean=lw.location_.astype(np.float32), maha_prec=lw.precision_.astype(np.float32),
        bank_targets=bank_targets.astype(np.float32), bank_codes=bank_codes.astype(np.int64),
    )


def _fit_learned(learned: np.ndarray, shrinkage: float | None) -> dict[str, np.ndarray]:
    """The `learned` scorer's statistics: standardisation, then the location and shrunk precision."""
    mu, sd = learned.mean(0), learned.std(0) + 1e-6
    z = (learned - mu) / sd
    cov = LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)
    cov.fit(z.astype(np.float64))
    return dict(lrn_mean=mu.astype(np.float32), lrn_std=sd.astype(np.float32),
                lrn_loc=cov.location_.astype(np.float32), lrn_prec=cov.precision_.astype(np.float32))


def stack_stats(per_entry: list[dict[str, np.ndarray]]) -> dict[str, Tensor]:
    """Stack E machine IDs' statistics; banks of different sizes are padded (`*_valid` says which rows count)."""
    out: dict[str, Tensor] = {}
    for key in per_entry[0]:
        arrays = [s[key] for s in per_entry]
        if key in ("knn_bank", "bank_targets", "bank_codes", "lrn_bank"):
            n = max(a.shape[0] for a in arrays)
            padded = np.zeros((len(arrays), n) + arrays[0].shape[1:], dtype=arrays[0].dtype)
            valid = np.zeros((len(arrays), n), dtype=bool)
            for i, a in enumerate(arrays):
                padded[i, : a.shape[0]] = a
                valid[i, : a.shape[0]] = True
            out[key] = torch.from_numpy(padded)
            if key != "bank_codes":
                out[key.split("_")[0] + "_valid"] = torch.from_numpy(valid)
        else:
            out[key] = torch.from_numpy(np.stack(arrays))
    return out


# ---------------------------------------------------------------------------------------------------
# scoring (torch; features of B windows, statistics of E machine IDs) -> (B, E) per scorer


def _aggregate(frame_scores: Tensor, topk: int) -> Tensor:
    """(..., T) -> (...): mean over frames, or the mean of the `topk` highest."""
    if topk > 0:
        return frame_scores.topk(min(topk, frame_scores.shape[-1]), dim=-1).values.mean(-1)
    return frame_scores.mean(-1)


def _nearest(x: Tensor, mean: Tensor, std: Tensor, bank: Tensor, valid: Tensor, k: int) -> Tensor:
    """1 - mean cosine similarity of standardised x (B, D) to its k nearest rows of each entry's bank -> (B, E)."""
    z = (x[:, None] - mean[None]) / std[None]  # (B, E, D)
    z = torch.nn.functional.normalize(z, dim=-1, eps=1e-8)
    sim = torch.einsum("bed,end->ben", z, bank).masked_fill(~valid[None], -2.0)
    return 1.0 - sim.topk(k, dim=-1).values.mean(-1)


def _mahalanobis(x: Tensor, mean: Tensor, prec: Tensor) -> Tensor:
    """x (B, D) or (B, E, D), mean (E, D), prec (E, D, D) -> (B, E) Mahalanobis distances."""
    d = (x[:, None] if x.dim() == 2 else x) - mean[None]  # (B, E, D)
    return torch.sqrt(torch.einsum("bed,edk,bek->be", d, prec, d).clamp(min=0.0))


def score_windows(f: WindowFeatures, s: dict[str, Tensor], scorers: tuple[str, ...], logit_temp: float,
                  knn_k: int = 1, topk: int = 0) -> dict[str, Tensor]:
    """Every scorer in `scorers` (names from SCORERS) -> (B, E) scores."""
    B, T, G = f.codes.shape
    E = s["maha_mean"].shape[0]
    out: dict[str, Tensor] = {}
    if "contrastive" in scorers:
        out["contrastive"] = _aggregate(f.self_loss, topk)[:, None].expand(B, E)
    if "contrastive_bank" in scorers:
        pos = (f.context * f.targets).sum(-1) / logit_temp  # (B, T)
        neg = torch.einsum("btf,enf->bten", f.context, s["bank_targets"]) / logit_temp  # (B, T, E, Nb)
        # One integer per frame for its G codes, so "same codes" is a single comparison: `.all(-1)` over
        # the groups exports as Not/Cast/ReduceSum over (B, T, E, Nb, G), 5x this scorer's time in onnxruntime.
        V = int(s["hist_ref"].shape[-1])
        radix = torch.tensor([V**g for g in range(G)], device=f.codes.device)  # (G,)
        frame_key = (f.codes * radix).sum(-1)  # (B, T)
        bank_key = (s["bank_codes"] * radix).sum(-1)  # (E, Nb)
        same = frame_key[:, :, None, None] == bank_key[None, None]  # (B, T, E, Nb)
        neg = neg.masked_fill(same | ~s["bank_valid"][None, None], float("-inf"))
        lse = torch.logsumexp(torch.cat([pos[:, :, None, None].expand(B, T, E, 1), neg], -1), -1)  # (B, T, E)
        out["contrastive_bank"] = _aggregate((lse - pos[:, :, None]).permute(0, 2, 1), topk)  # (B, E)
    gi = torch.arange(G, device=f.codes.device)
    if "code_unigram" in scorers:
        lp = s["uni_logp"][:, gi[None, None, :], f.codes]  # (E, B, T, G)
        out["code_unigram"] = -lp.sum(-1).mean(-1).T
    if "code_bigram" in scorers:
        lp = s["big_logp"][:, gi[None, None, :], f.codes[:, :-1], f.codes[:, 1:]]  # (E, B, T-1, G)
        out["code_bigram"] = -lp.sum(-1).mean(-1).T
    if "code_hist" in scorers:
        V = s["hist_ref"].shape[-1]
        h = torch.nn.functional.one_hot(f.codes, V).float().mean(1)  # (B, G, V)
        p, q = h[:, None], s["hist_ref"][None]  # (B, 1, G, V), (1, E, G, V)
        m = 0.5 * (p + q)
        kl = lambda a, b: (a * (torch.log(a + 1e-12) - torch.log(b + 1e-12))).sum(-1)  # noqa: E731
        out["code_hist"] = (0.5 * kl(p, m) + 0.5 * kl(q, m)).sum(-1)  # (B, E)
    if "knn" in scorers:
        out["knn"] = _nearest(f.embedding, s["emb_mean"], s["emb_std"], s["knn_bank"], s["knn_valid"], knn_k)
    if "mahalanobis" in scorers or "spectral" in scorers:
        maha = _mahalanobis(f.embedding, s["maha_mean"], s["maha_prec"])
        out.update({name: maha for name in ("mahalanobis", "spectral") if name in scorers})
    if "learned" in scorers and "lrn_prec" in s:
        z = (f.learned[:, None] - s["lrn_mean"][None]) / s["lrn_std"][None]  # (B, E, L)
        out["learned"] = _mahalanobis(z, s["lrn_loc"], s["lrn_prec"])
    elif "learned" in scorers:  # fitted before it was a Mahalanobis distance
        out["learned"] = _nearest(f.learned, s["lrn_mean"], s["lrn_std"], s["lrn_bank"], s["lrn_valid"], knn_k)
    return out
