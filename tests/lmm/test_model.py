import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT

from data_pipeline.sequence import IGNORE_INDEX, SequenceLayout
from lmm.config import ConfigError, load_config
from lmm.models.lmm import GenerationSettings, build_lmm, parameter_counts
from lmm.models.marker_rows import add_marker_rows, marker_row_parameters, merge_marker_rows

TINY = ["model.bridge.num_queries=4", "model.bridge.width=32", "model.bridge.depth=1", "model.bridge.heads=2",
        "model.llm.hidden_size=32", "model.llm.num_layers=2", "model.llm.num_heads=2",
        "model.llm.intermediate_size=64"]


@pytest.fixture
def model_and_layout(tokenizer):
    torch.manual_seed(0)
    config = load_config(REPO_ROOT / "configs/demo.yaml", TINY)
    return build_lmm(config.model, tokenizer).eval(), SequenceLayout(tokenizer, 4, 16)


def test_sequence_layout(tokenizer):
    layout = SequenceLayout(tokenizer, 4, 16)
    ids, labels = layout.training_example("two red circles at lake como")
    t = tokenizer
    assert ids[:7] == [t.bos_id, t.img_start_id] + [t.image_id] * 4 + [t.img_end_id]
    assert labels[:7] == [IGNORE_INDEX] * 7 and labels[7:] == ids[7:] and ids[-1] == t.eos_id
    assert t.image_id not in t.encode("[IMG] <image> [/IMG]")  # markers can never come from text


def test_loss_is_caption_only_cross_entropy(model_and_layout):
    model, layout = model_and_layout
    batch = layout.collate([layout.training_example(c) for c in ["a red star in paris", "two blue hearts"]])
    pixels = torch.randn(2, 3, 112, 112)
    loss = model(pixels, **batch)
    logits = model.llm(inputs_embeds=model.embed(pixels, batch["input_ids"]),
                       attention_mask=batch["attention_mask"]).logits
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                             ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, manual, atol=1e-5)
    caption_positions = (batch["labels"] != IGNORE_INDEX).sum().item()
    assert caption_positions == sum(len(layout.caption_tokens(c)) + 1 for c in ["a red star in paris",
                                                                                  "two blue hearts"])


def test_image_changes_the_loss(model_and_layout):
    model, layout = model_and_layout
    batch = layout.collate([layout.training_example("a red star in paris")])
    assert not torch.allclose(model(torch.zeros(1, 3, 112, 112), **batch), model(torch.ones(1, 3, 112, 112), **batch))


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_with_kv_cache_matches_full_recompute(model_and_layout, beams):
    model, layout = model_and_layout
    pixels = torch.randn(2, 3, 112, 112)
    prompt = torch.tensor([layout.prompt("a")] * 2)
    settings = GenerationSettings(num_beams=beams, max_new_tokens=6, min_new_tokens=6)
    cached = model.generate(pixels, prompt, settings)
    assert [len(c) for c in cached] == [6, 6]
    if beams == 1:  # greedy: recompute every step without a cache
        embeds = model.embed(pixels, prompt)
        tokens = []
        for _ in range(6):
            logits = model.llm(inputs_embeds=embeds, use_cache=False).logits[:, -1]
            logits[:, model.eos_id] = float("-inf")  # min_new_tokens
            nxt = logits.argmax(-1)
            tokens.append(nxt)
            embeds = torch.cat([embeds, model.llm.get_input_embeddings()(nxt)[:, None]], dim=1)
        assert cached == torch.stack(tokens, 1).tolist()


def test_freeze_flags(tokenizer):
    config = load_config(REPO_ROOT / "configs/demo.yaml", TINY + ["model.vision.trainable=false",
                                                                  "model.llm.trainable=false",
                                                                  "model.allow_random_frozen=true"])
    counts = parameter_counts(build_lmm(config.model, tokenizer))
    assert counts["vision/trainable"] == 0 and counts["llm/trainable"] == 0
    assert counts["bridge/frozen"] == 0 and counts["bridge/trainable"] > 0 and counts["llm/frozen"] > 0


def test_frozen_components_without_weights_are_a_config_error():
    for frozen in ("vision", "llm"):
        with pytest.raises(ConfigError, match=f"config key 'model.{frozen}.pretrained': model.{frozen} is frozen"):
            load_config(REPO_ROOT / "configs/demo.yaml", TINY + [f"model.{frozen}.trainable=false"])
    with pytest.raises(ConfigError, match="config key 'model.vision.pretrained'"):
        load_config(REPO_ROOT / "configs/capsfusion_10m.yaml")


@pytest.mark.parametrize("separate", [False, True])
def test_new_marker_rows_are_mean_initialised(tokenizer, separate):
    config = load_config(REPO_ROOT / "configs/demo.yaml", TINY)
    llm = build_lmm(config.model, tokenizer).llm
    old = llm.get_input_embeddings().weight.shape[0]
    base_in = llm.get_input_embeddings().weight.detach().clone()
    add_marker_rows(llm, old + 2, separate=separate)
    ids = torch.tensor([[3, old, old + 1, 5]])
    embedded = llm.get_input_embeddings()(ids)[0]
    assert torch.allclose(embedded[1], base_in.mean(0), atol=1e-6) and torch.equal(embedded[1], embedded[2])
    assert torch.equal(embedded[0], base_in[3])
    logits = llm(input_ids=ids).logits
    assert logits.shape[-1] == old + 2 and llm.config.vocab_size == old + 2
    assert len(marker_row_parameters(llm)) == (2 if separate else 0)
    merge_marker_rows(llm)
    assert torch.allclose(llm(input_ids=ids).logits, logits, atol=1e-5) and not marker_row_parameters(llm)
