"""Which tokenizer a run uses, and training the run's own once when it has none.

A pretrained decoder brings its ``tokenizer.model``; a decay branch uses its parent's; a run from scratch trains a
sentencepiece model on its training captions into ``<output_dir>/tokenizer.model`` (rank 0, the others wait).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from data_pipeline.manifest import load_manifest
from data_pipeline.tokenizer import caption_corpus, train_tokenizer
from lmm import distributed
from lmm.config import ExperimentConfig
from lmm.models.llm import pretrained_tokenizer_file
from lmm.training import checkpoint


def with_tokenizer_path(config: ExperimentConfig) -> ExperimentConfig:
    """The config with ``model.tokenizer.path`` set: the given one, the pretrained decoder's ``tokenizer.model``,
    a decay branch's parent's, else ``<output_dir>/tokenizer.model`` (trained on the training captions by
    ``train_tokenizer_once``)."""
    if config.model.tokenizer.path is not None:
        return config
    if config.model.llm.pretrained is not None:
        model_file = pretrained_tokenizer_file(config.model.llm)
    elif config.train.init_from:
        model_file = checkpoint.run_dir_of(config.train.init_from) / "tokenizer.model"
    else:
        model_file = Path(config.output_dir) / "tokenizer.model"
    return replace(config, model=replace(config.model, tokenizer=replace(config.model.tokenizer,
                                                                         path=str(model_file))))


def train_tokenizer_once(config: ExperimentConfig, env: distributed.DistEnv) -> None:
    """Rank 0 trains the run's own tokenizer when its file is missing (collective)."""
    model_file = Path(config.model.tokenizer.path)
    if config.model.llm.pretrained is None and model_file.parent == Path(config.output_dir):
        if env.is_main and not model_file.is_file():
            train_tokenizer(caption_corpus(load_manifest(config.data.train_manifest)), model_file,
                            config.model.tokenizer.vocab_size)
        distributed.barrier()
