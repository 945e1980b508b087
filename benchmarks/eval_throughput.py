"""Eval throughput, in one run:

1. caption generation, images/s, for a small random-init model of the real classes (EVA tower, bridge, LLaMA):
   greedy with the KV cache (``LMM.generate``) vs a greedy loop that re-runs the whole sequence every token (no
   cache; the tokens must be identical), batch 1 vs batched, and the Emu protocol's beam 5 for reference;
2. scoring 5,000 images x 5 references: our CIDEr-D vs pycocoevalcap's ``Cider`` (same tokens, equal scores),
   and all of our metrics vs pycocoevalcap's BLEU + ROUGE-L + CIDEr.

  PYTHONPATH=. python benchmarks/eval_throughput.py [--images 32] [--batch 16] [--threads 1]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from data_pipeline.tokenizer import CaptionTokenizer, train_tokenizer
from lmm.config import load_config
from lmm.models.lmm import LMM, GenerationSettings, build_lmm

WORDS = ("a man woman dog cat child riding holding sitting standing on in at near with the red blue old small large "
         "street beach table kitchen horse bike skateboard pizza umbrella train bus park field two three people "
         "group of next to while green white black tall young little playing walking down up front building "
         "water grass snow plate food phone car truck sign tree sky clock room bed window").split()
MODEL = ["model.bridge.num_queries=8", "model.bridge.width=128", "model.bridge.depth=2", "model.bridge.heads=4",
         "model.llm.hidden_size=256", "model.llm.num_layers=4", "model.llm.num_heads=4",
         "model.llm.intermediate_size=688", "model.llm.max_position_embeddings=128"]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, weights=[1 / (i + 1) for i in range(len(WORDS))], k=rng.randint(8, 14)))


def build_model(workdir: Path) -> tuple[LMM, list[int]]:
    rng = random.Random(0)
    sp = train_tokenizer((sentence(rng) for _ in range(2000)), workdir / "sp.model", vocab_size=400)
    config = load_config("configs/demo.yaml", MODEL)
    torch.manual_seed(0)
    tokenizer = CaptionTokenizer(sp)
    model = build_lmm(config.model, tokenizer).eval()
    prefix = [tokenizer.bos_id, tokenizer.img_start_id] + [tokenizer.image_id] * 8 + [tokenizer.img_end_id]
    return model, prefix


@torch.no_grad()
def greedy_without_cache(model: LMM, pixels: torch.Tensor, prompt: torch.Tensor, steps: int) -> list[list[int]]:
    """Greedy decoding that re-runs the decoder over the whole sequence for every new token."""
    embeds = model.embed(pixels, prompt)
    table = model.llm.get_input_embeddings()
    new = torch.empty((len(prompt), 0), dtype=torch.long)
    for _ in range(steps):
        logits = model.llm(inputs_embeds=torch.cat([embeds, table(new)], dim=1), use_cache=False).logits
        new = torch.cat([new, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return new.tolist()


def images_per_second(fn, pixels: torch.Tensor, batch: int) -> tuple[float, list]:
    outputs, start = [], time.perf_counter()
    for i in range(0, len(pixels), batch):
        outputs += fn(pixels[i:i + batch])
    return len(pixels) / (time.perf_counter() - start), outputs


def generation_benchmark(num_images: int, batch: int, new_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model, prefix = build_model(Path(tmp))
    size = model.vision.image_size
    pixels = torch.randn(num_images, 3, *size, generator=torch.Generator().manual_seed(0))
    greedy = GenerationSettings(num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    beam = GenerationSettings(num_beams=5, max_new_tokens=new_tokens, min_new_tokens=8, length_penalty=-1.0)

    def cached(settings):
        return lambda px: model.generate(px, torch.tensor([prefix] * len(px)), settings)

    def uncached(px):
        return greedy_without_cache(model, px, torch.tensor([prefix] * len(px)), new_tokens)

    images_per_second(cached(greedy), pixels[:2], 2)  # warm-up
    rows = []
    for name, fn, b in (("greedy, KV cache, batched", cached(greedy), batch),
                        ("greedy, KV cache, batch 1", cached(greedy), 1),
                        ("greedy, no cache, batched", uncached, batch),
                        ("greedy, no cache, batch 1", uncached, 1),
                        ("beam 5 (Emu protocol), KV cache, batched", cached(beam), batch)):
        rate, out = images_per_second(fn, pixels, b)
        rows.append((name, rate, out))
    reference = rows[0][2]
    same = all(out == reference for name, _, out in rows[1:4])
    params = sum(p.numel() for p in model.parameters())
    print(f"generation: {num_images} images, {new_tokens} new tokens each, {params / 1e6:.1f}M-parameter model, "
          f"{torch.get_num_threads()} thread(s)")
    for name, rate, _ in rows:
        print(f"  {name:<42} {rate:8.2f} images/s   x{rate / rows[0][1]:.2f} vs cached batched")
    print(f"  greedy tokens identical with/without cache and batching: {same}")
    print(f"  KV cache speed-up (batched): x{rows[0][1] / rows[2][1]:.2f}; "
          f"batching speed-up (cached): x{rows[0][1] / rows[1][1]:.2f}")


def scoring_benchmark(num_images: int, num_refs: int) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from lmm.eval.bleu import bleu
    from lmm.eval.cider import cider_d
    from lmm.eval.rouge import rouge_l

    rng = random.Random(1)
    gts = {i: [sentence(rng) for _ in range(num_refs)] for i in range(num_images)}
    res = {i: [rng.choice(gts[i]) if rng.random() < 0.3 else sentence(rng)] for i in range(num_images)}

    def timed(fn):
        start = time.perf_counter()
        value = fn()
        return time.perf_counter() - start, value

    ours_t, ours = timed(lambda: cider_d(gts, res)[0])
    theirs_t, theirs = timed(lambda: Cider().compute_score(gts, res)[0])
    print(f"scoring: {num_images} images x {num_refs} references (tokenized)")
    print(f"  CIDEr-D ours            {ours_t:6.2f} s   pycocoevalcap {theirs_t:7.2f} s   "
          f"x{theirs_t / ours_t:.1f} faster; |diff| = {abs(ours - theirs):.1e}")
    ours_t, _ = timed(lambda: (bleu(gts, res), rouge_l(gts, res), cider_d(gts, res)))
    theirs_t, _ = timed(lambda: (Bleu(4).compute_score(gts, res, verbose=0), Rouge().compute_score(gts, res),
                                 Cider().compute_score(gts, res)))
    print(f"  BLEU+ROUGE-L+CIDEr ours {ours_t:6.2f} s   pycocoevalcap {theirs_t:7.2f} s   "
          f"x{theirs_t / ours_t:.1f} faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--score-images", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generation_benchmark(args.images, args.batch, args.new_tokens)
    scoring_benchmark(args.score_images, 5)


if __name__ == "__main__":
    main()
