"""CuRL-VPR components (docs/rewards.md §3): its examples, fixed-mode rules and reference-code defects."""

import pytest

from cxmind.rewards import RewardScores, combine, score

CLOSED_GOLD = (
    "<think>Option A suggests effusion; costophrenic angles are sharp, ruled out.</think> "
    "<answer>A) ❌</answer>\n"
    "<think>Option B suggests pneumothorax; markings reach the chest wall, ruled out.</think> "
    "<answer>B) ❌</answer>\n"
    "<think>Option C suggests cardiomegaly; the cardiothoracic ratio exceeds one half.</think> "
    "<answer>C) ✅</answer>\n"
    "<think>Option D suggests a nodule; no focal opacity is seen.</think> <answer>D) ❌</answer>\n"
    "<think>Summary: the heart shadow is enlarged. Option C is most consistent.</think> "
    "<answer>C) ✅</answer>"
)
OPEN_GOLD = (
    "<think>A hazy left base and reduced volume.</think> "
    "<answer>Differential Diagnoses: [Atelectasis, Lung Opacity, Pneumothorax]</answer>\n"
    "<think>Considering Atelectasis, the fissure is displaced with volume loss.</think> "
    "<answer>Atelectasis ✅</answer>\n"
    "<think>Regarding Lung Opacity, the left base is hazy.</think> <answer>Lung Opacity ✅</answer>\n"
    "<think>For Pneumothorax, lung markings reach the wall.</think> <answer>Pneumothorax ❌</answer>\n"
    "<think>Summary: volume loss with basal opacity.</think> <answer>Atelectasis, Lung Opacity</answer>"
)


def closed(rounds):
    return "\n".join(f"<think>{t}</think> <answer>{a}</answer>" for t, a in rounds)


GOLD_CLOSED_ROUNDS = [
    ("Option A suggests effusion; costophrenic angles are sharp, ruled out.", "A) ❌"),
    ("Option B suggests pneumothorax; markings reach the chest wall, ruled out.", "B) ❌"),
    ("Option C suggests cardiomegaly; the cardiothoracic ratio exceeds one half.", "C) ✅"),
    ("Option D suggests a nodule; no focal opacity is seen.", "D) ❌"),
    ("Summary: the heart shadow is enlarged. Option C is most consistent.", "C) ✅"),
]


# ----------------------------------------------------------------------------- closed, fixed


def test_gold_closed_trajectory_earns_everything():
    assert score(CLOSED_GOLD, CLOSED_GOLD, "closed") == RewardScores(1.0, 1.0, 1.0, 0.5)
    assert score(CLOSED_GOLD, CLOSED_GOLD, "closed", w_closed=0.2).process == 0.2


def test_closed_options_come_from_the_column_or_the_solution():
    options = ["A) Pleural effusion", "B) Pneumothorax", "C) Cardiomegaly", "D) Nodule"]
    assert score(CLOSED_GOLD, CLOSED_GOLD, "closed", options=options).process == 0.5
    # With a fifth option in the column, the four judged options no longer cover the question.
    assert score(CLOSED_GOLD, CLOSED_GOLD, "closed", options=[*options, "E) Mass"]).process == 0.0


def test_closed_wrong_answer_earns_only_format():
    rounds = [*GOLD_CLOSED_ROUNDS[:2], ("C is unlikely.", "C) ❌"), ("D fits.", "D) ✅"), ("So D.", "D) ✅")]
    assert score(closed(rounds), CLOSED_GOLD, "closed") == RewardScores(1.0, 0.0, 0.0, 0.0)


def test_closed_think_compares_the_gold_letter_rounds():
    rounds = list(GOLD_CLOSED_ROUNDS)
    rounds[2] = ("The heart is enlarged beyond half the thoracic width.", "C) ✅")
    scores = score(closed(rounds), CLOSED_GOLD, "closed")
    assert scores.outcome == 1.0 and 0.0 < scores.think < 1.0 and scores.process == 0.5


@pytest.mark.parametrize(
    "rounds",
    [
        # an option left unjudged
        [GOLD_CLOSED_ROUNDS[i] for i in (0, 1, 2, 4)],
        # an option judged twice
        [GOLD_CLOSED_ROUNDS[i] for i in (0, 0, 1, 2, 3, 4)],
        # an inconsistent verdict (gold C rejected)
        [*GOLD_CLOSED_ROUNDS[:2], ("no", "C) ❌"), *GOLD_CLOSED_ROUNDS[3:]],
        # a round without a verdict
        [*GOLD_CLOSED_ROUNDS[:3], ("maybe", "D)"), GOLD_CLOSED_ROUNDS[4]],
        # final round names the gold letter but rejects it
        [*GOLD_CLOSED_ROUNDS[:4], ("summary", "C) ❌")],
    ],
)
def test_closed_process_requires_each_option_once_with_consistent_verdicts(rounds):
    assert score(closed(rounds), CLOSED_GOLD, "closed").process == 0.0


def test_closed_process_ignores_option_order():
    rounds = [GOLD_CLOSED_ROUNDS[i] for i in (3, 2, 1, 0, 4)]
    assert score(closed(rounds), CLOSED_GOLD, "closed").process == 0.5


# ----------------------------------------------------------------------------- open, fixed


def test_gold_open_trajectory_earns_everything():
    assert score(OPEN_GOLD, OPEN_GOLD, "open") == RewardScores(1.0, 1.0, 1.0, 0.2)


def test_open_outcome_is_set_f1_of_canonical_lists():
    def final(answer):
        return OPEN_GOLD.rsplit("<answer>", 1)[0] + f"<answer>{answer}</answer>"

    assert score(final("Atelectasis"), OPEN_GOLD, "open").outcome == pytest.approx(2 / 3)
    assert score(final("atelectasis; lung opacities"), OPEN_GOLD, "open").outcome == 1.0
    assert score(final("Atelectasis, Edema, Mass"), OPEN_GOLD, "open").outcome == pytest.approx(2 * 1 / 5)
    assert score(final(""), OPEN_GOLD, "open").outcome == 0.0
    empty_gold = "<think>a</think><answer></answer>"
    assert score("<think>b</think><answer></answer>", empty_gold, "open").outcome == 1.0
    assert score("no rounds at all", empty_gold, "open").outcome == 0.0


def test_open_think_uses_the_reference_round_of_the_same_finding():
    # Fixed mode compares each accepted finding's think with the gold round for that finding.
    scores = score(OPEN_GOLD, OPEN_GOLD, "open")
    assert scores.think == pytest.approx(1.0)
    swapped = OPEN_GOLD.replace("Regarding Lung Opacity, the left base is hazy.", "nothing relevant here")
    assert score(swapped, OPEN_GOLD, "open").think == pytest.approx(0.5)  # (1 + 0) / 2


def test_no_finding_is_a_consistent_answer():
    gold = (
        "<think>Clear lungs.</think><answer>Differential Diagnoses: [Pneumothorax, Edema]</answer>"
        "<think>No pneumothorax.</think><answer>Pneumothorax ❌</answer>"
        "<think>No edema.</think><answer>Edema ❌</answer>"
        "<think>Normal study.</think><answer>No Finding</answer>"
    )
    assert score(gold, gold, "open") == RewardScores(1.0, 1.0, 0.0, 0.2)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Pneumothorax ❌", "Pneumothorax ✅"),  # verdict contradicts the reference
        ("Lung Opacity ✅", "Lung Opacity"),  # verdict missing
        ("Atelectasis, Lung Opacity</answer>", "Atelectasis</answer>"),  # accepted set != final list
        ("[Atelectasis, Lung Opacity, Pneumothorax]", "[Atelectasis, Lung Opacity]"),  # judged but not listed
    ],
)
def test_open_process_rules(old, new):
    assert old in OPEN_GOLD
    assert score(OPEN_GOLD.replace(old, new), OPEN_GOLD, "open").process == 0.0


# ----------------------------------------------------------------------------- v2: exploits of v1 closed

CHEST = "<think>{}</think> <answer>{}</answer>"


def rounds_text(*rounds):
    return "\n".join(CHEST.format(t, a) for t, a in rounds)


ABNORMAL_GOLD = rounds_text(
    ("A hazy left base.", "Differential Diagnoses: [Atelectasis, Edema]"),
    ("Considering Atelectasis, the fissure is displaced with volume loss.", "Atelectasis ✅"),
    ("For Edema, the vessels are sharp and there are no septal lines.", "Edema ❌"),
    ("Summary: left basal atelectasis.", "Atelectasis"),
)


def test_v2_rejecting_one_harmless_candidate_and_calling_the_study_normal_earns_no_process():
    """v1 paid process for this (total 0.3 vs 0.1 for an honest wrong answer): a pull towards "normal"."""
    lazy = rounds_text(
        ("Looks clear.", "Differential Diagnoses: [Pneumothorax]"),
        ("No pneumothorax: markings reach the wall.", "Pneumothorax ❌"),
        ("Normal study.", "No Finding"),
    )
    honest = rounds_text(
        ("A hazy left base.", "Differential Diagnoses: [Edema]"),
        ("Hazy bases: edema.", "Edema ✅"),
        ("Summary: edema.", "Edema"),
    )
    lazy_scores, honest_scores = score(lazy, ABNORMAL_GOLD, "open"), score(honest, ABNORMAL_GOLD, "open")
    assert lazy_scores == RewardScores(1.0, 0.0, 0.0, 0.0)
    assert lazy_scores.total() == pytest.approx(0.1) == honest_scores.total()


def test_v2_skipping_an_uncertain_candidate_pays_no_more_than_judging_it_wrongly():
    both_present = rounds_text(
        ("A hazy left base and hazy hila.", "Differential Diagnoses: [Atelectasis, Edema]"),
        ("Considering Atelectasis, the fissure is displaced with volume loss.", "Atelectasis ✅"),
        ("For Edema, the hila are hazy with septal lines.", "Edema ✅"),
        ("Summary: atelectasis and edema.", "Atelectasis, Edema"),
    )
    skipped = rounds_text(
        ("A hazy left base.", "Differential Diagnoses: [Atelectasis, Edema]"),
        ("Considering Atelectasis, the fissure is displaced with volume loss.", "Atelectasis ✅"),
        ("Summary: left basal atelectasis.", "Atelectasis"),
    )
    judged_wrongly = skipped.replace(
        "<think>Summary:",
        "<think>For Edema, the vessels look sharp.</think> <answer>Edema ❌</answer>\n<think>Summary:",
    )
    skip, wrong = score(skipped, both_present, "open"), score(judged_wrongly, both_present, "open")
    assert skip.process == 0.0  # v1 paid 0.2: Edema listed but never judged, and the final list is short
    assert skip.total() <= wrong.total()
    assert score(both_present, both_present, "open").process == 0.2


def test_v2_open_process_needs_a_correct_final_list_and_each_candidate_judged_once():
    # The same candidate judged twice.
    twice = ABNORMAL_GOLD.replace(
        "<think>Summary:", "<think>Edema again: no.</think> <answer>Edema ❌</answer>\n<think>Summary:"
    )
    assert score(twice, ABNORMAL_GOLD, "open").process == 0.0
    # Consistent verdicts, ✅ set = final list, but the final list misses a reference finding (O < 1).
    gold = ABNORMAL_GOLD.replace("<answer>Atelectasis</answer>", "<answer>Atelectasis, Pneumothorax</answer>")
    partial = score(ABNORMAL_GOLD, gold, "open")
    assert 0 < partial.outcome < 1 and partial.process == 0.0


def test_v2_open_think_counts_accepting_a_non_reference_finding_as_zero():
    over_called = ABNORMAL_GOLD.replace("Edema ❌", "Edema ✅").replace(
        "<answer>Atelectasis</answer>", "<answer>Atelectasis, Edema</answer>"
    )
    scores = score(over_called, ABNORMAL_GOLD, "open")
    assert scores.outcome == pytest.approx(2 / 3)
    assert scores.think == pytest.approx(0.5)  # (1 for Atelectasis + 0 for Edema) / 2; v1 gave 1.0


def test_v2_open_think_needs_a_non_zero_outcome():
    # Accepting the right finding in a middle round but answering something else entirely.
    wrong_final = ABNORMAL_GOLD.replace("<answer>Atelectasis</answer>", "<answer>Pneumothorax</answer>")
    scores = score(wrong_final, ABNORMAL_GOLD, "open")
    assert scores.outcome == 0.0 and scores.think == 0.0


@pytest.mark.parametrize("spelling", ["C）✅", "C✅", "[C] ✅", "**C** ✅", "The heart is large; C) ✅"])
def test_v2_option_letter_spellings_are_read(spelling):
    completion = closed([*GOLD_CLOSED_ROUNDS[:4], ("Summary: option C.", spelling)])
    assert score(completion, CLOSED_GOLD, "closed").outcome == 1.0


def test_v2_a_final_rejection_is_no_answer():
    """A completion that ends on "C) ❌" does not answer C (truncated outputs usually end like this)."""
    truncated = closed([*GOLD_CLOSED_ROUNDS[:2], ("C is not it.", "C) ❌")])
    assert score(truncated, CLOSED_GOLD, "closed").outcome == 0.0
    assert score(truncated, CLOSED_GOLD, "closed", mode="reference").outcome == 1.0  # reference unchanged


def test_v2_multi_label_choice_answers_by_letter_or_with_modifiers():
    options = ["A) Atelectasis", "B) Edema", "C) Pneumothorax"]
    for final in ("A", "A) Atelectasis", "left lower lobe atelectasis", "Atelectasis (left lower lobe)"):
        completion = ABNORMAL_GOLD.replace("<answer>Atelectasis</answer>", f"<answer>{final}</answer>")
        assert score(completion, ABNORMAL_GOLD, "open", options=options).outcome == 1.0, final


def test_v2_think_is_scored_on_at_most_eight_times_the_reference_words():
    gold_think = GOLD_CLOSED_ROUNDS[2][0]
    padded = gold_think + " " + " ".join(f"w{i}" for i in range(8 * len(gold_think.split())))
    exact = closed([*GOLD_CLOSED_ROUNDS[:2], (padded, "C) ✅"), *GOLD_CLOSED_ROUNDS[3:]])
    cut = " ".join(padded.split()[: 8 * len(gold_think.split())])
    by_hand = closed([*GOLD_CLOSED_ROUNDS[:2], (cut, "C) ✅"), *GOLD_CLOSED_ROUNDS[3:]])
    assert score(exact, CLOSED_GOLD, "closed").think == score(by_hand, CLOSED_GOLD, "closed").think > 0


# ----------------------------------------------------------------------------- reference-code defects


def test_defect_single_rejecting_round():
    """A lone "B) ❌" round: the reference code pays format and process; fixed mode pays nothing."""
    lone = "<think>B is not it.</think><answer>B) ❌</answer>"
    assert score(lone, CLOSED_GOLD, "closed", mode="reference") == RewardScores(1.0, 0.0, 0.0, 0.5)
    assert score(lone, CLOSED_GOLD, "closed") == RewardScores(0.0, 0.0, 0.0, 0.0)


def test_defect_fabricated_candidate_rejected():
    """Rejecting a finding never put on the differential list still earns process in the reference code."""
    fabricated = OPEN_GOLD.replace(
        "<think>Summary:",
        "<think>Considering a banana-shaped shadow.</think> <answer>Banana Sign ❌</answer>\n<think>Summary:",
    )
    assert score(fabricated, OPEN_GOLD, "open", mode="reference").process == 0.2
    assert score(fabricated, OPEN_GOLD, "open").process == 0.0


def test_defect_nested_tags():
    nested = CLOSED_GOLD.replace("<think>Summary:", "<think><think>Summary:").replace(
        "consistent.</think>", "consistent.</think></think>"
    )
    assert score(nested, CLOSED_GOLD, "closed", mode="reference").format == 1.0
    assert score(nested, CLOSED_GOLD, "closed").format == 0.0


def test_defect_text_outside_tags():
    chatty = CLOSED_GOLD.replace("</answer>\n<think>Option B", "</answer> Next, option B. <think>Option B")
    assert score(chatty, CLOSED_GOLD, "closed", mode="reference").format == 1.0
    assert score(chatty, CLOSED_GOLD, "closed").format == 0.0


def test_defect_answer_prefix_letter():
    """ "Answer: C" reads as A in the reference code (first A–G anywhere), as C in fixed mode."""
    prefixed = CLOSED_GOLD.replace("<answer>C) ✅</answer>", "<answer>Answer: C ✅</answer>")
    assert score(prefixed, CLOSED_GOLD, "closed", mode="reference").outcome == 0.0
    assert score(prefixed, CLOSED_GOLD, "closed").outcome == 1.0


def test_defect_synonyms():
    gold = OPEN_GOLD.replace("Atelectasis, Lung Opacity</answer>", "Pleural Effusion</answer>")
    pred = OPEN_GOLD.replace("Atelectasis, Lung Opacity</answer>", "effusion</answer>")
    assert score(pred, gold, "open", mode="reference").outcome == 0.0
    assert score(pred, gold, "open").outcome == 1.0


def test_defect_reference_open_think_reads_the_final_round():
    # The reference code looks the finding up in raw answers ("atelectasis ✅" != "atelectasis"),
    # so it compares with the final round's summary think.
    assert score(OPEN_GOLD, OPEN_GOLD, "open", mode="reference").think < 0.5
    assert score(OPEN_GOLD, OPEN_GOLD, "open").think == pytest.approx(1.0)


def test_reference_closed_similarity_is_rounded():
    from cxmind.rewards.similarity import bleu1, rouge_l, rouge_tokens

    think = "The heart is enlarged beyond half  the thoracic width."
    gold_think = GOLD_CLOSED_ROUNDS[2][0]
    rounds = list(GOLD_CLOSED_ROUNDS)
    rounds[2] = (think, "C) ✅")

    def tokens(text):  # single-space split: the double space yields an empty token
        return text.lower().replace(".", " .").split(" ")

    bleu = round(bleu1(tokens(think), tokens(gold_think)), 4)
    rouge = round(rouge_l(rouge_tokens(think), rouge_tokens(gold_think)), 4)
    expected = 0.3 * bleu + 0.7 * rouge
    assert score(closed(rounds), CLOSED_GOLD, "closed", mode="reference").think == pytest.approx(
        expected, abs=1e-12
    )
    assert score(closed(rounds), CLOSED_GOLD, "closed").think != pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- totals and errors


def test_combine_applies_the_gate():
    s = RewardScores(1.0, 1.0, 0.8, 0.5)
    assert s.total(stable=True) == pytest.approx(0.1 + 0.9 + 0.8 + 0.5)
    assert s.total(stable=False) == pytest.approx(1.0)
    assert combine(1, 0, 1, 1, True, w_format=0.5, w_outcome=0.5) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_type": "report"}, "task_type"),
        ({"task_type": "closed", "mode": "paper"}, "mode"),
        ({"task_type": "closed", "w_closed": -1}, "w_closed"),
        ({"task_type": "open", "alpha": 2}, "alpha"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        score("x", "y", **kwargs)
