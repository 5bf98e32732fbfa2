"""Think-step similarity: α·BLEU-1 + (1-α)·ROUGE-L(F), bit-compatible with nltk and rouge_score.

The GRPO hot path scores thousands of think blocks per step, so the two reference implementations
(nltk's ``sentence_bleu`` builds ``Fraction`` objects; ``rouge_score`` fills an O(n·m) Python
table) are replaced by the same arithmetic on cached tokens, with the LCS length from rapidfuzz's
bit-parallel C implementation. Results equal the references to the last bit (see tests).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

from nltk.stem.porter import PorterStemmer
from rapidfuzz.distance import LCSseq

__all__ = ["bleu1", "bleu_tokens", "rouge_l", "rouge_tokens", "similarity"]

DEFAULT_ALPHA = 0.3

# rouge_score.tokenize: lowercase, non-[a-z0-9] runs -> space, stem words longer than 3 chars.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN = re.compile(r"[a-z0-9]+")
_stemmer = PorterStemmer()  # rouge_score's DefaultTokenizer uses the default (NLTK_EXTENSIONS) mode


@lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    """Stemmed token, or "" where rouge_score would drop it as invalid."""
    stem = _stemmer.stem(word) if len(word) > 3 else word
    return stem if _VALID_TOKEN.fullmatch(stem) else ""


def bleu_tokens(text: str) -> list[str]:
    """BLEU tokens: lowercased text with "." split off, split on white space."""
    return text.lower().replace(".", " .").split()


def rouge_tokens(text: str) -> list[str]:
    """Tokens exactly as ``rouge_score`` produces them with ``use_stemmer=True``."""
    words = _NON_ALNUM.sub(" ", text.lower()).split()
    return [s for s in map(_stem, words) if s]


def bleu1(hypothesis: list[str], reference: list[str]) -> float:
    """Sentence BLEU-1 (clipped unigram precision × brevity penalty, no smoothing).

    Same float operations as ``nltk.translate.bleu_score.sentence_bleu([reference], hypothesis,
    weights=(1,))``.

    >>> bleu1("the cat sat".split(), "the cat sat on the mat".split())  # doctest: +ELLIPSIS
    0.3678...
    """
    hyp_len, ref_len = len(hypothesis), len(reference)
    if hyp_len == 0:
        return 0.0
    ref_counts = Counter(reference)
    matched = sum(min(count, ref_counts[tok]) for tok, count in Counter(hypothesis).items())
    if matched == 0:
        return 0.0
    bp = 1 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(math.fsum([math.log(matched / hyp_len)]))


def _lcs_length(a: list[str], b: list[str]) -> int:
    # Map tokens to code points so rapidfuzz compares exact token identities (no hashing collisions).
    ids: dict[str, int] = {}
    sa = "".join(chr(ids.setdefault(t, len(ids))) for t in a)
    sb = "".join(chr(ids.setdefault(t, len(ids))) for t in b)
    return LCSseq.similarity(sa, sb)


def rouge_l(prediction: list[str], target: list[str]) -> float:
    """ROUGE-L F-measure on token lists, same arithmetic as ``rouge_score``'s ``_score_lcs``."""
    if not prediction or not target:
        return 0.0
    lcs = _lcs_length(target, prediction)
    precision = lcs / len(prediction)
    recall = lcs / len(target)
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def similarity(prediction: str, reference: str, alpha: float = DEFAULT_ALPHA) -> float:
    """α·BLEU-1 + (1-α)·ROUGE-L(F) of a predicted think block against the reference one.

    >>> similarity("Heart is enlarged.", "Heart is enlarged.")
    1.0
    """
    bleu = bleu1(bleu_tokens(prediction), bleu_tokens(reference))
    rouge = rouge_l(rouge_tokens(prediction), rouge_tokens(reference))
    return alpha * bleu + (1 - alpha) * rouge
