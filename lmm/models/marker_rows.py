"""The image-marker rows a frozen pretrained decoder gains, trained on their own.

LLaMA's vocabulary has no ``[IMG]`` / ``[/IMG]`` / ``<image>``: three rows are appended to the input embeddings and
the LM head, initialised to the mean of the pretrained rows (as Emu does). When the decoder is frozen the pretrained
rows must stay frozen too, but identical frozen marker rows would leave the decoder telling ``[IMG]`` from
``[/IMG]`` by position alone. So the new rows live in their own small parameters next to the frozen matrices
(``model.llm.train_image_markers``): the optimizer holds 3 x hidden values per matrix instead of the whole
vocabulary, and a lean checkpoint stores them while the frozen matrices come from the weight files.
``merge_marker_rows`` folds them back into plain ``nn.Embedding`` / ``nn.Linear`` for export.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmm.models.partitioned import gathered


class EmbeddingWithNewRows(nn.Module):
    """``base`` (frozen, ids < base rows) followed by the trainable ``new_rows``."""

    def __init__(self, base: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.new_rows = nn.Parameter(new_rows)

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + self.new_rows.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        old = self.base.num_embeddings
        out = self.base(ids.clamp(max=old - 1))
        is_new = ids >= old
        new = F.embedding((ids - old).clamp(min=0), self.new_rows).to(out.dtype)
        return torch.where(is_new.unsqueeze(-1), new, out)

    def no_weight_decay(self) -> set[str]:
        return {"new_rows"}


class HeadWithNewRows(nn.Module):
    """LM head whose logits are ``base``'s (frozen) followed by those of the trainable ``new_rows``."""

    def __init__(self, base: nn.Linear, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.new_rows = nn.Parameter(new_rows)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.base(hidden), F.linear(hidden, self.new_rows.to(hidden.dtype))], dim=-1)

    def no_weight_decay(self) -> set[str]:
        return {"new_rows"}


def marker_row_parameters(llm) -> list[nn.Parameter]:
    """The separate image-marker rows of ``llm`` (none when they were resized into the matrices)."""
    return [module.new_rows for module in (llm.get_input_embeddings(), llm.get_output_embeddings())
            if isinstance(module, (EmbeddingWithNewRows, HeadWithNewRows))]


@torch.no_grad()
def mean_rows(weight: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` copies of the mean row of ``weight`` (computed in fp32), in ``weight``'s dtype."""
    return weight.mean(dim=0, keepdim=True, dtype=torch.float32).expand(count, -1).to(weight.dtype).clone()


def add_marker_rows(llm, vocab_size: int, separate: bool) -> None:
    """Grow ``llm``'s input embeddings and LM head to ``vocab_size`` rows, new rows mean-initialised: in their own
    trainable parameters when ``separate``, else by resizing the matrices (the rows then share their freezing)."""
    weight = llm.get_input_embeddings().weight
    old = getattr(weight, "ds_shape", weight.shape)[0]  # a ZeRO-3 partition reports its whole shape there
    if old == vocab_size:
        return
    if old > vocab_size:
        raise ValueError(f"decoder vocabulary ({old}) is larger than the tokenizer's ({vocab_size})")
    count = vocab_size - old
    embeddings, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    with gathered([embeddings.weight, head.weight]):  # whole matrices under ZeRO-3, read-only
        new_in, new_out = mean_rows(embeddings.weight, count), mean_rows(head.weight, count)
    if separate:
        llm.set_input_embeddings(EmbeddingWithNewRows(embeddings, new_in))
        llm.set_output_embeddings(HeadWithNewRows(head, new_out))
    else:
        llm.resize_token_embeddings(vocab_size, mean_resizing=False)
        grown = [llm.get_input_embeddings().weight, llm.get_output_embeddings().weight]
        with torch.no_grad(), gathered(grown, modifier_rank=0):
            grown[0][old:] = new_in
            grown[1][old:] = new_out
    llm.config.vocab_size = vocab_size


@torch.no_grad()
def merge_marker_rows(llm) -> None:
    """Replace separate marker rows by plain full-vocabulary ``nn.Embedding`` / ``nn.Linear`` (for export)."""
    embeddings, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    if isinstance(embeddings, EmbeddingWithNewRows):
        weight = torch.cat([embeddings.base.weight, embeddings.new_rows.to(embeddings.base.weight.dtype)])
        llm.set_input_embeddings(nn.Embedding.from_pretrained(weight, freeze=not embeddings.new_rows.requires_grad,
                                                              padding_idx=embeddings.base.padding_idx))
    if isinstance(head, HeadWithNewRows):
        weight = torch.cat([head.base.weight, head.new_rows.to(head.base.weight.dtype)])
        merged = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        merged.weight.copy_(weight)
        llm.set_output_embeddings(merged)
