"""The interleaved grammar: parsing, validation, rendering and instructions (docs/rewards.md §1–2)."""

import pytest

from cxmind.format import (
    ACCEPT,
    REJECT,
    Round,
    final_letter,
    findings_in,
    instructions,
    mark_of,
    option_letter,
    option_letters,
    parse,
    render,
    render_closed,
    render_open,
)

CLOSED = (
    "<think>Option A suggests effusion; the bases are sharp, ruled out.</think> <answer>A) ❌</answer>\n"
    "<think>Option B suggests pneumothorax; lung markings reach the wall.</think> <answer>B) ❌</answer>\n"
    "<think>Option C suggests cardiomegaly; the heart is wide.</think> <answer>C) ✅</answer>\n"
    "<think>Summary: the heart shadow is enlarged. Option C is most consistent.</think> "
    "<answer>C) ✅</answer>"
)
OPEN = (
    "<think>global observation of a wide heart and hazy bases</think> "
    "<answer>Differential Diagnoses: [Atelectasis, Lung Opacity]</answer>\n"
    "<think>Considering Atelectasis, there is volume loss.</think> <answer>Atelectasis ✅</answer>\n"
    "<think>Regarding Lung Opacity, the left base is hazy.</think> <answer>Lung Opacity ✅</answer>\n"
    "<think>Summary: both are present.</think> <answer>Atelectasis, Lung Opacity</answer>"
)


def test_spec_examples_parse_into_their_rounds():
    closed = parse(CLOSED)
    assert closed.well_formed
    assert [option_letter(r.answer) for r in closed.rounds] == ["A", "B", "C", "C"]
    assert [mark_of(r.answer) for r in closed.rounds] == [REJECT, REJECT, ACCEPT, ACCEPT]
    assert closed.rounds[0].think.startswith("Option A suggests")

    open_ = parse(OPEN)
    assert open_.well_formed and len(open_.rounds) == 4
    assert findings_in(open_.rounds[0].answer) == ["Atelectasis", "Lung Opacity"]
    assert findings_in(open_.rounds[-1].answer) == ["Atelectasis", "Lung Opacity"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<think>a<think>b</think></think><answer>C</answer>", "nested <think> inside <think>"),
        ("<think>a<answer>b</answer></think><answer>C</answer>", "nested <answer> inside <think>"),
        ("Sure! <think>t</think><answer>A</answer>", "text outside rounds"),
        ("<think>t</think><answer>A</answer> Hope this helps.", "text outside rounds"),
        ("<think>t</think> so: <answer>A</answer>", "text between </think> and <answer>"),
        ("<think>t</think>", "<think> without an <answer>"),
        ("<answer>A</answer>", "<answer> without a preceding <think>"),
        ("<think>t</think><answer>A", "unclosed <answer>"),
        ("</answer><think>t</think><answer>A</answer>", "stray </answer>"),
        ("", "no rounds"),
        ("just prose", "text outside rounds"),
    ],
)
def test_violations_are_named(text, error):
    parsed = parse(text)
    assert not parsed.well_formed
    assert error in parsed.errors


def test_lenient_recovery_keeps_complete_rounds():
    parsed = parse("Sure. <think>a</think><answer>B) ✅</answer> trailing")
    assert parsed.rounds == (Round("a", "B) ✅"),)
    nested = parse("<think>x<think>y</think><answer>D</answer>")
    assert nested.rounds[-1] == Round("y", "D")


def test_white_space_between_and_around_rounds_is_allowed():
    text = "\n  <think> a </think>\n\n<answer> A) ❌ </answer>\t<think>b</think><answer>B) ✅</answer>  \n"
    parsed = parse(text)
    assert parsed.well_formed
    assert parsed.rounds == (Round("a", "A) ❌"), Round("b", "B) ✅"))


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("C) ✅", "C"),
        ("(b) Not matched", "B"),
        ("Answer: D", "D"),
        ("B. Lung Opacity", "B"),
        ("No", None),
        ("X-ray shows", None),
        ("a) ❌", "A"),
        ("(C)", "C"),
        ("C)✅", "C"),
        ("I think E: best", "E"),  # "I" is not an option letter
        ("b. lower case needs a parenthesis", None),
        ("No finding", None),  # the reference code reads F here
        ("", None),
        # v2 spellings (full-width bracket, glued mark, square brackets, bold) and strong beats weak
        ("C）✅", "C"),
        ("C✅", "C"),
        ("[C] ✅", "C"),
        ("**C** ✅", "C"),
        ("c] ❌", "C"),
        ("A large heart; C) ✅", "C"),
        ("A: the heart is large; option C", "A"),  # a strong candidate before a weak one
        ("B ✅", "B"),  # weak (white space), but the only candidate
        ("e.g. B", "B"),
    ],
)
def test_option_letter(answer, letter):
    assert option_letter(answer) == letter


def test_option_letter_respects_the_question_letters():
    assert option_letter("E) ✅", letters="ABCD") is None
    assert option_letter("A chest film; answer B)", letters="B") == "B"


@pytest.mark.parametrize(
    ("options", "letters"),
    [
        (["A) Atelectasis", "B) Edema", "C) Mass"], ("A", "B", "C")),
        ({"A": "Yes", "B": "No"}, ("A", "B")),
        (["Yes", "No"], ("A", "B")),
        ("A. effusion\nB. edema\n", ("A", "B")),
        (["(a) x", "(b) y"], ("A", "B")),
        (None, None),
        ([], None),
    ],
)
def test_option_letters_from_dataset_columns(options, letters):
    assert option_letters(options) == letters


def test_unlabelled_options_are_lettered_by_position_up_to_z():
    assert option_letters([f"finding {i}" for i in range(26)])[-1] == "Z"
    with pytest.raises(ValueError, match="at most 26"):
        option_letters([f"finding {i}" for i in range(27)])


def test_final_letter_treats_a_final_rejection_as_no_answer():
    assert final_letter("D) ❌") is None  # a truncated completion usually stops on a rejected option
    assert final_letter("C) ✅") == "C"
    assert final_letter("C") == "C"
    assert final_letter("C) ✅ ❌") == "C"  # both marks: no verdict, the letter stands


def test_marks():
    assert mark_of("A) ✅") == ACCEPT
    assert mark_of("Edema ❌") == REJECT
    assert mark_of("A) ✅ ❌") is None
    assert mark_of("A)") is None


def test_findings_in_canonicalises_and_deduplicates():
    assert findings_in("effusion; Pleural_Thickening\nenlarged heart, Effusion.") == [
        "Pleural Effusion",
        "Pleural Thickening",
        "Cardiomegaly",
    ]
    assert findings_in("No Finding") == ["No Finding"]
    assert findings_in("") == []


def test_findings_in_reads_option_letters_through_the_options():
    options = ["A) Cardiomegaly", "B) Edema", "C) Pleural Effusion", "D) No Finding"]
    assert findings_in("A, C", options) == ["Cardiomegaly", "Pleural Effusion"]
    assert findings_in("A) Cardiomegaly; (c)", options) == ["Cardiomegaly", "Pleural Effusion"]
    assert findings_in("D", options) == ["No Finding"]
    assert findings_in("A, C") == ["a", "c"]  # without options a letter is just text
    assert findings_in("A large effusion", options) == ["a large effusion"]  # prose is not a label


def test_findings_in_ignores_modifiers():
    assert findings_in("left pleural effusion, mild cardiomegaly, Atelectasis (left lower lobe)") == [
        "Pleural Effusion",
        "Cardiomegaly",
        "Atelectasis",
    ]


def test_render_round_trips_and_refuses_tags():
    rounds = (Round("a b", "A) ❌"), Round("c", "B) ✅"))
    assert parse(render(rounds)).rounds == rounds
    with pytest.raises(ValueError, match="tags"):
        render([("<think>", "A")])
    with pytest.raises(ValueError, match="at least one round"):
        render([])


def test_render_closed_and_open_build_spec_shaped_trajectories():
    closed = render_closed([("A", "No.", False), ("B", "Yes.", True)], "B fits.", "B")
    parsed = parse(closed)
    assert parsed.well_formed
    assert [r.answer for r in parsed.rounds] == ["A) ❌", "B) ✅", "B) ✅"]

    open_ = render_open("obs", [("Atelectasis", "vol loss", True), ("Edema", "no", False)], "done")
    answers = [r.answer for r in parse(open_).rounds]
    assert answers == [
        "Differential Diagnoses: [Atelectasis, Edema]",
        "Atelectasis ✅",
        "Edema ❌",
        "Atelectasis",
    ]
    none_present = render_open("obs", [("Edema", "no", False)], "clear")
    assert parse(none_present).rounds[-1].answer == "No Finding"


def test_instructions():
    closed = instructions("closed", ["A) x", "B) y", "C) z"])
    assert "The options are A, B, C." in closed and "<think>" in closed and "✅" in closed
    assert "Differential Diagnoses" in instructions("open")
    with pytest.raises(ValueError, match="task_type"):
        instructions("report")
