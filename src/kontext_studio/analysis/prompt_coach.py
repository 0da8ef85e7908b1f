"""Prompt coach: a rule-based, deterministic lint for FLUX.1 Kontext editing instructions.

Kontext is an *editing* model: it reads the subject's identity, the composition and the details from the
reference pixels and the instruction should only say what changes. The habits people bring from
text-to-image prompting (describing the whole scene, describing the person's looks, piling up changes)
work against that. ``coach`` finds those habits with plain regular expressions (no model, no network,
about a millisecond for a typical prompt), points at the words involved, says why they matter for Kontext and
suggests one rewrite of the whole prompt in the spirit of BFL's Kontext prompting guide: name the subject
by a stable reference ("the woman"), state the change with a verb, and say what must stay the same.

Rule codes (``CODES``):

- ``empty_prompt`` (error): nothing to do.
- ``redescribes_subject`` (warning): appearance of the referenced subject described (hair/eye/skin colour,
  age, ethnicity, body type, "a beautiful woman with ..."). Explicit changes ("change her hair to red",
  "make him look older"), selectors with "the" ("the woman with short black hair") and new people being
  added are not flagged. Only when a reference may show the subject.
- ``describes_scene`` (warning): a text-to-image style description of the result with no edit verb.
- ``no_edit_verb`` (info): a short fragment ("as an oil painting", "in a navy suit") with no verb.
- ``too_many_changes`` (warning): three or more separate changes in one edit.
- ``no_preservation`` (warning): a background, outfit, pose, style, lighting or placement change on a
  person (or product) with no clause saying what to keep.
- ``vague_change`` (warning): "make it better", "improve it", "fix it", "enhance", ...
- ``ambiguous_pronoun`` (warning): "her"/"him" with two or more subject references and no image named.
- ``unnamed_style`` (info): a style change that does not say which style ("make it artistic").
- ``unquoted_text`` (info): a text edit without the words in quotes (Kontext prefers
  ``Replace "OLD" with "NEW"``).
- ``too_long`` (warning): longer than the 512 tokens the T5 encoder reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kontext_studio.analysis.common import Finding, Severity

__all__ = ["CODES", "CoachReport", "coach"]

EMPTY_PROMPT = "empty_prompt"
REDESCRIBES_SUBJECT = "redescribes_subject"
DESCRIBES_SCENE = "describes_scene"
NO_EDIT_VERB = "no_edit_verb"
TOO_MANY_CHANGES = "too_many_changes"
NO_PRESERVATION = "no_preservation"
VAGUE_CHANGE = "vague_change"
AMBIGUOUS_PRONOUN = "ambiguous_pronoun"
UNNAMED_STYLE = "unnamed_style"
UNQUOTED_TEXT = "unquoted_text"
TOO_LONG = "too_long"

#: Every rule code with its severity.
CODES: dict[str, Severity] = {
    EMPTY_PROMPT: Severity.ERROR,
    REDESCRIBES_SUBJECT: Severity.WARNING,
    DESCRIBES_SCENE: Severity.WARNING,
    NO_EDIT_VERB: Severity.INFO,
    TOO_MANY_CHANGES: Severity.WARNING,
    NO_PRESERVATION: Severity.WARNING,
    VAGUE_CHANGE: Severity.WARNING,
    AMBIGUOUS_PRONOUN: Severity.WARNING,
    UNNAMED_STYLE: Severity.INFO,
    UNQUOTED_TEXT: Severity.INFO,
    TOO_LONG: Severity.WARNING,
}

MAX_CHANGES = 2  # "start simple": one or two changes per edit, chain the rest
T5_MAX_TOKENS = 512
T5_TOKENS_PER_WORD = 1.35  # English through T5's sentencepiece vocabulary, roughly
_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
_SENSITIVE = ("background", "placement", "outfit", "pose", "style", "lighting")


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------


def _alt(words: Iterable[str]) -> str:
    """A regex matching any of ``words``: spaces match any whitespace, hyphens are optional.

    The words are folded into a prefix tree (``p(?:ainting|ixel\\s+art)``) so that a position that cannot
    start any word fails after one character: Python's ``re`` would otherwise try every alternative there.
    Longer words win because every optional tail is greedy.
    """
    trie: dict[str, Any] = {}
    for word in sorted(set(words)):
        node = trie
        for ch in word.lower():
            unit = r"\s+" if ch == " " else r"[\s-]?" if ch == "-" else re.escape(ch)
            node = node.setdefault(unit, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [unit + emit(child) for unit, child in sorted(node.items()) if unit]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and "" not in node else "(?:" + "|".join(branches) + ")"
        return body + "?" if "" in node else body

    return emit(trie)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _low(text: str) -> str:
    """ASCII-lowercase ``text``; unlike ``str.lower`` it never changes the length, so spans stay valid."""
    return text.translate(_ASCII_LOWER)


def _rx(pattern: str) -> re.Pattern[str]:
    """Compile a lowercase pattern. It is matched against ``_low(text)``: case-sensitive matching of
    lowercased text is several times faster in ``re`` than IGNORECASE, and offsets are the same."""
    return re.compile(pattern)


def _ci(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """The case-insensitive twin of a pattern, for the rewrite helpers that work on mixed-case text."""
    return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)


FEMALE = ("she", "her", "hers", "herself", "woman", "women", "girl", "girls", "lady", "ladies", "female", "bride",
          "mother", "mom", "actress", "queen", "princess", "wife", "daughter", "sister", "grandmother")
MALE = ("he", "him", "his", "himself", "man", "men", "boy", "boys", "guy", "guys", "gentleman", "male", "groom",
        "father", "dad", "actor", "king", "prince", "husband", "son", "brother", "grandfather")
NEUTRAL_PERSON = ("person", "people", "persons", "child", "children", "kid", "kids", "baby", "toddler", "teen",
                  "teenager", "couple", "family", "face", "faces", "portrait", "selfie", "headshot", "everyone",
                  "someone", "athlete")
PERSON_NOUNS = ("woman", "women", "man", "men", "girl", "girls", "boy", "boys", "lady", "ladies", "guy", "guys",
                "person", "people", "gentleman", "female", "male", "teen", "teenager", "child", "kid", "bride",
                "groom")
PRODUCTS = ("bottle", "product", "package", "packaging", "jar", "box", "shoe", "shoes", "sneaker", "sneakers",
            "bag", "handbag", "backpack", "watch", "perfume", "mug", "cup", "phone", "smartphone", "laptop",
            "headphones", "lipstick", "tube", "candle", "chair", "lamp", "sofa", "car",
            "necklace", "cosmetics", "serum", "flask")
GARMENTS = ("suit", "tuxedo", "dress", "gown", "shirt", "t-shirt", "tshirt", "blouse", "jacket", "coat", "blazer",
            "hoodie", "sweater", "jumper", "cardigan", "jeans", "trousers", "pants", "skirt", "kimono", "armor",
            "armour", "hat", "cap", "beanie", "scarf", "tie", "vest", "outfit", "uniform", "costume",
            "swimsuit", "bikini", "overalls", "sweatshirt", "robe")

STRONG_VERBS = ("change", "make", "turn", "transform", "convert", "replace", "put", "add", "remove", "delete",
                "erase", "swap", "give", "move", "relight", "recolor", "recolour", "restyle", "apply", "adjust",
                "rotate", "extend", "insert", "reimagine", "redraw", "redo", "alter", "modify", "darken",
                "brighten", "lighten", "sharpen", "colorize", "colourize", "stylize", "stylise", "zoom", "expand",
                "increase", "decrease", "reduce", "enhance", "improve", "fix", "beautify", "upscale", "restore",
                "retouch", "dye", "bleach", "flip", "straighten", "tilt", "translate", "rewrite", "transport",
                "teleport", "let", "de-age", "shave", "lengthen", "shorten", "upgrade", "polish")
AMBIGUOUS_VERBS = ("dress", "paint", "color", "colour", "light", "set", "show", "sit", "pose", "use", "clean",
                   "warm", "cool", "open", "close", "fill", "cover", "mirror", "write", "place", "render", "age",
                   "edit", "update", "crop", "blur", "style", "draw", "seat", "stand", "frame", "shift", "bring",
                   "have", "get", "wear", "using", "switch", "create", "generate", "imagine", "depict", "design", "cut",
                   "grow", "position", "combine", "merge", "blend", "remake", "hold", "raise", "lower")
KEEP_LEAD = ("keep", "keeping", "keeps", "preserve", "preserving", "maintain", "maintaining", "retain",
             "retaining", "leave", "leaving", "without", "don't", "dont", "do not", "make sure", "ensure",
             "ensuring", "everything else", "the rest", "all else")
FILLER = ("please", "now", "then", "and", "also", "but", "just", "so", "kindly", "finally", "next", "first",
          "lastly", "can you", "could you", "would you", "will you", "i want you to", "i want to",
          "i'd like you to", "i'd like to", "i would like you to", "i would like to", "let's", "lets",
          "try to", "go ahead and", "simply", "only")
PARTICIPLES = ("standing", "sitting", "posing", "walking", "lying", "leaning", "smiling", "relaxing", "seated",
               "kneeling", "running", "laughing", "looking", "staring", "holding", "dancing", "wearing",
               "dressed", "gazing", "is", "are")

HAIR_ADJ = ("blonde", "blond", "brunette", "red", "ginger", "auburn", "black", "brown", "dark", "light", "grey",
            "gray", "silver", "white", "pink", "blue", "green", "purple", "platinum", "golden", "strawberry",
            "long", "short", "curly", "straight", "wavy", "braided", "shoulder-length", "messy", "thick",
            "flowing", "shiny", "jet-black", "dyed", "cropped", "voluminous")
EYE_ADJ = ("blue", "green", "brown", "hazel", "grey", "gray", "dark", "light", "amber", "black", "big",
           "almond-shaped", "piercing", "bright", "deep")
SKIN_ADJ = ("fair", "pale", "dark", "light", "olive", "tan", "tanned", "brown", "black", "white", "porcelain",
            "ebony", "freckled", "smooth", "flawless", "glowing", "sun-kissed", "clear")
PERSON_ADJ = ("young", "old", "older", "elderly", "aged", "middle-aged", "teenage", "adolescent", "asian",
              "african", "african-american", "caucasian", "european", "latina", "latino", "hispanic", "indian",
              "arab", "japanese", "chinese", "korean", "nordic", "scandinavian", "mediterranean", "black",
              "white", "slim", "slender", "skinny", "thin", "muscular", "athletic", "curvy", "petite", "tall",
              "short", "chubby", "plump", "fat", "overweight", "stocky", "beautiful", "gorgeous", "pretty",
              "handsome", "attractive", "stunning", "cute", "lovely", "sexy", "bald", "bearded", "blonde",
              "blond", "brunette", "redheaded", "freckled", "fit", "elegant")
APPEARANCE_VERBS = ("change", "make", "turn", "dye", "color", "colour", "recolor", "recolour", "give", "age",
                    "de-age", "swap", "switch", "alter", "adjust", "transform", "darken", "lighten", "bleach", "cut",
                    "shorten", "lengthen", "grow", "remove", "style", "curl", "straighten", "braid", "shave",
                    "trim", "restyle", "set")
ADD_VERBS = ("add", "insert", "include", "introduce")
STYLE_NAMED = ("painting", "painted", "oil painting", "watercolor", "watercolour", "acrylic", "gouache", "anime",
               "manga", "cartoon", "cartoonish", "sketch", "drawing", "pencil", "charcoal", "pixel art",
               "illustration", "comic", "comic book", "3d render", "cgi", "claymation", "clay", "ghibli", "pixar",
               "disney", "impressionist", "impressionism", "expressionist", "cubist", "cubism", "pop art",
               "art deco", "art nouveau", "bauhaus", "ukiyo-e", "lego", "low poly", "vaporwave", "cyberpunk",
               "steampunk", "noir", "renaissance", "baroque", "surreal", "surrealist", "mosaic", "stained glass",
               "van gogh", "monet", "picasso", "ink", "line art", "lineart", "cel-shaded", "cel shaded", "vector",
               "woodcut", "linocut", "engraving", "etching", "origami", "papercut", "chibi", "sticker",
               "minimalist", "photorealistic", "realistic photo", "brushstrokes", "brush strokes", "pastel",
               "graffiti", "pointillism", "vintage", "retro", "sepia", "polaroid")
STYLE_GENERIC = ("artistic", "artsy", "arty", "stylize", "stylise", "stylized", "stylised", "art style",
                 "creative", "more art", "look like art", "different style", "another style", "new style",
                 "cool style", "nice style", "some style", "a style", "the style", "unique style", "fancy style")
STYLE_FILLER_WORDS = ("a", "an", "the", "different", "another", "new", "cool", "nice", "artistic", "some", "unique",
                      "better", "other", "same", "this", "that", "its", "his", "her", "their", "creative", "fun",
                      "interesting", "random", "any", "art", "good", "great", "fancy", "original", "hair", "my",
                      "your", "whole", "image", "photo", "picture", "in", "of", "to", "into")
LOC_PREPS = ("on", "onto", "in", "into", "at", "under", "inside", "beside", "near", "by", "in front of",
             "against", "among", "amid", "atop", "over", "underneath", "next to", "outside", "beneath", "behind",
             "through", "across", "along", "within", "to")
GENERIC_OBJECTS = ("it", "this", "that", "everything", "the image", "the photo", "the picture", "the pic",
                   "the shot", "the quality", "the result", "this image", "this photo", "this picture",
                   "the whole image", "the whole thing", "things", "the look", "the overall look", "the vibe",
                   "the aesthetic", "the overall image", "my photo", "my picture", "my image")
VAGUE_ADJ = ("better", "nicer", "nice", "good", "great", "cool", "cooler", "awesome", "amazing", "professional",
             "perfect", "prettier", "pretty", "beautiful", "more beautiful", "aesthetic", "stunning", "epic", "pop",
             "interesting", "appealing", "more appealing", "attractive", "more attractive", "fancy", "fancier",
             "high quality", "high-quality", "better looking", "good looking", "more professional", "sharper",
             "fantastic", "gorgeous", "impressive", "wow", "special", "fresh", "modern", "cleaner", "clean",
             "polished", "more polished", "hot", "sexier", "sexy", "dope", "lit", "fire")

_PERSON_NOUN = _alt(PERSON_NOUNS)
_PRODUCT = _alt(PRODUCTS)
_GARMENT = _alt(GARMENTS)
_STOP = _alt(("the", "a", "an", "to", "of", "with", "or", "on", "in", "at", "next", "from", "for", "by", "into",
              "near", "behind", "is", "are", "has", "have", "and"))
_ADJ_GAP = rf"(?:[\s,]+(?:and\s+)?(?!(?:{_STOP})\b)[\w-]+){{0,3}}?"
_PRON = r"her|him|them|his|their|its|it"

_HARD_SPLIT = re.compile(r";|\n|[.!?]+(?=\s|$)")
_LEAD_ALT = (rf"(?:{_alt(STRONG_VERBS)})(?![\w'-])"
             rf"|(?:{_alt(AMBIGUOUS_VERBS)})\s+(?:her|him|them|it|everything|(?:the|this)\s+(?:{_alt(PERSON_NOUNS)}|"
             rf"{_alt(PRODUCTS)}|image|photo|picture|scene|background|subject|sky|room|lighting|colou?rs?)\b)"
             rf"|(?:{_alt(KEEP_LEAD)})\b")
_SOFT_SPLIT = _rx(rf"(?:\s*,\s*(?:(?:and|then|but|also|plus|while|whilst)\s+)*"
                  rf"|\s+(?:(?:and|then|but|also|plus|while|whilst)\s+)+)(?={_LEAD_ALT})")
_FILLER = _rx(rf"^(?:(?:{_alt(FILLER)})\b[\s,]*)*")
_WORD = re.compile(r"[a-z][a-z'-]*")
_KEEP_LEAD = _rx(rf"^(?:{_alt(KEEP_LEAD)})\b")
_KEEP_MARK = _rx(
    r"\b(?:keep|keeps|keeping|kept|preserve|preserves|preserving|preserved|maintain|maintains|maintaining|"
    r"maintained|retain|retains|retaining|unchanged|unaltered|untouched|intact|identical|as\s+(?:it\s+)?is|"
    r"the\s+same|don'?t\s+change|do\s+not\s+change|without\s+(?:changing|altering|modifying)|leave|leaving|"
    r"(?:only)\s+(?:change|edit|modify|replace|the)|(?:change|edit|modify|replace)\s+only)\b")
_STRONG_ANY = _rx(rf"(?<![\w'-])(?<!\ba )(?<!\ban )(?<!\bthe )(?<!\bno )(?:{_alt(STRONG_VERBS)})(?![\w'-])")
_DESCRIBE = _rx(
    r"^(?:generate|create|make|draw|render|produce|imagine|depict|design|show(?:\s+me)?|give\s+me|paint)\s+"
    r"(?:me\s+)?(?:a|an)\s+(?:[\w-]+\s+){0,3}?(?:image|photo|photograph|picture|pic|portrait|illustration|shot|"
    r"render|rendering|painting|drawing|scene|headshot)\s+of\b(?!\s+(?:this|the|her|him|them|it|my)\b)")

_FEMALE = _rx(rf"\b(?:{_alt(FEMALE)})\b")
_MALE = _rx(rf"\b(?:{_alt(MALE)})\b")
_PERSON_ANY = _rx(rf"\b(?:{_alt(FEMALE + MALE + NEUTRAL_PERSON)})\b")
_PRODUCT_ANY = _rx(rf"\b(?:{_PRODUCT})\b")
_GIRLISH = _rx(r"\b(?:girl|girls)\b")
_BOYISH = _rx(r"\b(?:boy|boys)\b")

_PLACEMENT = _rx(
    rf"\b(?:put|place|move|transport|teleport|set|position|seat|drop)\s+"
    rf"(?P<obj>her|him|them|it|this\s+[\w-]+|(?:the|these|those)\s+(?:[\w-]+\s+){{0,2}}?(?:{_PERSON_NOUN}|"
    rf"{_PRODUCT}|{_alt(NEUTRAL_PERSON)}|subject|object|item))\b")
_BACKGROUND = _rx(r"\b(?:background|backdrop|backgrounds|scenery|setting|surroundings|environment|location|"
                  r"landscape)\b|\b(?:change|replace|swap|switch)\s+the\s+scene\b")
_OUTFIT = _rx(rf"\b(?:wear|wears|wearing|dressed|clothes|clothing|garment|attire|{_GARMENT})\b"
              rf"|\bdress\s+(?:her|him|them|the)\b")
_POSE = _rx(
    r"\b(?:pose|posing|poses|sit|sits|sitting|seated|stand|stands|standing|kneel|kneeling|crouch|crouching|"
    r"squat|squatting|lean|leaning|lying|lie\s+down|walk|walking|jump|jumping|dance|dancing|wave|waving|hug|"
    r"hugging|arms\s+crossed|cross(?:es|ing)?\s+(?:her|his|their)\s+arms|raise[sd]?\s+(?:her|his|their)\s+"
    r"(?:arms?|hands?)|hands?\s+on\s+(?:her|his|their)\s+hips|(?:turn|tilt|rotate)\s+(?:her|his|their|the\s+"
    r"[\w-]+'s)\s+(?:head|face|body)|look(?:s|ing)?\s+(?:at|into|toward|towards|away|over|up|down|straight)|"
    r"face\s+the\s+camera|profile\s+view)\b")
_STYLE_NAMED = _rx(rf"\b(?:{_alt(STYLE_NAMED)})\b")
_STYLE_GENERIC = _rx(rf"\b(?:{_alt(STYLE_GENERIC)})\b")
_STYLE_WORD = _rx(r"(?<!hair )(?<!hair-)\bstyles?\b")
_STYLE_X = _rx(r"\b([\w-]+)[\s-]+style\b|\bstyle\s+of\s+([\w-]+)")
# "this style", "the same style", "the style of the reference": a style that is visible, hence named
_STYLE_SHOWN = _rx(r"\b(?:this|that|same|reference|reference's)\s+(?:art\s+)?style\b|\b(?:in|to|into|match|matching|"
                   r"like|using|with)\s+the\s+style\s+of\s+(?:the|this)\s+(?:reference|image|photo|picture|painting|"
                   r"artwork)\b")
# "the woman with the red hat": a garment that picks a person out, not an outfit change
_GARMENT_SELECTOR = _rx(rf"\b(?:{_PERSON_NOUN})\s+(?:with|wearing|in)\s+the\s+(?:[\w-]+\s+){{0,2}}?(?:{_GARMENT})s?\b")
# "She is now wearing ...", BFL's own phrasing: a statement of the change, not a scene description
_NOW_STATEMENT = _rx(r"\b(?:is|are)\s+now\b|\bnow\s+(?:wears|wearing|has|holds|holding|sits|sitting|stands|"
                     r"standing|in|on|at)\b|\b(?:should|must|needs?\s+to|has\s+to|have\s+to)\s+(?:be|wear|have|"
                     r"look|stand|sit|hold|appear|get)\b")
# "She wears the navy suit from the second image", "the man holds the bottle": a subject and a present-tense
# action say what the result shows of the subject; like BFL's "She is now ...", a statement of the change.
STATEMENT_VERBS = ("wears", "wearing", "holds", "holding", "carries", "carrying", "sits", "sitting", "stands",
                   "standing", "rides", "riding", "drinks", "drinking", "eats", "eating", "reads", "reading", "plays",
                   "playing", "walks", "walking", "smiles", "smiling", "poses", "posing", "lies", "lying", "leans",
                   "leaning", "dances", "dancing", "jumps", "jumping", "waves", "waving", "hugs", "hugging", "uses",
                   "using", "sips", "sipping", "has", "gets", "looks", "looking", "kneels", "kneeling")
_SUBJECT_STATEMENT = _rx(
    rf"^(?:she|he|they|(?:the|this|that)\s+(?:[\w-]+\s+){{0,2}}?(?:{_alt(PERSON_NOUNS)}|{_alt(NEUTRAL_PERSON)}|"
    rf"{_alt(PRODUCTS)}))(?:\s+(?:from|in)\s+(?:the\s+)?(?:first|second|third|fourth|\d|other)\s+"
    rf"(?:image|photo|picture|reference)(?:\s+\d)?)?\s+(?:is\s+|are\s+)?(?:now\s+)?(?:{_alt(STATEMENT_VERBS)})\b")
_STYLE_AS = _rx(r"^as\s+(?:a|an)\s+")
_STYLE_PHRASE = _rx(r"^in\s+(?:the\s+)?(?:style|manner)\s+of\b|^in\s+(?:(?:a|an)\s+)?(?:[\w-]+\s+){0,3}?style\b")
_LIGHTING = _rx(
    r"\b(?:lights|lighting|lit|relight|relit|relighting|illuminat\w*|sunlight|moonlight|candlelight|daylight|"
    r"backlit|backlight|backlighting|rim\s+light|golden\s+hour|blue\s+hour|neon|shadows?|glow|glowing|night|"
    r"nighttime|night-time|dusk|dawn|sunset|sunrise|exposure)\b|\blight\b(?![\s-]+(?:blue|green|grey|gray|"
    r"brown|pink|red|yellow|purple|colou?red|skin|hair|eyes|wood|beige))")
_TEXT_EDIT = (
    _rx(r"\b(?:replace|change|swap|switch|update|edit|rewrite|translate)\b.*?\b(?:text|words?|title|caption|"
        r"headline|heading|lettering|letters|slogan|tagline|wording|writing|inscription)\b.*?\b(?:to|with|into)"
        r"\s+(?:say\s+|read\s+)?(?P<new>\S.*)$"),
    _rx(r"\b(?:says?|saying|reads)\s+(?P<new>\S.*)$"),
    _rx(r"\b(?:to|that|which|it|shirt|sign|banner|label|poster|mug|cover)\s+read\s+(?P<new>\S.*)$"),
    _rx(r"\b(?:write|add|put|insert)\s+(?:the\s+)?(?:text|words?|caption|title|headline|slogan|tagline)\s+"
        r"(?P<new>\S.*)$"),
    _rx(r"^write\s+(?P<new>\S.*)$"),
)
# "Replace Joy with BFL": capitalised words after "replace" are text, not things (matched on the original case)
_TEXT_CAPS = re.compile(r"\b[Rr]eplace\s+(?P<old>(?!(?:the|a|an|her|his|their|its|this|that)\b)[^\s]*[A-Z][^\s]*"
                        r"(?:\s+\S+){0,3}?)\s+with\s+(?P<new>\S.*)$")
_QUOTED = re.compile(r"\"[^\"]+\"|“[^”]+”|‘[^’]+’|(?<![\w])'[^']+'(?![\w])")
_TEXT_FROM_TO = _rx(r"\bfrom\s+(?P<old>\S.*?)\s+to\s+(?:say\s+|read\s+)?(?P<new>\S.*)$")
_TEXT_REPLACE = _rx(r"\breplace\s+(?:the\s+)?(?:text|words?|title|caption|headline|sign\s+text)?\s*"
                    r"(?P<old>\S.*?)\s+with\s+(?P<new>\S.*)$")
_TEXT_WHERE = _rx(r"\s+(?P<where>(?:on|in|at)\s+(?:the|this|her|his|its)\s+[\w-]+(?:\s+[\w-]+)?)\s*$")
_TEXT_HOST = _rx(r"\b(?:the\s+)?(?P<host>sign|banner|label|poster|shirt|t-shirt|mug|cover|book|cake|wall|"
                 r"billboard|menu|card|box|bottle|screen|storefront|door|board|can|package|logo|title|caption|"
                 r"headline)\b")

_VAGUE = (
    _rx(rf"\b(?:make|let)\s+(?:{_alt(GENERIC_OBJECTS)}|her|him|them|me|the\s+(?:{_PERSON_NOUN}))\s+"
        rf"(?:look\s+|feel\s+|seem\s+)?(?:a\s+(?:bit|little)\s+|more\s+|much\s+|way\s+|even\s+|really\s+|so\s+)*"
        rf"(?:{_alt(VAGUE_ADJ)})\b"),
    _rx(rf"\b(?:improve|enhance|fix|beautify|upgrade|polish|perfect|better|optimi[sz]e)"
        rf"(?:\s+(?:{_alt(GENERIC_OBJECTS)}))?(?:\s+up)?(?=\s*(?:$|[.,;!?]|\s+(?:please|a\s+bit|a\s+little|"
        rf"overall|somehow|for\s+me|and\b|but\b)))"),
    _rx(r"\bmake\s+it\s+pop\b|\bmore\s+(?:professional|aesthetic|appealing)\s*$"),
)
_VAGUE_PRO = _rx(r"professional|polished|clean")

_ATTRS: tuple[re.Pattern[str], ...] = (
    _rx(rf"\b(?:(?:{_alt(HAIR_ADJ)})(?:[\s-]+|,\s*)(?:and\s+)?){{1,4}}(?P<noun>hair)\b"),
    _rx(rf"\b(?:{_alt(HAIR_ADJ)})[\s-]haired\b"),
    _rx(rf"\b(?:{_alt(EYE_ADJ)})[\s-]+(?:(?P<noun>eyes)|eyed)\b"),
    _rx(rf"\b(?:{_alt(SKIN_ADJ)})[\s-]+(?:(?P<noun>skin)(?:\s+tone)?|skinned|complexion)\b"),
    _rx(r"\b(?:freckles|dimples|wrinkles|wrinkled)\b"),
    _rx(r"\b\d{1,3}[\s-]*(?:years?|yrs?)[\s-]*old\b|\bin\s+(?:her|his|their)\s+(?:early\s+|mid[\s-]?|late\s+)?"
        r"(?:teens|twenties|thirties|forties|fifties|sixties|seventies|[2-9]0s)\b"),
    _rx(rf"\b(?:{_alt(PERSON_ADJ)})\b(?={_ADJ_GAP}[\s,]+(?:{_PERSON_NOUN})\b)"),
    _rx(r"\b(?:brunettes?|redheads?)\b"),
    _rx(r"\b(?:slim|slender|athletic|muscular|curvy|petite|stocky|heavy|thin|hourglass|lean|average)\s+"
        r"(?:build|figure|body|physique)\b"),
    _rx(r"\b(?:(?:full|thick|long|short|grey|gray|white|black|brown|red|bushy|trimmed|neat)\s+)*"
        r"(?:beard|moustache|mustache|stubble|goatee)\b"),
    _rx(r"\b(?:high|sharp|defined|prominent)\s+cheekbones\b|\b(?:full|plump)\s+lips\b"),
)
# Substrings without which each _ATTRS pattern cannot match: a cheap test that skips most of them.
_ATTR_TRIGGERS: tuple[tuple[str, ...], ...] = (
    ("hair",), ("haired",), ("eye",), ("skin", "complexion"), ("freckle", "dimple", "wrinkle"),
    ("old", "teens", "ties", "0s"),
    ("man", "men", "girl", "boy", "lady", "ladies", "guy", "person", "people", "male", "teen", "child", "kid",
     "bride", "groom"),
    ("brunette", "redhead"), ("build", "figure", "body", "physique"),
    ("beard", "moustache", "mustache", "stubble", "goatee"), ("cheekbone", "lips"),
)
_APPEARANCE_TARGET = (r"(?:hair|hairstyle|haircut|eyes|eye\s+colou?r|skin|skin\s+tone|complexion|beard|moustache|"
                      r"mustache|freckles|age|older|younger|ethnicity|body|build|figure|makeup|make-up|lips|blonde|"
                      r"blond|brunette|redhead|bald|\d+[\s-]*years?[\s-]*old|\d+\s+years\s+(?:older|younger))")
_APPEARANCE_EDIT = _rx(rf"^(?:{_alt(APPEARANCE_VERBS)})\s+(?:(?:{_PRON}|him|the\s+[\w-]+(?:'s)?|a|an)\s+)?"
                       rf"(?:[\w-]+\s+){{0,3}}?{_APPEARANCE_TARGET}\b")
_DET = _rx(r"\b(a|an|the|this|that|her|his|their|my|your|our)\b")
_SINGULAR_PRONOUN = _rx(r"\b(?:she|her|hers|herself|he|him|his|himself)\b")
_QUALIFIER = _rx(
    r"\b(?:first|second|third|fourth|1st|2nd|3rd|4th|left|right|other)\s+(?:image|picture|photo|reference|ref|"
    r"one|person|woman|man|girl|boy|input)\b|\b(?:image|picture|photo|reference|ref|input)\s*#?\s*[1-4]\b|"
    rf"\b(?:{_PERSON_NOUN})\s+(?:on|to)\s+the\s+(?:left|right)\b")
_SUBJECT_NP = _rx(
    rf"^(?:(?:a|an|the|one|two)\s+)?(?:[\w'-]+[\s,]+){{0,5}}?(?P<noun>{_PERSON_NOUN}|{_PRODUCT})\b"
    rf"(?:\s+with\s+.*?(?=\s+(?:{_alt(LOC_PREPS)}|{_alt(PARTICIPLES)})\s|,|$))?")
_LEADING_PARTICIPLE = _rx(rf"^(?:[\s,]*(?:(?:{_alt(PARTICIPLES)})\b))+\s*")
_GARMENT_PHRASE = _rx(rf"\b(?:wearing|dressed\s+in|in)\s+(?P<np>(?:(?:a|an|the|her|his|their)\s+)?"
                      rf"(?:[\w-]+\s+){{0,3}}?(?:{_GARMENT})s?)\b")
_LOC_START = _rx(rf"^(?:{_alt(LOC_PREPS)})\s+\S")
_ONE_WORD_DESCRIPTOR = _rx(rf"^(?:[\w-]+ing|{_alt(PERSON_ADJ)})$")
_NOT_ATTACHED = _rx(rf"\b(?:{_alt(LOC_PREPS)}|for|of|from)\b")
_HEAD_NOUN = _rx(rf"(?:[\s,-]+[\w-]+){{0,1}}?[\s,-]+(?:{_PERSON_NOUN})\b")
_HAS_PERSON_NOUN = _rx(rf"\b(?:{_PERSON_NOUN})\b")
_DET_START = _rx(r"(?:a|an|the|some|her|his|their|its|this|that|these|those|my|your|our|she|he|they|it|\d)\b")
_WORDS = re.compile(r"\S+")
BOILERPLATE = ("cinematic", "highly detailed", "ultra detailed", "hyper detailed", "detailed", "8k", "4k", "hd",
               "uhd", "hdr", "masterpiece", "best quality", "high quality", "ultra realistic", "hyperrealistic",
               "photorealistic", "realistic", "trending on artstation", "award winning", "award-winning",
               "sharp focus", "octane render", "unreal engine", "professional photo", "professional photography",
               "stunning", "beautiful", "epic", "dramatic")
_BOILERPLATE = _rx(rf"^(?:{_alt(BOILERPLATE)})$")
_CAUSATIVE = frozenset(("give", "make", "let", "have", "help", "put", "place", "move", "dress", "seat", "relight",
                        "show", "bring", "get", "transport", "teleport", "position", "turn", "age", "de-age"))
_POSSESSED = frozenset(("hair", "eyes", "eye", "face", "skin", "head", "hands", "hand", "arms", "arm", "legs", "leg",
                        "body", "lips", "nose", "ears", "neck", "shoulders", "outfit", "clothes", "expression",
                        "pose", "makeup", "smile", "beard", "features", "facial", "hairstyle", "feet", *GARMENTS))
_OBJECT_FOLLOWERS = frozenset((
    "on", "onto", "in", "into", "at", "to", "from", "with", "by", "for", "near", "next", "beside", "behind", "under",
    "over", "and", "or", "but", "while", "as", "up", "down", "out", "off", "away", "wear", "look", "sit", "stand",
    "hold", "smile", "be", "appear", "have", "hug", "face", "pose", "walk", "seem", "a", "an", "the", "some", "like",
    "wearing", "holding", "sitting", "standing", "exactly"))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass
class CoachReport:
    """What the coach found in one prompt.

    Attributes:
        findings: problems, most severe first, each with the ``span`` of prompt text it is about.
        rewrite: one suggested rewrite of the whole prompt, or ``None`` when there is nothing to rewrite.
    """

    findings: list[Finding] = field(default_factory=list)
    rewrite: str | None = None

    @property
    def codes(self) -> set[str]:
        """The set of rule codes found."""
        return {f.code for f in self.findings}

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict.

        Returns:
            ``{"ok": bool, "findings": [Finding.as_dict(), ...], "rewrite": str | None}``; spans are lists.
        """
        findings = []
        for f in self.findings:
            data = f.as_dict()
            data["span"] = list(f.span) if f.span is not None else None
            findings.append(data)
        return {"ok": self.ok, "findings": findings, "rewrite": self.rewrite}


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    start: int
    end: int
    text: str
    low: str  # ``_low(text)``: what the patterns see
    kind: str  # change | keep | plain | describe
    lead: str | None
    body: int  # offset of the lead word inside ``text`` (after fillers)
    has_keep: bool
    cats: frozenset[str]


@dataclass(frozen=True)
class _Subject:
    kind: str  # person | people | product | unknown
    noun: str  # "the woman"
    poss: str  # "her"
    obj: str  # "her"


def _trimmed(prompt: str, start: int, end: int) -> tuple[int, int]:
    while start < end and (prompt[start].isspace() or prompt[start] in ",:"):
        start += 1
    while end > start and (prompt[end - 1].isspace() or prompt[end - 1] in ",:"):
        end -= 1
    return start, end


def _split(prompt: str) -> list[tuple[int, int]]:
    """Clause ranges: sentences, then ``, and``/``then``/``while`` joints that start a new verb clause.

    ``prompt`` must already be lowercased with ``_low``.
    """
    pieces: list[tuple[int, int]] = []
    sentences: list[tuple[int, int]] = []
    pos = 0
    for m in _HARD_SPLIT.finditer(prompt):
        sentences.append((pos, m.start()))
        pos = m.end()
    sentences.append((pos, len(prompt)))
    for s, e in sentences:
        sub = prompt[s:e]
        p = 0
        for m in _SOFT_SPLIT.finditer(sub):
            if not sub[p:m.start()].strip():
                continue
            pieces.append((s + p, s + m.start()))
            p = m.end()
        pieces.append((s + p, e))
    out = []
    for s, e in pieces:
        s, e = _trimmed(prompt, s, e)
        if e > s:
            out.append((s, e))
    return out


def _categories(text: str, original: str) -> frozenset[str]:
    """Which aspects a clause changes; ``text`` is the lowercased clause, ``original`` the same in its case."""
    cats = set()
    if _is_text_edit(text, original):
        return frozenset({"text"})
    if _PLACEMENT.search(text):
        cats.add("placement")
    if _BACKGROUND.search(text) or (_LOC_START.match(text) and not _GARMENT_PHRASE.match(text)):
        cats.add("background")
    if _OUTFIT.search(_GARMENT_SELECTOR.sub(" ", text)):
        cats.add("outfit")
    if _POSE.search(text) and not text.startswith(ADD_VERBS):  # "add a dog sitting next to her"
        cats.add("pose")
    if (_STYLE_NAMED.search(text) or _STYLE_GENERIC.search(text) or _STYLE_WORD.search(text)
            or _STYLE_AS.match(text)):
        cats.add("style")
    if _LIGHTING.search(text):
        cats.add("lighting")
    if "placement" in cats and "outfit" in cats and not _BACKGROUND.search(text):
        # "put her in a red dress": a garment, not a place
        place = _PLACEMENT.search(text)
        after = text[place.end():] if place else ""
        if _GARMENT_PHRASE.match(after.strip()):
            cats.discard("placement")
    return frozenset(cats)


def _segment(prompt: str, lowered: str, start: int, end: int) -> _Segment:
    text = prompt[start:end]
    low = lowered[start:end]
    body = _FILLER.match(low)
    i = body.end() if body else 0
    rest = low[i:]
    word_m = _WORD.match(rest)
    word = word_m.group(0) if word_m else None
    has_keep = bool(_KEEP_MARK.search(low))
    if _KEEP_LEAD.match(rest):
        kind = "keep"
    elif _DESCRIBE.match(rest):
        kind = "describe"
    elif (word is not None and (word in STRONG_VERBS or word in AMBIGUOUS_VERBS)) or _STRONG_ANY.search(low) \
            or _NOW_STATEMENT.search(low) or _SUBJECT_STATEMENT.match(rest) or _named_style_fragment(rest):
        kind = "change"
    elif has_keep:
        kind = "keep"
    else:
        kind = "plain"
    cats = _categories(rest, text[i:]) if kind in ("change", "plain") else frozenset()
    return _Segment(start, end, text, low, kind, word if kind == "change" else None, i,
                    has_keep or kind == "keep", cats)


def _named_style_fragment(rest: str) -> bool:
    """"as an oil painting", "in the style of Van Gogh": a named look for the whole picture, a complete
    instruction for an editing model (an unnamed one, "as art", is left to the style check)."""
    if not (_STYLE_AS.match(rest) or _STYLE_PHRASE.match(rest)):
        return False
    return bool(_STYLE_NAMED.search(rest) or any((x.group(1) or x.group(2) or "") not in STYLE_FILLER_WORDS
                                                 for x in _STYLE_X.finditer(rest)))


def _text_edit_match(low: str, original: str) -> re.Match[str] | None:
    """The first text-edit pattern that matches (``low`` is ``_low(original)``)."""
    for pattern in _TEXT_EDIT:
        m = pattern.search(low)
        if m:
            return m
    return _TEXT_CAPS.search(original)


def _is_text_edit(low: str, original: str) -> bool:
    lead = _FILLER.match(low)
    rest = low[lead.end() if lead else 0:]
    if rest.startswith(("remove", "delete", "erase")):
        return False
    return _text_edit_match(low, original) is not None or (
        rest.startswith(("replace", "change")) and len(_QUOTED.findall(original)) >= 1)


@dataclass
class _Context:
    prompt: str
    low: str
    references: int
    roles: list[str | None]
    segments: list[_Segment]
    subject: _Subject
    person: bool
    product: str | None
    explicit_subjects: int

    @property
    def changes(self) -> list[_Segment]:
        return [s for s in self.segments if s.kind == "change"]

    @property
    def has_preservation(self) -> bool:
        return any(s.has_keep for s in self.segments)

    @property
    def subject_reference(self) -> bool:
        """A reference may show the subject (role subject or unknown)."""
        return any(r in (None, "subject") for r in self.roles)

    @property
    def scene_reference(self) -> bool:
        """A reference may show the scene to edit (role subject, object or unknown)."""
        return any(r in (None, "subject", "object") for r in self.roles)


def _subject(prompt: str, roles: list[str | None], explicit_subjects: int) -> tuple[_Subject, bool, str | None]:
    female = bool(_FEMALE.search(prompt))
    male = bool(_MALE.search(prompt))
    person = bool(_PERSON_ANY.search(prompt)) or "subject" in roles
    product_m = _PRODUCT_ANY.search(prompt)
    product = product_m.group(0) if product_m else None
    if explicit_subjects >= 2 or (female and male):
        return _Subject("people", "each person", "each person's", "them"), True, product
    if female:
        noun = "the girl" if _GIRLISH.search(prompt) else "the woman"
        return _Subject("person", noun, "her", "her"), True, product
    if male:
        noun = "the boy" if _BOYISH.search(prompt) else "the man"
        return _Subject("person", noun, "his", "him"), True, product
    if person:
        return _Subject("person", "the person", "their", "them"), True, product
    if product or "object" in roles:
        noun = f"the {product}" if product else "the product"
        return _Subject("product", noun, "its", "it"), False, product
    return _Subject("unknown", "the main subject", "its", "it"), False, None


def _context(prompt: str, references: int, roles: list[str] | None) -> _Context:
    norm: list[str | None] = []
    for i in range(max(references, 0)):
        role = roles[i] if roles is not None and i < len(roles) else None
        norm.append(str(role).strip().lower() if role else None)
    explicit = sum(1 for r in norm if r == "subject")
    lowered = _low(prompt)
    segments = [_segment(prompt, lowered, s, e) for s, e in _split(lowered)]
    subject, person, product = _subject(lowered, norm, explicit)
    return _Context(prompt, lowered, references, norm, segments, subject, person, product, explicit)


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


def _finding(code: str, message: str, fix: str, span: tuple[int, int]) -> Finding:
    return Finding(code=code, severity=CODES[code], message=message, fix=fix, span=span)


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return f"'{text if len(text) <= limit else text[: limit - 1] + '…'}'"


@dataclass
class _Attr:
    start: int  # absolute
    end: int
    noun: str | None  # "hair" / "eyes" / "skin" to keep when the phrase is possessive


def _attribute_matches(seg: _Segment) -> list[_Attr]:
    found: list[_Attr] = []
    for pattern, triggers in zip(_ATTRS, _ATTR_TRIGGERS, strict=True):
        if not any(t in seg.low for t in triggers):
            continue
        for m in pattern.finditer(seg.low):
            noun = m.groupdict().get("noun")
            found.append(_Attr(seg.start + m.start(), seg.start + m.end(), noun))
    found.sort(key=lambda a: (a.start, -a.end))
    merged: list[_Attr] = []
    for a in found:
        if merged and a.start < merged[-1].end:
            if a.end > merged[-1].end:
                merged[-1] = _Attr(merged[-1].start, a.end, merged[-1].noun or a.noun)
            continue
        merged.append(a)
    return merged


_CLUSTER_GAP = _rx(rf"^(?:[\s,-]|\b(?:with|and|a|an|her|his|their|has|have|is|who|{_PERSON_NOUN})\b)*$")


@dataclass
class _Cluster:
    seg: _Segment
    attrs: list[_Attr]
    np_start: int  # absolute start of the noun phrase (determiner) or of the first attribute
    np_end: int  # absolute end (after the head noun when it follows)
    indefinite: bool  # "a/an" or no determiner: a description rather than a selector

    @property
    def start(self) -> int:
        return self.attrs[0].start

    @property
    def end(self) -> int:
        return max(self.attrs[-1].end, self.np_end)


def _redescriptions(ctx: _Context) -> list[_Cluster]:
    out: list[_Cluster] = []
    if ctx.references < 1 or not ctx.subject_reference:
        return out
    low = ctx.low
    for seg in ctx.segments:
        if seg.kind == "keep":
            continue
        rest = seg.low[seg.body:]
        if seg.kind == "change" and (_APPEARANCE_EDIT.match(rest) or seg.lead in ADD_VERBS):
            continue  # an explicit appearance change, or a new person being added
        attrs = _attribute_matches(seg)
        groups: list[list[_Attr]] = []
        for a in attrs:
            if groups and _CLUSTER_GAP.match(low[groups[-1][-1].end:a.start]):
                groups[-1].append(a)
            else:
                groups.append([a])
        for group in groups:
            first = group[0]
            window = max(seg.start, first.start - 60)  # a determiner further back is not this phrase's
            prefix = low[window:first.start]
            dets = list(_DET.finditer(prefix))
            det = dets[-1] if dets else None
            np_start = first.start
            det_word = None
            if det is not None:
                between = prefix[det.end():]
                if (len(between.split()) <= 4 and _CLUSTER_GAP.match(between) is not None) or (
                        len(between.split()) <= 3 and "," not in between
                        and not _NOT_ATTACHED.search(between)):
                    det_word = det.group(1)
                    np_start = window + det.start()
            if det_word in ("the", "this", "that"):
                continue  # "the woman with short black hair": a selector, as BFL recommends
            np_end = group[-1].end
            head = _HEAD_NOUN.match(low[np_end:seg.end])
            if head:
                np_end += head.end()
            out.append(_Cluster(seg, group, np_start, np_end, det_word in (None, "a", "an")))
    return out


def _span_text(prompt: str, span: tuple[int, int]) -> str:
    return prompt[span[0]:span[1]]


# --------------------------------------------------------------------------------------------------
# Rewrite helpers
# --------------------------------------------------------------------------------------------------


_CLEANUPS = (
    (re.compile(r"\s+"), " "),
    (re.compile(r"\s+([,;.])"), r"\1"),
    (re.compile(r",\s*,"), ","),
    (re.compile(r"\bwith\s+(?:and\s+)?(?=[,;.]|$)", re.IGNORECASE), ""),
    (re.compile(r"\bwith\s+and\b", re.IGNORECASE), "with"),
    (re.compile(r"\band\s+(?=[,;.]|$)", re.IGNORECASE), ""),
    (re.compile(r"\s+([,;.])"), r"\1"),
)


def _clean(text: str) -> str:
    """Tidy text after words were cut out: spaces, doubled commas, a dangling "with" or "and"."""
    for pattern, replacement in _CLEANUPS:
        text = pattern.sub(replacement, text)
    return text.strip(" ,")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _preservation(cats: set[str], subject: _Subject, named: bool) -> str:
    """A clause saying what must stay the same, for the categories that change."""
    if subject.kind in ("person", "people"):
        if "style" in cats:
            return f"keep the composition and {subject.poss} facial features, pose and expression the same"
        aspects = ["face"]
        if "pose" not in cats:
            aspects.append("pose")
        if "outfit" not in cats:
            aspects.append("outfit")
        if len(aspects) < 3:
            aspects.append("expression")
        if not cats & {"background", "placement"} and cats & {"outfit", "pose", "lighting"}:
            aspects.append("the background")
        lead = "" if named or subject.kind == "people" else f"{subject.noun}, "
        return f"keep {lead}{subject.poss} {_join(aspects)} exactly the same"
    if subject.kind == "product":
        lead = "" if named else f"{subject.noun}, "
        return f"keep {lead}{subject.poss} shape, colours and label exactly the same"
    if "text" in cats:
        return "keep the font, colours and layout exactly the same"
    if "style" in cats:
        return "keep the composition and layout the same"
    if "background" in cats:
        return "keep the main subject exactly the same, in the same position"
    return "keep the main subject and the composition exactly the same"


def _remove_attrs_from_description(prompt: str, start: int, end: int) -> str:
    text = prompt[start:end]
    seg = _Segment(start, end, text, _low(text), "plain", None, 0, False, frozenset())
    text = seg.text
    for a in reversed(_attribute_matches(seg)):
        text = text[:a.start - start] + (a.noun or "") + text[a.end - start:]
    return _clean(text)


def _stable_reference(noun: str) -> str:
    """'the woman' for woman/lady/female..., 'the man' for man/guy/male..., else 'the <noun>'."""
    if noun in ("woman", "women", "lady", "ladies", "female", "bride"):
        return "the woman"
    if noun in ("man", "men", "guy", "guys", "gentleman", "male", "groom"):
        return "the man"
    if noun in ("girl", "girls"):
        return "the girl"
    if noun in ("boy", "boys"):
        return "the boy"
    return "the person"


def _strip_participles(part: str) -> str:
    m = _LEADING_PARTICIPLE.match(_low(part))
    return (part[m.end():] if m else part).strip()


def _scene_to_edit(desc: str, subject: _Subject) -> tuple[list[str], set[str], _Subject]:
    """Turn a description of the result (or a fragment) into one or two edit instructions.

    Args:
        desc: the description, appearance attributes already removed.
        subject: the subject found in the whole prompt.

    Returns:
        The edit clauses, the aspects they change, and the subject they name.
    """
    text = _clean(desc)
    m = _DESCRIBE.match(_low(text))
    if m:
        text = text[m.end():].strip()
    low = _low(text)
    if _STYLE_AS.match(low) or low.startswith("as "):
        return [f"turn the image into {text[3:].strip()}"], {"style"}, subject
    if _STYLE_PHRASE.match(low):
        return [f"restyle the image {text}"], {"style"}, subject
    np = _SUBJECT_NP.match(low)
    subj = subject
    rest = text
    if np:
        noun = np.group("noun")
        if noun in PERSON_NOUNS:
            ref = _stable_reference(noun)
            if ref in ("the woman", "the girl"):
                subj = _Subject("person", ref, "her", "her")
            elif ref in ("the man", "the boy"):
                subj = _Subject("person", ref, "his", "him")
            else:
                subj = _Subject("person", ref, "their", "them")
        else:
            subj = _Subject("product", f"the {noun}", "its", "it")
        rest = text[np.end():]
    location = outfit = None
    extras: list[str] = []
    for part in (_strip_participles(p) for p in rest.split(",")):
        if not part or _BOILERPLATE.match(_low(part)):
            continue
        g = _GARMENT_PHRASE.search(_low(part))
        if g and outfit is None and subj.kind in ("person", "people", "unknown"):
            if subj.kind == "unknown":
                subj = _Subject("person", "the person", "their", "them")
            outfit = part[g.start("np"):g.end("np")]
            part = _strip_participles(_clean(part[:g.start()] + part[g.end():]))
            if not part:
                continue
        plow = _low(part)
        if location is None and _LOC_START.match(plow) and (np or not extras):
            location = part
        elif not _ONE_WORD_DESCRIPTOR.match(plow):
            extras.append(part)
    changes: list[str] = []
    cats: set[str] = set()
    if location:
        changes.append(f"put {subj.noun} {location}")
        cats.add("placement")
    if outfit:
        changes.append(f"dress {subj.obj if changes else subj.noun} in {outfit}")
        cats.add("outfit")
    if changes:
        if extras:
            changes[0] += ", with " + ", ".join(extras)
        return changes, cats, subj
    body = _lower_first(", ".join(([text[np.start():np.end()]] if np and not extras else []) + extras) or text)
    head = _low(body.split(",")[0])
    if _LIGHTING.search(head):
        return [f"relight the image with {body}"], {"lighting"}, subj
    if _STYLE_NAMED.search(head):
        return [f"restyle the image as {body}"], {"style"}, subj
    if not _DET_START.match(_low(body)):
        body = "a " + body
    return [f"change the scene to {body}"], {"background"}, subj


def _vague_replacement(ctx: _Context, text: str) -> tuple[str, set[str]]:
    person = ctx.subject.kind in ("person", "people")
    if _VAGUE_PRO.search(text) and person:
        return "replace the background with a plain light-grey studio backdrop with soft, even studio lighting", {
            "background", "lighting"}
    if person and (_SINGULAR_PRONOUN.search(text) or _HAS_PERSON_NOUN.search(text)):
        return f"relight {ctx.subject.noun} with soft, flattering light", {"lighting"}
    return "increase the contrast and sharpness slightly", set()


_UNNAMED_STYLE_REPLACEMENT = "transform the image into a watercolor painting with soft, visible brushstrokes"


def _strip_tail(text: str) -> str:
    return text.strip().strip(".!?;,").strip().strip("\"'“”‘’").strip()


def _quoted_text_edit(text: str) -> str:
    """``Replace "OLD" with "NEW"`` (or ``Change the text on the sign to "NEW"``) from an unquoted text edit."""
    low = _low(text)
    where_m = _TEXT_WHERE.search(low)
    where = f" {text[where_m.start('where'):where_m.end('where')]}" if where_m else ""
    end = where_m.start() if where_m else len(text)
    core, core_low = text[:end], low[:end]
    for pattern in (_TEXT_FROM_TO, _TEXT_REPLACE):
        m = pattern.search(core_low)
        if m:
            old = _strip_tail(core[m.start("old"):m.end("old")])
            new = _strip_tail(core[m.start("new"):m.end("new")])
            host = _TEXT_HOST.search(core_low[:m.start()])
            if not where and host and host.group("host") not in ("title", "caption", "headline"):
                where = f" on the {host.group('host')}"
            return f'replace "{old}" with "{new}"{where}'
    found: str | None = None
    m = _text_edit_match(core_low, core)
    if m is not None and m.groupdict().get("new"):
        found = _strip_tail(core[m.start("new"):m.end("new")])
    host = _TEXT_HOST.search(core_low)
    thing = f"the {host.group('host')}" if host else "the image"
    if found and host and host.group("host") in ("title", "caption", "headline"):
        return f'change the {host.group("host")} to "{found}"'
    if found:
        place = where or f" on {thing}"
        if re.match(r"\s*(?:write|add|put|insert)\b", core_low):
            return f'add the text "{found}"{place}'
        return f'change the text{place} to "{found}"'
    return f"replace \"OLD TEXT\" with \"NEW TEXT\" on {thing}"


def _is_possessive(text: str, start: int, end: int) -> bool:
    nxt = re.match(r"\s*([\w'-]+|[^\w\s])?", text[end:])
    word = (nxt.group(1) or "").lower() if nxt else ""
    if word in _POSSESSED:
        return True
    prev = re.search(r"([\w'-]+)\W*$", text[max(0, start - 40):start])
    if prev and prev.group(1).lower() in _CAUSATIVE:
        return False
    return bool(word) and word.isalpha() and word not in _OBJECT_FOLLOWERS


def _name_subject(text: str, subject: _Subject) -> str:
    """Replace the first pronoun that stands for the single subject with its stable reference."""
    if subject.kind != "person" or subject.noun.lower() in text.lower():
        return text
    m = _SINGULAR_PRONOUN.search(_low(text))
    if not m:
        return text
    word = m.group(0).lower()
    if word in ("his",) or (word == "her" and _is_possessive(text, m.start(), m.end())):
        rep = f"{subject.noun}'s"
    elif word in ("hers", "herself", "himself"):
        return text
    else:
        rep = subject.noun
    return text[:m.start()] + rep + text[m.end():]


def _disambiguate(text: str, order: dict[str, int]) -> str:
    ordinal = ("first", "second", "third", "fourth")

    def sub(m: re.Match[str]) -> str:
        word = m.group(0).lower()
        group = "f" if word in ("she", "her", "hers", "herself") else "m"
        n = ordinal[min(order.get(group, 0), 3)]
        if word in ("hers", "herself", "himself"):
            return f"the person from the {n} image"
        if word == "his" or (word == "her" and _is_possessive(text, m.start(), m.end())):
            return f"the {n} person's"
        return f"the person from the {n} image"

    return _ci(_SINGULAR_PRONOUN).sub(sub, text)


# --------------------------------------------------------------------------------------------------
# The coach
# --------------------------------------------------------------------------------------------------


def coach(prompt: str, references: int = 1, roles: list[str] | None = None) -> CoachReport:
    """Lint one FLUX.1 Kontext editing instruction.

    Args:
        prompt: the instruction as the user typed it.
        references: how many reference images come with it (0 means text-to-image; most rules then
            do not apply).
        roles: the role of each reference in order (``subject``, ``garment``, ``style``, ``background``,
            ``object``); missing or ``None`` entries mean unknown. Two ``subject`` roles enable the pronoun
            check; a reference list without a subject/unknown role disables the re-description check.

    Returns:
        A ``CoachReport`` with the findings (most severe first, each with the character span it is about,
        why it matters for Kontext and what to do) and one suggested rewrite, or ``None`` when the prompt
        needs none. Same input, same output.
    """
    if not prompt.strip():
        return CoachReport([_finding(
            EMPTY_PROMPT, "The prompt is empty: Kontext needs an instruction saying what to change.",
            "Write one instruction with a verb and a preservation clause, e.g. 'Change the background to a "
            "mountain landscape at sunset; keep the person, their face, pose and outfit exactly the same.'",
            (0, len(prompt)))], None)

    ctx = _context(prompt, references, roles)
    findings: list[Finding] = []
    # Rewrite plan: text substitutions in the prompt and per-segment overrides.
    subs: list[tuple[int, int, str]] = []
    overrides: dict[int, tuple[str, set[str]]] = {}
    subject = ctx.subject
    edit_capable = references >= 1 and ctx.scene_reference

    # --- re-describing the subject ---------------------------------------------------------------
    clusters = _redescriptions(ctx)
    for cl in clusters:
        words = [_quote(prompt[a.start:a.end]) for a in cl.attrs]
        fix_ref = subject.noun if subject.kind == "person" else "the person"
        findings.append(_finding(
            REDESCRIBES_SUBJECT,
            f"Re-describes the subject's appearance ({', '.join(words)}) although a reference image is given. "
            "Kontext takes identity from the reference pixels; a text description of looks competes with them "
            "and pushes the result toward a different person.",
            f"Drop the description and refer to the subject by a stable reference such as '{fix_ref}'. To change "
            "an attribute on purpose, say so with a verb (e.g. 'change her hair to red', 'make him look older').",
            (cl.start, cl.end)))
        if cl.seg.kind != "change":
            continue
        head = _HAS_PERSON_NOUN.search(ctx.low[cl.np_start:cl.np_end])
        if cl.indefinite and head:
            subs.append((cl.np_start, cl.np_end, _stable_reference(head.group(0))))
        else:
            for a in cl.attrs:
                subs.append((a.start, a.end, a.noun or ""))

    changes = ctx.changes
    plain = [s for s in ctx.segments if s.kind in ("plain", "describe")]

    # --- describing the scene / fragments without a verb -----------------------------------------
    scene_mode = False
    if edit_capable and not changes and plain:
        n_words = sum(len(s.text.split()) for s in plain)
        commas = sum(s.text.count(",") for s in plain)
        span = (plain[0].start, plain[-1].end)
        scene_mode = True
        if any(s.kind == "describe" for s in plain) or n_words >= 8 or commas >= 2:
            findings.append(_finding(
                DESCRIBES_SCENE,
                f"Describes the whole result ({_quote(_span_text(prompt, span))}) instead of the change, with no "
                "edit verb. Kontext is an editing model: a full scene description is read as 'regenerate "
                "everything', so the subject, composition and details drift.",
                "State only what should change, with a verb, and name what must stay: e.g. 'Put her on a beach "
                "at sunset; keep her face, pose and outfit exactly the same.'",
                span))
        else:
            findings.append(_finding(
                NO_EDIT_VERB,
                f"{_quote(_span_text(prompt, span))} has no edit verb. Kontext follows explicit instructions "
                "best; a bare fragment leaves it to guess what to change and what to keep.",
                "Start with a verb that says what to do ('Turn the image into an oil painting', 'Dress the "
                "person in a navy suit', 'Put the person on a beach') and say what stays the same.",
                span))

    # --- vague changes ----------------------------------------------------------------------------
    for seg in changes + plain:
        for pattern in _VAGUE:
            m = pattern.search(seg.low)
            if m:
                rep, cats = _vague_replacement(ctx, seg.low)
                findings.append(_finding(
                    VAGUE_CHANGE,
                    f"{_quote(seg.text[m.start():m.end()])} does not say what should change. Kontext edits "
                    "exactly what it is told; a vague instruction gives random, often identity-changing edits or "
                    "none at all.",
                    "Name the concrete change: what, where and how (e.g. 'brighten the shadows on her face', "
                    "'replace the background with a plain grey studio backdrop', 'increase the contrast').",
                    (seg.start + m.start(), seg.start + m.end())))
                overrides[seg.start] = (rep, cats)
                break

    # --- style edits without a named style --------------------------------------------------------
    if "style" not in ctx.roles:
        for seg in changes + plain:
            if seg.start in overrides:
                continue
            g = _STYLE_GENERIC.search(seg.low)
            named = (_STYLE_NAMED.search(seg.low) or _QUALIFIER.search(seg.low) or _STYLE_SHOWN.search(seg.low)
                     or any((x.group(1) or x.group(2) or "") not in STYLE_FILLER_WORDS
                            for x in _STYLE_X.finditer(seg.low)))
            if g is None and "style" in seg.cats and not named and seg.kind == "change":
                g = _STYLE_WORD.search(seg.low)
            if g and not named:
                findings.append(_finding(
                    UNNAMED_STYLE,
                    f"{_quote(seg.text[g.start():g.end()])} asks for a style without naming it. Kontext then "
                    "picks one at random and tends to change more than the look.",
                    "Name the style and its marks, e.g. 'oil painting with visible brushstrokes', 'watercolor "
                    "with soft washes', 'pencil sketch', 'Studio Ghibli anime'; add 'keep the composition'.",
                    (seg.start + g.start(), seg.start + g.end())))
                overrides[seg.start] = (_UNNAMED_STYLE_REPLACEMENT, {"style"})

    # --- text edits without quotes ----------------------------------------------------------------
    for seg in changes:
        if "text" in seg.cats and not _QUOTED.search(seg.text) and seg.start not in overrides:
            m = _text_edit_match(seg.low, seg.text)
            group = "new" if m is not None and m.groupdict().get("new") else None
            s0, s1 = (seg.start + m.start(group), seg.start + m.end(group)) if m is not None and group \
                else (seg.start, seg.end)
            findings.append(_finding(
                UNQUOTED_TEXT,
                f"Text edit without the words in quotes ({_quote(prompt[s0:s1])}). Kontext's text editing is "
                "most reliable when the exact old and new text are quoted; unquoted words get mixed into the "
                "instruction.",
                "Quote the text: Replace \"OLD\" with \"NEW\" (keep the same length when you can, and ask to "
                "keep the font).",
                (s0, s1)))
            overrides[seg.start] = (_quoted_text_edit(seg.text[seg.body:]), {"text"})

    # --- several changes at once ------------------------------------------------------------------
    if len(changes) > MAX_CHANGES:
        span = (changes[0].start, changes[-1].end)
        listing = "; ".join(f"edit {i + 1}: {_quote(s.text[s.body:], 40)}" for i, s in enumerate(changes))
        findings.append(_finding(
            TOO_MANY_CHANGES,
            f"{len(changes)} separate changes in one edit. Kontext handles one or two changes well; each "
            "extra change lowers how faithfully the others are done and how well the subject is kept.",
            f"Start simple: do one or two changes per edit and chain the rest on the result ({listing}).",
            span))

    # --- pronouns with several subjects -----------------------------------------------------------
    pronoun_order: dict[str, int] = {}
    if ctx.explicit_subjects >= 2 and not _QUALIFIER.search(ctx.low):
        pm = _SINGULAR_PRONOUN.search(ctx.low)
        if pm:
            for m in _SINGULAR_PRONOUN.finditer(ctx.low):
                group = "f" if m.group(0) in ("she", "her", "hers", "herself") else "m"
                pronoun_order.setdefault(group, len(pronoun_order))
            findings.append(_finding(
                AMBIGUOUS_PRONOUN,
                f"{_quote(prompt[pm.start():pm.end()])} with {ctx.explicit_subjects} subject references: Kontext "
                "cannot tell which person is meant, and may blend their faces.",
                "Name each person by image, e.g. 'the woman from the first image', 'the man from the second "
                "image'.",
                (pm.start(), pm.end())))

    # --- identity-sensitive edits with nothing kept ------------------------------------------------
    edit_segs = changes if changes else ([] if any(f.code == DESCRIBES_SCENE for f in findings) else plain)
    if edit_capable and not ctx.has_preservation:
        for seg in edit_segs:
            sensitive = [c for c in _SENSITIVE if c in seg.cats]
            if not sensitive:
                continue
            if "placement" in sensitive and not (ctx.person or ctx.product or {"subject", "object"} & set(ctx.roles)):
                place = _PLACEMENT.search(seg.low)
                obj = place.group("obj") if place else ""
                if obj in ("it",) or obj.startswith("this"):
                    sensitive.remove("placement")
            on_subject = ctx.person or ctx.product is not None or "outfit" in sensitive \
                or "object" in ctx.roles
            if sensitive and on_subject:
                what = ", ".join(sensitive)
                who = "person" if (ctx.person or "outfit" in sensitive) else "product"
                findings.append(_finding(
                    NO_PRESERVATION,
                    f"{_cap(what)} change on the {who} ({_quote(seg.text)}) with no clause saying what to keep. "
                    "Without one Kontext often re-renders the face, pose or product details along with the "
                    "change.",
                    "Add a preservation clause, e.g. 'keep the person, their face, pose and outfit exactly the "
                    "same' or 'while preserving the label and shape of the bottle'.",
                    (seg.start, seg.end)))
                break

    # --- too long for T5 --------------------------------------------------------------------------
    words_m = list(_WORDS.finditer(prompt))
    estimate = math.ceil(len(words_m) * T5_TOKENS_PER_WORD)
    if estimate > T5_MAX_TOKENS:
        cut = words_m[int(T5_MAX_TOKENS / T5_TOKENS_PER_WORD)].start()
        findings.append(_finding(
            TOO_LONG,
            f"About {estimate} tokens; the T5 text encoder reads at most {T5_MAX_TOKENS}, so the end of the "
            "prompt (from here) is silently cut.",
            "Shorten to the change and the preservation clause; Kontext does not need a scene description.",
            (cut, len(prompt))))

    findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], f.span[0] if f.span else 0, f.code))
    rewrite = _rewrite(ctx, findings, subs, overrides, scene_mode, pronoun_order)
    return CoachReport(findings, rewrite)


def _apply(prompt: str, start: int, end: int, subs: list[tuple[int, int, str]]) -> str:
    text = prompt[start:end]
    for s, e, rep in sorted((x for x in subs if start <= x[0] and x[1] <= end), key=lambda x: -x[0]):
        text = text[:s - start] + rep + text[e - start:]
    return _clean(text)


def _rewrite(ctx: _Context, findings: list[Finding], subs: list[tuple[int, int, str]],
             overrides: dict[int, tuple[str, set[str]]], scene_mode: bool, pronoun_order: dict[str, int]) -> str | None:
    """One rewrite of the whole prompt that addresses every finding (``None`` when there is nothing to fix)."""
    codes = {f.code for f in findings}
    if not codes - {TOO_LONG, EMPTY_PROMPT}:
        return None
    if codes & {VAGUE_CHANGE, UNNAMED_STYLE}:
        # Only the user knows which change or which style they mean: a rewrite would have to invent one.
        return None
    prompt = ctx.prompt
    subject = ctx.subject
    changes: list[tuple[str, set[str]]] = []
    keeps: list[str] = []
    redescribed = [f.span[0] for f in findings if f.code == REDESCRIBES_SUBJECT and f.span]

    if scene_mode:
        described = [s for s in ctx.segments if s.kind in ("plain", "describe") and s.start not in overrides]
        desc = ", ".join(_remove_attrs_from_description(prompt, s.start, s.end) for s in described)
        if desc.strip(" ,"):
            new_changes, new_cats, subject = _scene_to_edit(desc, subject)
            changes += [(c, new_cats) for c in new_changes]
            if ctx.subject.kind == "people":
                subject = ctx.subject
        changes += [overrides[s.start] for s in ctx.segments if s.start in overrides]
        keeps = [_apply(prompt, s.start, s.end, subs) for s in ctx.segments if s.kind == "keep"]
    else:
        for seg in ctx.segments:
            if seg.kind == "keep":
                keeps.append(_apply(prompt, seg.start, seg.end, subs))
            elif seg.start in overrides:
                changes.append(overrides[seg.start])
            elif seg.kind == "change":
                changes.append((_apply(prompt, seg.start + seg.body, seg.end, subs), set(seg.cats)))
            elif any(seg.start <= r < seg.end for r in redescribed):
                continue  # "She has blue eyes and freckles." says nothing the reference does not
            elif changes:
                last, last_cats = changes[-1]
                changes[-1] = (last + ", " + _lower_first(_apply(prompt, seg.start, seg.end, subs)),
                               last_cats | set(seg.cats))
    unique: list[tuple[str, set[str]]] = []
    for c in changes:
        if all(c[0].lower() != u[0].lower() for u in unique):
            unique.append(c)
    changes = unique[:MAX_CHANGES]
    if not changes:
        return None
    cats: set[str] = set()
    for _, seg_cats in changes:
        cats |= seg_cats

    text = " and ".join(_lower_first(c) for c, _ in changes)
    if pronoun_order:
        text = _disambiguate(text, pronoun_order)
        keeps = [_disambiguate(k, pronoun_order) for k in keeps]
    else:
        text = _name_subject(text, subject)
    if keeps:
        keep_text = "; ".join(_lower_first(k) for k in keeps)
    else:
        if subject.kind == "product":
            named = bool(ctx.product and ctx.product in text.lower()) or subject.noun.lower() in text.lower()
        else:
            named = bool(_PERSON_ANY.search(_low(text)))
        keep_text = _preservation(cats, subject, named)
    out = _cap(_clean(text)) + "; " + keep_text
    return out.rstrip(" .;,") + "."
