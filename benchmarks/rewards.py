"""Reward scoring speed: cxmind vs the same definitions computed with nltk + rouge_score.

Scores a realistic GRPO batch (640 completions of 5-15 rounds with 30-150 words per think, half
closed-ended, half open-ended, with right and wrong answers) twice in one run: with cxmind's
similarity, and with the identical scoring code calling nltk's ``sentence_bleu`` and
``rouge_score``'s ``RougeScorer`` (built once) for BLEU-1/ROUGE-L. The last line is
``speedup: <X>x, max_abs_diff: <Y>`` (end-to-end scoring time; cold stemming cache).

    python benchmarks/rewards.py [--completions 640] [--seed 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from nltk.translate.bleu_score import sentence_bleu
from rouge_score.rouge_scorer import RougeScorer

from cxmind.format import parse, render_closed, render_open
from cxmind.rewards import scoring
from cxmind.rewards.similarity import _stem, bleu_tokens, similarity
from cxmind.vocab import CHEXPERT_14

PHRASES = [
    "the cardiac silhouette is enlarged",
    "the cardiomediastinal silhouette is within normal limits",
    "there is no focal consolidation",
    "the lungs are clear bilaterally",
    "there is blunting of the left costophrenic angle",
    "a small right pleural effusion is present",
    "no pneumothorax is identified",
    "there is patchy opacity in the right lower lobe",
    "the hilar contours are normal",
    "degenerative changes are seen in the thoracic spine",
    "the pulmonary vasculature is not congested",
    "there is mild interstitial prominence",
    "a nasogastric tube terminates in the stomach",
    "linear opacities at the bases likely represent atelectasis",
    "the heart size is normal",
    "the visualized osseous structures are intact",
    "no acute fracture is seen",
    "there is volume loss in the left lower lobe",
    "the costophrenic angles are sharp",
    "lung markings extend to the chest wall",
    "the trachea is midline",
    "there is elevation of the right hemidiaphragm",
    "findings are consistent with pulmonary edema",
    "this favors infection",
    "compared with the prior study the opacity has improved",
    "the cardiothoracic ratio exceeds one half",
]


def think(rng: random.Random, topic: str) -> str:
    target = rng.randint(30, 150)
    words = f"Considering {topic},".split()
    while len(words) < target:
        words += (rng.choice(PHRASES) + ".").split()
    return " ".join(words[:target]).rstrip(".") + "."


def perturb(rng: random.Random, text: str) -> str:
    """A policy sample near the gold, same length: ~15% of words replaced, a few pairs swapped."""
    words = text.split()
    vocabulary = " ".join(PHRASES).split()
    words = [rng.choice(vocabulary) if rng.random() < 0.15 else w for w in words]
    for _ in range(rng.randint(0, 3)):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def closed_pair(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(4, 8)  # options -> n + 1 rounds (5..9); open tasks reach 15 rounds
    letters = "ABCDEFGH"[:n]
    gold = rng.choice(letters)
    findings = rng.sample(CHEXPERT_14[1:], n)
    judgements = [
        (x, think(rng, f"option {x} {f}"), x == gold) for x, f in zip(letters, findings, strict=True)
    ]
    solution = render_closed(judgements, think(rng, "the summary"), gold)
    answer = gold if rng.random() < 0.6 else rng.choice(letters)
    sampled = [
        (x, perturb(rng, t), x == answer if rng.random() < 0.9 else x != answer) for x, t, _ in judgements
    ]
    return render_closed(sampled, perturb(rng, think(rng, "the summary")), answer), solution, "closed"


def open_pair(rng: random.Random) -> tuple[str, str, str]:
    candidates = rng.sample(CHEXPERT_14[1:], rng.randint(3, 13))
    present = [rng.random() < 0.4 for _ in candidates]
    judged = [(c, think(rng, c), p) for c, p in zip(candidates, present, strict=True)]
    solution = render_open(think(rng, "the image"), judged, think(rng, "the summary"))
    sampled = [(c, perturb(rng, t), p if rng.random() < 0.8 else not p) for c, t, p in judged]
    completion = render_open(
        perturb(rng, think(rng, "the image")), sampled, perturb(rng, think(rng, "summary"))
    )
    return completion, solution, "open"


def batch(n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(closed_pair if i % 2 == 0 else open_pair)(rng) for i in range(n)]


_ROUGE = RougeScorer(["rougeL"], use_stemmer=True)


def baseline_similarity(prediction: str, reference: str, alpha: float) -> float:
    bleu = sentence_bleu([bleu_tokens(reference)], bleu_tokens(prediction), weights=(1,))
    rouge = _ROUGE.score(reference, prediction)["rougeL"].fmeasure
    return alpha * bleu + (1 - alpha) * rouge


def run(items, sim) -> tuple[float, list[scoring.RewardScores]]:
    start = time.perf_counter()
    out = [scoring._score(c, s, t, None, "fixed", 0.5, 0.2, 0.3, sim) for c, s, t in items]
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    items = batch(args.completions, args.seed)
    rounds = [c.count("<think>") for c, _, _ in items]
    words = [len(r.think.split()) for c, _, _ in items for r in parse(c).rounds]
    print(
        f"batch: {len(items)} completions, rounds {min(rounds)}-{max(rounds)}, "
        f"think words {min(words)}-{max(words)} (mean {statistics.mean(words):.0f})"
    )

    base_times, base = [], None
    for _ in range(args.repeats):
        elapsed, base = run(items, baseline_similarity)
        base_times.append(elapsed)
    _stem.cache_clear()
    cold, ours = run(items, similarity)
    warm = min(run(items, similarity)[0] for _ in range(args.repeats))

    diff = max(
        abs(getattr(a, f) - getattr(b, f))
        for a, b in zip(ours, base, strict=True)
        for f in ("format", "outcome", "think", "process")
    )
    scored = sum(1 for s in ours if s.think > 0)
    base_time = min(base_times)
    print(f"completions with a think score: {scored}/{len(items)}")
    print(f"nltk+rouge_score: {base_time:.3f}s  cxmind cold cache: {cold:.3f}s  cxmind warm: {warm:.3f}s")
    n = len(items)
    print(f"per completion: baseline {1e3 * base_time / n:.2f} ms, cxmind {1e3 * cold / n:.3f} ms")
    print(f"warm-cache speedup: {base_time / warm:.1f}x")
    print(f"speedup: {base_time / cold:.1f}x, max_abs_diff: {diff:.3g}")


if __name__ == "__main__":
    main()
