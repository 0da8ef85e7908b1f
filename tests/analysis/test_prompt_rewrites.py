"""The coach's suggested rewrites read as English, keep what the user asked for, and never add a change."""

from __future__ import annotations

import re

import pytest

from kontext_studio.analysis.prompt_coach import coach
from tests.analysis.prompt_table import BAD, GOOD, Case

# Words a rewrite may bring in: verbs that restate an edit, stable references to the subject, and the
# preservation clause. Anything else new would be a change the user never asked for.
FRAME = set(re.findall(r"\S+", """
a an the and with in into on to of from as is are be it its itself their them they each both own
put dress turn change restyle relight replace make wear add keep keeping exactly same unchanged while
woman man person girl boy people product main subject image picture scene first second third fourth
face faces pose expression outfit outfits background composition layout shape colours colour label font
facial features position text her his him she he person's woman's man's
"""))
STOP = FRAME | set(re.findall(r"\S+", "this that these those at by for or but also then now just please"))
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower().replace("’", "'")))


def change_part(rewrite: str) -> str:
    return rewrite.split(";", 1)[0]


REWRITTEN = [c for c in BAD if c.rewrite]


@pytest.mark.parametrize("c", REWRITTEN, ids=[c.id for c in REWRITTEN])
def test_rewrites_are_grammatical(c: Case) -> None:
    rewrite = coach(c.prompt, references=c.references, roles=list(c.roles) if c.roles else None).rewrite
    assert rewrite is not None
    low = rewrite.lower()
    assert not re.search(r"\b(?:a|an|the)\s+(?:a|an|the|she|he|her|his|they|their)\b", low), rewrite
    assert not re.search(r"\b(\w+)\s+\1\b", low), f"doubled word: {rewrite}"
    assert not re.search(r"\bwith\s+(?:she|he|they)\b|,\s*with\s+(?:is|are)\b", low), rewrite
    assert ";;" not in rewrite and " ," not in rewrite and rewrite.count(";") <= 2


@pytest.mark.parametrize("c", REWRITTEN, ids=[c.id for c in REWRITTEN])
def test_rewrites_never_add_a_change(c: Case) -> None:
    rewrite = coach(c.prompt, references=c.references, roles=list(c.roles) if c.roles else None).rewrite
    assert rewrite is not None
    invented = words(change_part(rewrite)) - words(c.prompt) - FRAME
    assert not invented, f"{rewrite!r} adds {sorted(invented)}"


@pytest.mark.parametrize("c", [c for c in REWRITTEN if c.codes <= {"no_preservation", "ambiguous_pronoun"}],
                         ids=[c.id for c in REWRITTEN if c.codes <= {"no_preservation", "ambiguous_pronoun"}])
def test_rewrites_keep_every_word_of_the_change(c: Case) -> None:
    """Adding a preservation clause or naming the person must not drop anything the user asked for."""
    rewrite = coach(c.prompt, references=c.references, roles=list(c.roles) if c.roles else None).rewrite
    assert rewrite is not None
    asked = words(c.prompt.split(";")[0]) - STOP
    missing = asked - words(rewrite)
    assert not missing, f"{rewrite!r} lost {sorted(missing)}"


@pytest.mark.parametrize("prompt", ["make it better", "improve it", "make it artistic", "Make her look nicer",
                                    "make it look more professional", "Change the style of the photo"])
def test_no_rewrite_when_only_the_user_knows_the_change(prompt: str) -> None:
    report = coach(prompt)
    assert report.findings and report.rewrite is None


def test_the_readme_examples() -> None:
    suit = coach("she wears the navy suit from the second image", references=2)
    assert suit.codes == {"no_preservation"}
    assert suit.rewrite == ("The woman wears the navy suit from the second image; keep her face, pose, expression "
                            "and the background exactly the same.")
    for prompt in ("put her on a beach at sunset",):
        assert coach(prompt).rewrite == (
            "Put the woman on a beach at sunset; keep her face, pose and outfit exactly the same.")
    for ok in ("as an oil painting", "make it snowy", "relight in golden hour", "put it on a beach at sunset"):
        report = coach(ok)
        assert report.codes == set() and report.rewrite is None, (ok, report.codes)


def test_the_table_holds_the_readme_prompts() -> None:
    prompts = {c.prompt for c in GOOD + BAD}
    assert {"as an oil painting", "she wears the navy suit from the second image", "make it better",
            "put her on a beach at sunset", "make it snowy", "relight in golden hour"} <= prompts
