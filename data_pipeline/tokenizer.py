"""sentencepiece tokenizer: LLaMA's ``tokenizer.model`` at full scale, or one trained in-process for the demo.

The image markers ``[IMG]``, ``[/IMG]`` and ``<image>`` are not sentencepiece pieces: they get the ids right
after the sentencepiece vocabulary (LLaMA-2: 32000, 32001, 32002), so captions can never produce them and the
same code handles LLaMA's model and a trained one.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from data_pipeline.manifest import Piece, ShardEntry
from data_pipeline.shard_format import BadSample, sample_fields
from data_pipeline.shard_reader import LOST, read_piece

IMAGE_MARKERS = ("[IMG]", "[/IMG]", "<image>")


class CaptionTokenizer:
    def __init__(self, model_file: str | Path):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {model_file}")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        base = self.sp.get_piece_size()
        self.img_start_id, self.img_end_id, self.image_id = base, base + 1, base + 2
        self.vocab_size = base + len(IMAGE_MARKERS)
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{model_file}: sentencepiece model needs bos and eos pieces")
        self.pad_id = self.eos_id  # LLaMA has no pad piece; padding is masked out everywhere

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i < self.sp.get_piece_size() and i != self.eos_id])


def train_tokenizer(sentences: Iterable[str], model_file: str | Path, vocab_size: int) -> Path:
    """Train a LLaMA-style (BPE, bos=1, eos=2) sentencepiece model deterministically; returns its path."""
    model_file = Path(model_file)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    tmp = model_file.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(model_file)  # atomic: concurrent ranks never read a half-written file
    return model_file


def caption_corpus(shards: list[ShardEntry], max_samples: int = 200_000) -> Iterator[str]:
    """Every caption field of the first ``max_samples`` samples (text for training a tokenizer)."""
    seen = 0
    for shard in shards:
        for raw in read_piece(Piece(shard.url, 0, min(shard.num_samples, max_samples - seen), shard.sidecars)):
            seen += 1
            try:
                fields = sample_fields(raw) if raw is not LOST else {}
            except BadSample:
                continue
            for value in fields.values():
                for text in value if isinstance(value, list) else [value]:
                    if isinstance(text, str) and text.strip() and "://" not in text:
                        yield text
        if seen >= max_samples:
            return
