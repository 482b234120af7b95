"""What the anomaly scorers see of a pretrained wav2vec 2.0: one pass over a batch of windows.

`ScoringFrontend` wraps a `Wav2Vec2ForPreTraining` (eval mode, no randomness) and returns
`WindowFeatures` for waveform windows (B, S):

- `embedding` (B, D): a pooled vector of the layer `embedding_layer` names:
  `conv<i>`: the log energy of each channel of conv layer i *before* its norm, averaged over the
  window, plus the standard deviation over time of its log energy smoothed over `energy_smoothing_ms`
  (80 ms: the envelope time scale of clicks, rattles and beats). The pretrained
  network's norms erase level and, deeper in, most of the spectral balance (benchmarks/RESULTS.md,
  "Anomaly scoring"); the first conv layer is a learned filter bank whose band energies keep it.
  `embedding_level="relative"` subtracts the mean over channels (per-window loudness removed).
  With `envelope_bands` > 0 it also carries the rhythm of the window: the channels, sorted by the
  spectral centroid of their filters, are split into that many bands; the log energy of each band,
  in `envelope_frame_ms` frames, is autocorrelated at `envelope_lags_ms` (normalised by lag 0).
  Periodic machines (valves, sliders, pumps) keep their timing there, which window statistics miss.
  `transformer<i>`: mean and standard deviation over time of hidden state i (0 = Transformer input).
  With `mel_bins` > 0 a log-mel branch follows (any layer): `mel_bins` HTK mel bands of `mel_fft`-point
  Hann-windowed power spectra every `mel_hop_ms` (`torch.stft`, no padding; one ONNX STFT node); the mean
  over time of their log (minus its mean over bands when relative), the std over time of their log
  smoothed over `energy_smoothing_ms`, and, with `envelope_bands`, the rhythm of that many contiguous
  mel bands in `mel_hop_ms` frames at `envelope_lags_ms`. It is not part of wav2vec 2.0: a 10-sample
  first conv layer cannot resolve the low tones many faults add (benchmarks/RESULTS.md).
  With `kurtosis_bands` > 0 the spectral kurtosis follows: `kurtosis_bands` HTK mel bands of
  `kurtosis_fft`-point Hann-windowed power spectra every `kurtosis_hop_ms` (a second STFT node), and per
  band log(mean P^2 / (mean P)^2) over the window: log 1 = 0 for a steady band, larger when short bursts
  (impacts, slaps, crackle) carry its energy. Also not wav2vec 2.0.
- `learned` (B, L): what the network learned, with no fixed signal processing: with fine-tuning
  (`anomaly/finetune.py`) the fine-tuned `AnomalyEmbedder`'s pooled embedding of the conv features, or the
  fine-tuned `ConvEmbedder`'s pooled conv statistics of the audio; else the mean and standard deviation
  over time of the outputs of the pretrained layers `learned_layers` names (`conv<i>`: block i after its
  norm and GELU; `transformer<i>`: hidden state i), concatenated; `learned_layers` empty: the final
  Transformer state; then, with `learned_extras` (`embedder.LearnedExtras`), the rhythms of blocks' outputs
  (`embedder.Rhythm`: the autocorrelation over time of their channels) and the log kurtosis over time of
  each channel of blocks (a fine-tuned `ConvEmbedder` appends its own).
  (B, 0) when no scorer reads it (`learned=False`).
- `codes` (B, T, G): the quantizer's code per frame and group (argmax, as in evaluation).
- `context` (B, T, F) and `targets` (B, T, F), unit length: the contrastive prediction of every
  frame, from the pass in which that frame was masked, and its quantized target. Masks are fixed:
  pattern p masks the spans `(t // span) % patterns == p`, so `patterns` passes cover every frame.
- `self_loss` (B, T): the contrastive loss of each frame with every other frame of the window as a
  distractor (frames with the positive's codes excluded, as fairseq's duplicate masking).

Everything is plain tensor math without data-dependent Python control flow, so the module traces
to ONNX with dynamic batch and time axes. It knows nothing about machines or fitted statistics.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.functional import melscale_fbanks

from ..model.feature_encoder import receptive_field
from ..model.wav2vec2 import Wav2Vec2ForPreTraining
from .embedder import ConvEmbedder, Embedder, LearnedExtras, conv_block_step, time_stats

_EPS = 1e-10


@dataclass
class WindowFeatures:
    embedding: Tensor  # (B, D)
    codes: Tensor  # (B, T, G) long
    context: Tensor  # (B, T, F) unit length
    targets: Tensor  # (B, T, F) unit length
    self_loss: Tensor  # (B, T)
    learned: Tensor  # (B, L); L = 0 when not computed


def parse_layer(name: str, num_conv: int, num_transformer: int) -> tuple[str, int]:
    """'conv0' -> ('conv', 0); 'transformer4' -> ('transformer', 4); range-checked, clear errors."""
    m = re.fullmatch(r"(conv|transformer)(\d+)", name)
    if m is None:
        raise ValueError(f"embedding_layer {name!r}: expected conv<i> or transformer<i>")
    kind, i = m.group(1), int(m.group(2))
    top = num_conv - 1 if kind == "conv" else num_transformer
    if i > top:
        raise ValueError(f"embedding_layer {name!r}: the model has {kind}0..{kind}{top}")
    return kind, i


class ScoringFrontend(nn.Module):
    """Pretrained wav2vec 2.0 -> `WindowFeatures` (deterministic; no gradient needed)."""

    def __init__(self, model: Wav2Vec2ForPreTraining, embedding_layer: str = "conv0",
                 embedding_level: str = "relative", mask_span: int = 10, mask_patterns: int = 5,
                 contrastive: bool = True, energy_smoothing_ms: float = 80.0, envelope_bands: int = 0,
                 envelope_frame_ms: float = 10.0, envelope_lags_ms: tuple[float, ...] = (),
                 sample_rate: int = 16000, codes: bool = True, mel_bins: int = 0, mel_fft: int = 1024,
                 mel_hop_ms: float = 20.0, kurtosis_bands: int = 0, kurtosis_fft: int = 256,
                 kurtosis_hop_ms: float = 4.0, learned: bool = False,
                 embedder: Embedder | None = None, learned_layers: tuple[str, ...] = (),
                 learned_extras: LearnedExtras | None = None) -> None:
        super().__init__()
        if model.quantizer is None:
            raise ValueError("the scorers need a model with its quantizer (a pretraining checkpoint)")
        if embedding_level not in ("relative", "absolute"):
            raise ValueError(f"embedding_level must be 'relative' or 'absolute', got {embedding_level!r}")
        if mask_span < 1 or mask_patterns < 1:
            raise ValueError(f"mask_span and mask_patterns must be >= 1, got {mask_span}, {mask_patterns}")
        self.model = model.eval()
        w2v = model.wav2vec2
        self.kind, self.layer = parse_layer(embedding_layer, len(w2v.feature_extractor.blocks),
                                            len(w2v.encoder.layers))
        self.relative = embedding_level == "relative"
        self.mask_span, self.mask_patterns = mask_span, mask_patterns
        self.contrastive = contrastive  # False: skip the masked passes (context and self_loss are zeros)
        # False with a conv embedding: stop after that conv layer (codes, context, targets have no frames);
        # a bundle of embedding scorers alone then runs one or a few convs instead of the whole model.
        self.codes = codes or self.kind != "conv"
        # The learned embedding needs the whole conv stack; without `embedder` it pools `learned_layers`.
        self.learned = learned
        self.embedder = embedder if learned else None
        # (a fine-tuned conv copy runs on the audio by itself: the frozen stack may stop at the embedding tap)
        self.full_stack = self.codes or (learned and not isinstance(self.embedder, ConvEmbedder))
        n_conv, n_tf = len(w2v.feature_extractor.blocks), len(w2v.encoder.layers)
        layers = [parse_layer(name, n_conv, n_tf) for name in learned_layers] or [("transformer", n_tf)]
        self.learned_conv = [i for kind, i in layers if kind == "conv"]
        self.learned_transformer = [i for kind, i in layers if kind == "transformer"]
        self.learned_order = layers  # concatenation order of the pooled statistics
        self.learned_extras = learned_extras if self.learned and self.embedder is None else None
        self.logit_temp = model.loss_config.logit_temp
        if energy_smoothing_ms <= 0:
            raise ValueError(f"energy_smoothing_ms must be > 0, got {energy_smoothing_ms}")
        # Conv-layer energies are averaged over `energy_smoothing_ms` before their log's std over time.
        # Receptive field and stride in samples of the chosen conv layer's frames.
        self.tap_field, stride = receptive_field(w2v.feature_extractor.conv_layers[:self.layer + 1])
        self.tap_stride = stride
        pool = round(energy_smoothing_ms / 1000 * sample_rate / stride)
        self.energy_pool = max(1, pool) if self.kind == "conv" else 1
        self.envelope_bands = envelope_bands if self.kind == "conv" else 0
        if self.envelope_bands:
            block = w2v.feature_extractor.blocks[self.layer]
            channels = block.conv.out_channels
            if not 1 <= self.envelope_bands <= channels or not envelope_lags_ms or envelope_frame_ms <= 0:
                raise ValueError(f"envelope_bands must be in 1..{channels} with envelope_lags_ms and envelope_frame_ms"
                                 f" > 0, got {envelope_bands}, {envelope_lags_ms}, {envelope_frame_ms}")
            self.envelope_pool = max(1, round(envelope_frame_ms / 1000 * sample_rate / stride))
            self.envelope_lags = sorted({max(1, round(lag / envelope_frame_ms)) for lag in envelope_lags_ms})
            # Saved with the model (the weights it is computed from may be adapted or loaded later).
            self.register_buffer("band_weights", self.bands_of(block.conv.weight.detach(), self.envelope_bands))
        self.mel_bins = mel_bins
        if mel_bins:
            self.mel_fft = mel_fft
            self.mel_hop = self._add_spectrogram("mel", "mel_bins", mel_bins, mel_fft, mel_hop_ms, sample_rate)
            self.mel_pool = max(1, round(energy_smoothing_ms / mel_hop_ms))
            self.mel_bands = envelope_bands if envelope_lags_ms else 0
            if self.mel_bands > mel_bins:
                raise ValueError(f"envelope_bands ({envelope_bands}) must be <= mel_bins ({mel_bins})")
            self.mel_lags = sorted({max(1, round(lag / mel_hop_ms)) for lag in envelope_lags_ms})
            # rhythm bands: contiguous (start, stop) ranges of mel bins, low to high
            splits = torch.tensor_split(torch.arange(mel_bins), self.mel_bands) if self.mel_bands else ()
            self.mel_groups = [(int(g[0]), int(g[-1]) + 1) for g in splits]
        self.kurtosis_bands = kurtosis_bands
        if kurtosis_bands:
            self.kurtosis_fft = kurtosis_fft
            self.kurtosis_hop = self._add_spectrogram("kurtosis", "kurtosis_bands", kurtosis_bands, kurtosis_fft,
                                                      kurtosis_hop_ms, sample_rate)

    def _add_spectrogram(self, name: str, setting: str, bands: int, n_fft: int, hop_ms: float,
                         sample_rate: int) -> int:
        """Check a mel spectrogram's settings, register its Hann window and HTK filter bank (K, M) as the
        buffers `<name>_window` and `<name>_fbank`, and return its hop in samples. The buffers derive from
        the settings, not from learning: they are not saved with the model (persistent=False)."""
        if not 2 <= bands <= n_fft // 2 + 1 or hop_ms <= 0:
            raise ValueError(f"{setting} must be in 2..{n_fft // 2 + 1} and {name}_hop_ms > 0, got {bands}, {hop_ms}")
        self.register_buffer(f"{name}_window", torch.hann_window(n_fft), persistent=False)
        fbank = melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, bands, sample_rate)
        self.register_buffer(f"{name}_fbank", fbank, persistent=False)
        return max(1, round(hop_ms / 1000 * sample_rate))

    @staticmethod
    def bands_of(weight: Tensor, bands: int) -> Tensor:
        """conv weight (C, C_in, K) -> (C, bands): each band the mean over its channels, low to high centroid."""
        power = torch.fft.rfft(weight.float(), n=256, dim=-1).abs().pow(2).sum(1)  # (C, 129)
        centroid = (power * torch.arange(power.shape[1])).sum(1) / (power.sum(1) + _EPS)
        out = torch.zeros(weight.shape[0], bands)
        for b, idx in enumerate(torch.tensor_split(centroid.argsort(), bands)):
            out[idx, b] = 1.0 / len(idx)
        return out

    @staticmethod
    def _band_power(audio: Tensor, n_fft: int, hop: int, window: Tensor, fbank: Tensor) -> Tensor:
        """audio (B, S) -> (B, M, T): power in the mel bands of Hann-windowed spectra (no padding)."""
        with warnings.catch_warnings():
            # Real/imaginary pairs instead of a complex tensor: the ONNX exporter handles only this form
            # (one STFT node, opset 17); torch warns that it is deprecated.
            warnings.simplefilter("ignore", UserWarning)
            spec = torch.stft(audio.float(), n_fft, hop, window=window, center=False, return_complex=False)
        power = spec.pow(2).sum(-1)  # (B, K, T)
        return torch.einsum("bkt,km->bmt", power, fbank)

    def _kurtosis(self, audio: Tensor) -> Tensor:
        """audio (B, S) -> (B, kurtosis_bands): log(mean P^2 / (mean P)^2) of each band's short-time power.

        The power is divided by its mean first (no square of a tiny power underflows); a silent band is 0."""
        power = self._band_power(audio, self.kurtosis_fft, self.kurtosis_hop, self.kurtosis_window,
                                 self.kurtosis_fbank) + 1e-20
        ratio = power / power.mean(2, keepdim=True)
        return torch.log(ratio.pow(2).mean(2))

    def _mel_embedding(self, audio: Tensor) -> Tensor:
        """audio (B, S) -> (B, 2 * mel_bins [+ bands * lags]): the log-mel branch (module docstring)."""
        mel = self._band_power(audio, self.mel_fft, self.mel_hop, self.mel_window, self.mel_fbank)  # (B, M, T)
        log_mel = torch.log(mel + _EPS)
        mean_log = log_mel.mean(2)
        if self.relative:
            mean_log = mean_log - mean_log.mean(1, keepdim=True)
        std_log = torch.log(F.avg_pool1d(mel, self.mel_pool, self.mel_pool) + _EPS).std(2)
        if not self.mel_bands:
            return torch.cat([mean_log, std_log], 1)
        band = torch.log(torch.stack([mel[:, a:b].mean(1) for a, b in self.mel_groups], 1) + _EPS)  # (B, bands, T)
        return torch.cat([mean_log, std_log, self._autocorrelation(band, self.mel_lags)], 1)

    @staticmethod
    def _autocorrelation(band: Tensor, lags: list[int]) -> Tensor:
        """band (B, N, T) log energies -> (B, N * len(lags)): autocorrelation of the centred envelope at the
        lags, normalised by lag 0. Lags longer than the window give empty sums: 0, the autocorrelation of
        no overlap."""
        band = band - band.mean(2, keepdim=True)
        power = band.pow(2).sum(2) + 1e-9  # (B, N): lag 0
        return torch.stack([(band[:, :, :-lag] * band[:, :, lag:]).sum(2) / power for lag in lags], 2).flatten(1)

    @property
    def min_samples(self) -> int:
        """Shortest window the frontend scores: two mask spans of frames, two smoothing periods of the
        tapped conv layer and of the log-mel branch (a std over one smoothed value would be NaN), and two
        spectral-kurtosis frames."""
        fe = self.model.wav2vec2.feature_extractor
        need = [fe.receptive_field + (2 * self.mask_span - 1) * fe.stride]
        if self.kind == "conv":
            need.append(self.tap_field + (2 * self.energy_pool - 1) * self.tap_stride)
        if self.mel_bins:
            need.append(self.mel_fft + (2 * self.mel_pool - 1) * self.mel_hop)
        if self.kurtosis_bands:
            need.append(self.kurtosis_fft + self.kurtosis_hop)
        for r in self.learned_extras.rhythms if self.learned_extras is not None else ():  # two rhythm frames
            field, stride = receptive_field(fe.conv_layers[: r.block + 1])
            need.append(field + (2 * r.pool - 1) * stride)
        return max(need)

    def _conv_stack(self, audio: Tensor) -> tuple[Tensor, Tensor | None, dict[int, Tensor], list[Tensor]]:
        """audio (B, S) -> final conv features (B, T, C), the chosen layer's pre-norm output (B, T_i, C_i),
        the mean and std over time of the output of each conv block the learned embedding reads, and its
        extras (rhythms, kurtosis; [] without).

        Without `codes` or `learned` it stops at the chosen layer (the features returned are that layer's output)."""
        fe = self.model.wav2vec2.feature_extractor
        time_major = fe.blocks[0].time_major
        x = audio[:, :, None] if time_major else audio[:, None, :]
        tap = None
        pooled: dict[int, Tensor] = {}
        outputs: dict[int, Tensor] = {}  # block outputs the extras read
        wanted = self.learned_extras.blocks if self.learned_extras is not None else ()
        for i, block in enumerate(fe.blocks):
            x, pre_tm = conv_block_step(block, x, time_major)
            if self.learned and self.embedder is None and i in self.learned_conv:
                pooled[i] = time_stats(x, time_major)
            if i in wanted:
                outputs[i] = x
            if self.kind == "conv" and i == self.layer:
                tap = pre_tm
                if not self.full_stack:
                    break
        feats = x if time_major else x.transpose(1, 2)  # (B, T, C)
        extras = self.learned_extras(outputs, time_major) if self.learned_extras is not None else []
        return feats, tap, pooled, extras

    def _energy_embedding(self, pre: Tensor) -> Tensor:
        """pre (B, T_i, C) -> (B, 2C [+ bands * lags]): mean log energy per channel, std over time of its
        log energy [, the rhythm: autocorrelation of each band's log-energy envelope at the lags]."""
        e = pre.float().pow(2)
        mean_log = torch.log(e.mean(1) + _EPS)  # (B, C)
        if self.relative:
            mean_log = mean_log - mean_log.mean(1, keepdim=True)
        e = e.transpose(1, 2)  # (B, C, T_i): channels first, for the pooling
        smooth = F.avg_pool1d(e, self.energy_pool, self.energy_pool)  # (B, C, T)
        std_log = torch.log(smooth + _EPS).std(2)  # (B, C)
        if not self.envelope_bands:
            return torch.cat([mean_log, std_log], 1)
        env = torch.log(F.avg_pool1d(e, self.envelope_pool, self.envelope_pool) + _EPS)  # (B, C, T')
        band = torch.einsum("bct,cn->bnt", env, self.band_weights)  # (B, bands, T')
        return torch.cat([mean_log, std_log, self._autocorrelation(band, self.envelope_lags)], 1)

    def _embedding(self, audio: Tensor, conv_or_hidden: Tensor) -> Tensor:
        """The conv energies (or hidden-state statistics, already pooled) [+ the log-mel branch]
        [+ the spectral kurtosis]."""
        parts = [self._energy_embedding(conv_or_hidden) if self.kind == "conv" else conv_or_hidden]
        if self.mel_bins:
            parts.append(self._mel_embedding(audio))
        if self.kurtosis_bands:
            parts.append(self._kurtosis(audio))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def forward(self, audio: Tensor) -> WindowFeatures:
        w2v = self.model.wav2vec2
        feats, tap, pooled, extras = self._conv_stack(audio)
        B = audio.shape[0]
        learned = audio.new_zeros(B, 0)
        if isinstance(self.embedder, ConvEmbedder):
            learned = self.embedder.pooled(audio)  # (B, L): the fine-tuned conv blocks, on the audio
        elif self.embedder is not None:
            learned = self.embedder(feats)  # (B, L)
        if not self.codes:  # the embedding alone: empty frame tensors keep WindowFeatures' shapes
            embedding = self._embedding(audio, tap)
            q = self.model.quantizer
            dim = self.model.final_proj.out_features
            if self.learned and self.embedder is None:
                learned = self._learned_states(feats, pooled, extras)
            return WindowFeatures(embedding, torch.zeros(B, 0, q.num_groups, dtype=torch.long, device=audio.device),
                                  embedding.new_zeros(B, 0, dim), embedding.new_zeros(B, 0, dim),
                                  embedding.new_zeros(B, 0), learned)
        conv_out = feats
        feats = w2v.layer_norm(feats)  # (B, T, C): quantizer input
        projected = w2v.post_extract_proj(feats) if w2v.post_extract_proj is not None else feats  # (B, T, D)
        T = feats.shape[1]
        if self.learned and self.embedder is None:
            learned = self._learned_states(conv_out, pooled, extras)

        # Targets: hard codes (argmax) of every frame, as the quantizer in evaluation mode.
        q = self.model.quantizer
        logits = q.weight_proj(feats).view(B, T, q.num_groups, q.num_vars)  # (B, T, G, V)
        codes = logits.argmax(-1)  # (B, T, G)
        onehot = F.one_hot(codes, q.num_vars).to(feats.dtype)  # (B, T, G, V)
        book = q.codevectors.view(q.num_groups, q.num_vars, -1)  # (G, V, d)
        quantized = torch.einsum("btgv,gvd->btgd", onehot, book).reshape(B, T, -1)
        targets = F.normalize(self.model.project_q(quantized), dim=-1, eps=1e-8)  # (B, T, F)

        if self.kind == "conv":
            embedding = self._embedding(audio, tap)
        else:
            h = w2v.encoder(projected, None, num_layers=self.layer)[self.layer]  # (B, T, D)
            embedding = self._embedding(audio, torch.cat([h.mean(1), h.std(1)], 1))
        if not self.contrastive:
            return WindowFeatures(embedding, codes, torch.zeros_like(targets), targets, targets.new_zeros(B, T),
                                  learned)

        # Fixed span masks: frame t is masked in pass (t // span) % patterns.
        t = torch.arange(T, device=audio.device)
        pattern = torch.div(t, self.mask_span, rounding_mode="floor") % self.mask_patterns  # (T,)
        context = torch.zeros_like(targets)
        for p in range(self.mask_patterns):
            masked = (pattern == p)[None, :, None]  # (1, T, 1)
            x = torch.where(masked, w2v.mask_emb.to(projected.dtype), projected)
            c = F.normalize(self.model.final_proj(w2v.encoder(x, None)[-1]), dim=-1, eps=1e-8)
            context = torch.where(masked, c, context)

        # Self distractors: every other frame of the window whose codes differ from the positive's.
        sim = torch.bmm(context, targets.transpose(1, 2)) / self.logit_temp  # (B, T, T): context t vs target u
        same = (codes[:, :, None, :] == codes[:, None, :, :]).all(-1)  # (B, T, T)
        # The positive is read before masking: ONNX exports diagonal() as a product with an identity
        # mask, and -inf * 0 would be NaN. Not torch.eye either: onnxruntime has no bool EyeLike.
        pos = torch.diagonal(sim, dim1=1, dim2=2)  # (B, T)
        eye = (t[:, None] == t[None, :])[None]  # (1, T, T)
        sim = sim.masked_fill(same & ~eye, float("-inf"))
        self_loss = -(pos - torch.logsumexp(sim, dim=2))  # (B, T)

        return WindowFeatures(embedding, codes, context, targets, self_loss, learned)

    def _learned_states(self, conv_out: Tensor, pooled: dict[int, Tensor], extras: list[Tensor]) -> Tensor:
        """conv features (B, T, C), the pooled conv outputs and their extras -> (B, L): mean and std over time
        of each layer of `learned_layers`, in its order (Transformer states computed here, only as deep as
        needed) [, then the extras: rhythms, log kurtosis]."""
        states: list[Tensor] = []
        if self.learned_transformer:
            w2v = self.model.wav2vec2
            x = w2v.layer_norm(conv_out)
            x = w2v.post_extract_proj(x) if w2v.post_extract_proj is not None else x
            states = w2v.encoder(x, None, num_layers=max(self.learned_transformer))
        parts = [pooled[i] if kind == "conv" else torch.cat([states[i].mean(1), states[i].std(1)], 1)
                 for kind, i in self.learned_order]
        parts += extras
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]
