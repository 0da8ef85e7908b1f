"""Prompts the coach is tested on, good and bad, each with the exact set of finding codes it must produce.

``spans`` maps a code to words its finding's span must cover (case-insensitive), so a finding cannot point
at the wrong part of the prompt. ``rewrite`` is False where no meaningful rewrite exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    prompt: str
    codes: frozenset[str]
    references: int = 1
    roles: tuple[str, ...] | None = None
    spans: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rewrite: bool = True

    @property
    def id(self) -> str:
        extra = f" [{self.references} refs{': ' + ','.join(self.roles) if self.roles else ''}]" \
            if self.references != 1 or self.roles else ""
        return (self.prompt[:60] or "<empty>") + extra


def case(prompt: str, *codes: str, references: int = 1, roles: tuple[str, ...] | None = None,
         spans: dict[str, tuple[str, ...]] | None = None, rewrite: bool = True) -> Case:
    return Case(prompt, frozenset(codes), references, roles, spans or {}, rewrite)


GOOD = [
    # BFL-style instructions: a verb, a stable reference, a preservation clause.
    case("Change the background to a mountain landscape at sunset; keep the person, their face, pose and outfit "
         "exactly the same."),
    case("Transform to oil painting with visible brushstrokes, thick paint texture; keep the composition"),
    case("place the bottle on a marble countertop, keep the label unchanged"),
    case("Replace 'joy' with 'BFL'"),
    case("Replace “Open” with “Closed” on the storefront sign"),
    case('Change the sign to read "Grand Opening" while keeping the same font and colors'),
    case("Change 'Coffee' to 'Tea' on the mug; keep the font and style the same"),
    case("Convert to Studio Ghibli style while maintaining her facial features and expression"),
    case("Relight the scene with warm golden-hour sunlight coming from the left; keep the subject, composition and "
         "colors otherwise unchanged"),
    case("Change the lighting to soft window light from the left while preserving her face, pose and expression"),
    case("Put the blonde woman on the left in a red dress; keep her face and pose the same"),
    case("Dress the man in a navy suit and keep his face, pose and the background exactly the same"),
    # Examples in the spirit of BFL's Kontext prompting guide.
    case("Change the man into a viking warrior while preserving his exact facial features, eye color, and facial "
         "expression"),
    case("Convert to pencil sketch with natural graphite lines, cross-hatching, and visible paper texture"),
    case("Change to daytime while maintaining the same style of the painting"),
    case("She is now taking a selfie in the streets of Freiburg, it's a lovely day out."),
    case("Change the text from 'OPEN' to 'CLOSED'"),
    case("Using this style, a bunny, a dog and a cat are having a tea party seated around a small white table",
         roles=("style",)),
    # A garment that picks the person out, and a pose that belongs to an added animal.
    case("Make the woman with the red hat smile"),
    case("add a golden retriever sitting next to her"),
    # Explicit appearance changes are edits, not re-descriptions.
    case("change her hair to red"),
    case("make him look older"),
    case("Change her hair color to platinum blonde; keep her face and expression the same"),
    case("Give the man a full beard"),
    case("Make her 20 years younger"),
    # Edits that touch no identity-sensitive aspect of a person need no preservation clause.
    case("Remove the watermark in the bottom right corner"),
    case("Remove her glasses"),
    case("Make it night"),
    case("Replace the sky with a dramatic stormy sky; keep the buildings and the foreground unchanged"),
    case("Add a red scarf around her neck; keep everything else exactly the same"),
    case("Put a cat on the sofa"),
    case("Make the car red"),
    # Adding a new person may describe that person.
    case("Add a blonde woman with blue eyes next to him; keep his face unchanged"),
    # Without a reference (text-to-image) a description is exactly what is needed.
    case("A beautiful blonde woman with blue eyes on a beach", references=0),
    case("A woman standing on a beach at sunset, golden light, waves, cinematic", references=0),
    # A reference that shows a garment, not the person: describing the person is legitimate.
    case("A tall man with short grey hair wearing the jacket; keep the jacket exactly as it is",
         roles=("garment",)),
    # Multi-reference prompts that name each image.
    case("Put the woman from the first image next to the man from the second image; keep both of their faces and "
         "outfits exactly the same", references=2, roles=("subject", "subject")),
    case("Dress the woman from the first image in the jacket from the second image; keep her face, pose and the "
         "background exactly the same", references=2, roles=("subject", "garment")),
    case("Restyle the first image in the style of the second image; keep the composition", references=2,
         roles=("subject", "style")),
    case("Put her in the dress from the second image; keep her face and pose unchanged", references=2,
         roles=("subject", "garment")),
    # The README's examples: a named look as a fragment is a complete instruction for the whole picture.
    case("as an oil painting"),
    case("in the style of Van Gogh"),
    case("as a watercolor painting with soft washes"),
    case("make it snowy"),
    case("put it on a beach at sunset"),
    case("relight in golden hour"),
    case("She wears the navy suit from the second image; keep her face and pose the same", references=2),
    case("The man holds the bottle from the second image", references=2),
]

BAD = [
    # --- no preservation clause on identity-sensitive edits
    case("put her on a beach at sunset", "no_preservation", spans={"no_preservation": ("put her on a beach",)}),
    case("Make her wear a red leather jacket", "no_preservation",
         spans={"no_preservation": ("wear a red leather jacket",)}),
    case("Turn her into an anime character", "no_preservation", spans={"no_preservation": ("anime",)}),
    case("give her dramatic rim lighting", "no_preservation", spans={"no_preservation": ("rim lighting",)}),
    case("Change the woman's pose so she is sitting on a chair", "no_preservation",
         spans={"no_preservation": ("pose",)}),
    case("Put the perfume bottle on a wet black rock by the ocean", "no_preservation",
         spans={"no_preservation": ("bottle", "rock")}),
    case("Add a hat to her", "no_preservation", spans={"no_preservation": ("hat",)}),
    case("Relight her with dramatic studio lighting", "no_preservation",
         spans={"no_preservation": ("studio lighting",)}),
    case("The woman is now wearing a black leather jacket", "no_preservation",
         spans={"no_preservation": ("leather jacket",)}),
    case("He should be wearing a tuxedo", "no_preservation", spans={"no_preservation": ("tuxedo",)}),
    case("Put it on a marble countertop", "no_preservation", roles=("object",),
         spans={"no_preservation": ("marble countertop",)}),
    # --- fragments without a verb
    case("in a navy suit", "no_edit_verb", "no_preservation", spans={"no_edit_verb": ("navy suit",),
                                                                     "no_preservation": ("navy suit",)}),
    case("Golden hour", "no_edit_verb", spans={"no_edit_verb": ("golden hour",)}),
    case("The bottle on a marble countertop", "no_edit_verb", roles=("object",),
         spans={"no_edit_verb": ("marble countertop",)}),
    # --- re-describing the subject / the scene
    case("A beautiful blonde woman with blue eyes on a beach", "redescribes_subject", "describes_scene",
         spans={"redescribes_subject": ("beautiful", "blonde", "blue eyes"), "describes_scene": ("on a beach",)}),
    case("A man with blue eyes standing in a library", "redescribes_subject", "describes_scene",
         spans={"redescribes_subject": ("blue eyes",)}),
    case("30-year-old asian woman, slim, smiling, in a red dress", "redescribes_subject", "describes_scene",
         spans={"redescribes_subject": ("30-year-old", "asian")}),
    case("Put a beautiful woman with long red hair in a navy suit", "redescribes_subject", "no_preservation",
         spans={"redescribes_subject": ("beautiful", "long red hair"), "no_preservation": ("navy suit",)}),
    case("She has blue eyes and freckles. Put her in a café", "redescribes_subject", "no_preservation",
         spans={"redescribes_subject": ("blue eyes", "freckles"), "no_preservation": ("café",)}),
    case("Put a redhead woman next to him", "redescribes_subject", spans={"redescribes_subject": ("redhead",)}),
    case("Change the background to Paris for a handsome young man with a beard; keep his face", "redescribes_subject",
         spans={"redescribes_subject": ("handsome", "young", "beard")}),
    case("A woman standing on a beach at sunset, golden light, waves, cinematic, highly detailed", "describes_scene",
         spans={"describes_scene": ("beach at sunset", "golden light")}),
    case("Cozy living room with a fireplace, warm lighting, christmas tree, snow outside the window",
         "describes_scene", spans={"describes_scene": ("living room",)}),
    case("Generate a photo of a woman in a red dress on a beach", "describes_scene",
         spans={"describes_scene": ("photo of a woman",)}),
    # --- several changes at once
    case("change the background to a beach and make her wear a red dress and turn it into a watercolor and add a "
         "hat", "too_many_changes", "no_preservation",
         spans={"too_many_changes": ("background", "red dress", "watercolor", "hat"),
                "no_preservation": ("background",)}),
    case("Put the woman on a beach at sunset, change her outfit to a white summer dress, make it a watercolor; keep "
         "her face", "too_many_changes", spans={"too_many_changes": ("beach", "summer dress", "watercolor")}),
    # --- vague changes
    case("make it better", "vague_change", spans={"vague_change": ("better",)}, rewrite=False),
    case("improve it", "vague_change", spans={"vague_change": ("improve",)}, rewrite=False),
    case("fix it", "vague_change", spans={"vague_change": ("fix",)}, rewrite=False),
    case("enhance", "vague_change", spans={"vague_change": ("enhance",)}, rewrite=False),
    case("Make her look nicer", "vague_change", spans={"vague_change": ("nicer",)}, rewrite=False),
    case("make it look more professional", "vague_change", spans={"vague_change": ("professional",)}, rewrite=False),
    case("make her look more professional", "vague_change", spans={"vague_change": ("professional",)}, rewrite=False),
    case("Make it cool and improve the photo", "vague_change", spans={"vague_change": ("cool",)}, rewrite=False),
    # --- styles without a name
    case("make it artistic", "unnamed_style", spans={"unnamed_style": ("artistic",)}, rewrite=False),
    case("Change the style of the photo; keep the composition", "unnamed_style", spans={"unnamed_style": ("style",)},
         rewrite=False),
    # --- text edits without quotes
    case("change the sign text from OPEN to CLOSED", "unquoted_text", spans={"unquoted_text": ("CLOSED",)}),
    case("Replace the word Sale with Clearance on the banner", "unquoted_text",
         spans={"unquoted_text": ("Clearance",)}),
    case("Make the shirt say Hello World", "unquoted_text", spans={"unquoted_text": ("Hello World",)}),
    case("Add the words Happy Birthday on the cake", "unquoted_text", spans={"unquoted_text": ("Happy Birthday",)}),
    case("Change the title to Summer Sale", "unquoted_text", spans={"unquoted_text": ("Summer Sale",)}),
    case("replace Joy with BFL", "unquoted_text", spans={"unquoted_text": ("BFL",)}),
    # --- several references
    case("Put her next to him", "ambiguous_pronoun", "no_preservation", references=2, roles=("subject", "subject"),
         spans={"ambiguous_pronoun": ("her",)}),
    case("Make her hug him; keep both faces unchanged", "ambiguous_pronoun", references=2,
         roles=("subject", "subject"), spans={"ambiguous_pronoun": ("her",)}),
    case("Make her wear the jacket", "no_preservation", references=2, roles=("subject", "garment"),
         spans={"no_preservation": ("jacket",)}),
    case("Make her wear his jacket", "ambiguous_pronoun", "no_preservation", references=2,
         roles=("subject", "subject"), spans={"ambiguous_pronoun": ("her",)}),
    # --- the README's multi-reference example and its variants: a statement of the change (kept as the user
    # wrote it, with a preservation clause added)
    case("she wears the navy suit from the second image", "no_preservation", references=2,
         spans={"no_preservation": ("navy suit", "second image")}),
    case("The woman is wearing the jacket from image 2", "no_preservation", references=2,
         spans={"no_preservation": ("jacket",)}),
    case("he wears the watch from the second photo", "no_preservation", references=2,
         spans={"no_preservation": ("watch",)}),
    # --- nothing at all
    case("", "empty_prompt", rewrite=False),
    case("   ", "empty_prompt", rewrite=False),
]

TABLE = GOOD + BAD
