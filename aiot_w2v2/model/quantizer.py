"""Gumbel-softmax product quantizer Z -> Q (paper Section 2, eq. 1; fairseq GumbelVectorQuantizer).

G codebooks of V entries each; a frame picks one entry per codebook and the chosen vectors are
concatenated. Training uses the straight-through hard Gumbel-softmax at temperature tau (annealed
by the caller through `set_temperature`); evaluation takes the argmax. The perplexities are taken over
the frames given (the caller passes masked, unpadded frames only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (N, G * d) concatenated codevectors
    codes: Tensor  # (N, G) long, chosen entry per group
    code_perplexity: Tensor  # perplexity of the hard choices, summed over groups (<= G * V)
    prob_perplexity: Tensor  # perplexity of the averaged softmax, summed over groups (for L_d)
    num_codevectors: int  # G * V


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer; `codevectors` is fairseq's `vars` of shape (1, G*V, d)."""

    def __init__(self, in_dim: int, num_groups: int, num_vars: int, codevector_dim: int,
                 init: str = "normal") -> None:
        super().__init__()
        if codevector_dim % num_groups:
            raise ValueError(f"codevector_dim {codevector_dim} must divide by the {num_groups} groups")
        self.num_groups, self.num_vars = num_groups, num_vars
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_vars, codevector_dim // num_groups))
        # fairseq/HF draw U(0,1): all codevectors then point the same way (mean cosine ~0.75) and the
        # contrastive task starts degenerate on stationary audio. Zero-mean normal is our default.
        if init == "uniform":
            nn.init.uniform_(self.codevectors)
        else:
            nn.init.normal_(self.codevectors)
        self.weight_proj = nn.Linear(in_dim, num_groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.temperature = 2.0

    def set_temperature(self, tau: float) -> None:
        self.temperature = float(tau)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """x (N, in_dim) -> QuantizerOutput; N is any number of frames."""
        N = x.shape[0]
        logits = self.weight_proj(x).view(N, self.num_groups, self.num_vars).float()  # (N, G, V)
        codes = logits.argmax(-1)  # (N, G)
        hard = torch.zeros_like(logits).scatter_(-1, codes[..., None], 1.0)  # (N, G, V)
        code_ppl = _perplexity(hard.mean(0))
        prob_ppl = _perplexity(torch.softmax(logits, -1).mean(0))
        if self.training:
            # Straight-through hard Gumbel-softmax: forward uses the one-hot of argmax(logits + g),
            # backward the gradient of softmax((logits + g) / tau).
            u = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device)
            gumbels = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
            soft = torch.softmax((logits + gumbels) / self.temperature, -1)
            codes = soft.argmax(-1)
            hard_g = torch.zeros_like(soft).scatter_(-1, codes[..., None], 1.0)
            onehot = hard_g - soft.detach() + soft
        else:
            onehot = hard
        onehot = onehot.to(self.codevectors.dtype).view(N, self.num_groups * self.num_vars)  # (N, G*V)
        # Each group selects from its own block of V codevectors: (N, G, V) x (G, V, d) -> (N, G, d)
        book = self.codevectors.view(self.num_groups, self.num_vars, -1)
        quantized = torch.einsum("ngv,gvd->ngd", onehot.view(N, self.num_groups, self.num_vars), book)
        return QuantizerOutput(quantized.reshape(N, -1), codes, code_ppl, prob_ppl,
                               self.num_groups * self.num_vars)

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        """Deterministic code indices (N, G) for frames x (N, in_dim)."""
        N = x.shape[0]
        return self.weight_proj(x).view(N, self.num_groups, self.num_vars).argmax(-1)


def _perplexity(probs: Tensor) -> Tensor:
    """probs (G, V), rows summing to one -> sum over groups of exp(entropy)."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()
