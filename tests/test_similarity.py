"""BLEU-1 / ROUGE-L equal nltk and rouge_score to 1e-9 (docs/rewards.md §3) on real and adversarial text."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxmind.rewards.similarity import bleu1, bleu_tokens, rouge_l, rouge_tokens, similarity

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def reference_similarity(prediction: str, reference: str, alpha: float = 0.3) -> float:
    bleu = nltk_bleu.sentence_bleu([bleu_tokens(reference)], bleu_tokens(prediction), weights=(1,))
    rouge = SCORER.score(reference, prediction)["rougeL"].fmeasure
    return alpha * bleu + (1 - alpha) * rouge


def assert_matches_references(prediction: str, reference: str) -> None:
    expected_bleu = nltk_bleu.sentence_bleu([bleu_tokens(reference)], bleu_tokens(prediction), weights=(1,))
    expected_rouge = SCORER.score(reference, prediction)["rougeL"].fmeasure
    assert abs(bleu1(bleu_tokens(prediction), bleu_tokens(reference)) - expected_bleu) <= 1e-9
    assert abs(rouge_l(rouge_tokens(prediction), rouge_tokens(reference)) - expected_rouge) <= 1e-9
    assert abs(similarity(prediction, reference) - reference_similarity(prediction, reference)) <= 1e-9


def test_equal_to_references_on_real_reports():
    from _corpus import iu_xray_sentences

    texts = iu_xray_sentences()
    assert len(texts) > 3000
    rng = random.Random(0)
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(1500)]
    # near-duplicates: a report against an edited copy of itself (the common GRPO case)
    for text in rng.sample(texts, 500):
        words = text.split()
        edited = [w for w in words if rng.random() > 0.2] + rng.sample(words, min(3, len(words)))
        pairs.append((" ".join(edited), text))
    worst = 0.0
    for prediction, reference in pairs:
        worst = max(
            worst, abs(similarity(prediction, reference) - reference_similarity(prediction, reference))
        )
        assert_matches_references(prediction, reference)
    assert worst <= 1e-9


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("", ""),
        ("", "heart is normal."),
        ("heart is normal.", ""),
        ("...", "..."),
        ("!!!", "heart"),
        ("The heart is enlarged. The heart is enlarged.", "The heart is enlarged."),
        ("running runner runs ran", "run runs running"),
        ("ÉCOLE naïve café", "ecole naive cafe"),
        ("İstanbul ﬁbrosis Straße", "istanbul fibrosis strasse"),
        ("a b c d e f g", "g f e d c b a"),
    ],
)
def test_equal_to_references_on_edge_cases(prediction, reference):
    assert_matches_references(prediction, reference)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_equal_to_references_on_arbitrary_text(prediction, reference):
    assert_matches_references(prediction, reference)


def test_identical_text_scores_one_and_disjoint_zero():
    assert similarity("Heart size is normal.", "Heart size is normal.") == pytest.approx(1.0)
    assert similarity("alpha beta", "gamma delta") == 0.0
    assert similarity("heart", "heart", alpha=1.0) == pytest.approx(1.0)
