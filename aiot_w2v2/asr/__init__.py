"""The ASR path: CTC fine-tuning of wav2vec 2.0, decoding and WER on LibriSpeech-layout corpora.

    vocab        fairseq's letter dictionary; index maps to HF and torchaudio layouts; text -> targets
    librispeech  ROOT/LibriSpeech/<subset>/... -> pandas manifest
    dataset      manifest + vocabulary -> padded batches with CTC targets
    ctc_model    Wav2Vec2ForCTC (encoder + CTC head), built from our / HF / fairseq CTC checkpoints
                 (`aiot_w2v2.loading.load_ctc_model` loads one from a path)
    decode       greedy (numpy, shared with the edge) and beam search (torchaudio ctc_decoder, KenLM)
    wer          WER / CER with jiwer
    config       FinetuneConfig and its presets (configs/asr_*.yaml)
    build        the model a run starts from (--init / resume) with the fine-tuning overrides
    finetune     the fine-tuning loop
    lm           a small bigram ARPA writer (for KenLM beam search on small corpora)
    evaluate     model + decoder over a subset -> metrics.json, hypotheses, per-utterance errors
"""

from .config import FinetuneConfig, load_finetune_config
from .ctc_model import CTCOutput, Wav2Vec2ForCTC
from .decode import BeamSearchDecoder, DecoderUnavailableError, GreedyDecoder, make_decoder, write_lexicon
from .librispeech import LibriSpeechError, librispeech_manifest
from .vocab import Vocabulary, VocabularyError, letter_vocabulary
from .wer import score

__all__ = [
    "BeamSearchDecoder", "CTCOutput", "DecoderUnavailableError", "FinetuneConfig", "GreedyDecoder",
    "LibriSpeechError", "Vocabulary", "VocabularyError", "Wav2Vec2ForCTC", "letter_vocabulary",
    "librispeech_manifest", "load_finetune_config", "make_decoder", "score", "write_lexicon",
]
