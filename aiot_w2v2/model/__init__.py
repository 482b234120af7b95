"""wav2vec 2.0 modules: feature encoder, masking, Transformer, quantizer, losses and their composition."""

from .feature_encoder import FeatureEncoder, conv_output_lengths, receptive_field
from .losses import LossParts
from .masking import compute_span_mask
from .quantizer import GumbelVectorQuantizer
from .transformer import TransformerEncoder
from .wav2vec2 import PretrainOutput, Wav2Vec2ForPreTraining, Wav2Vec2Model

__all__ = [
    "FeatureEncoder", "GumbelVectorQuantizer", "LossParts", "PretrainOutput", "TransformerEncoder",
    "Wav2Vec2ForPreTraining", "Wav2Vec2Model", "compute_span_mask", "conv_output_lengths", "receptive_field",
]
