"""Seeded generator of varied English sentences for the synthesized demo corpus.

A few hundred words (chosen to cover the English phoneme inventory: th/dh, sh/zh, ch/j, ng, r/l, every
vowel and diphthong) are combined by a few dozen templates into declaratives, questions, imperatives and
compound sentences. Everything is driven by a `numpy.random.Generator`, so the same seed gives the same
sentences. The text uses letters, spaces, commas, full stops and question marks only, which every
synthesizer front end (espeak-ng, flite, festival, pico) reads without escaping.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

NAMES = [
    "Anna", "Bob", "Charlotte", "David", "Eva", "George", "Hannah", "Ivan", "Julia", "Kevin", "Laura",
    "Martin", "Nora", "Oscar", "Paula", "Roger", "Sophie", "Thomas", "Ursula", "Victor", "Wendy",
    "Zachary", "Joseph", "Rachel", "Simon", "Theresa", "Walter", "Yvonne", "Harold", "Judith", "Gregory",
    "Margaret", "Arthur", "Beatrice", "Felix", "Agatha", "Dorothy", "Leonard", "Miriam", "Patrick",
]

# (singular, plural)
NOUNS = [
    ("apple", "apples"), ("basket", "baskets"), ("bicycle", "bicycles"), ("blanket", "blankets"),
    ("book", "books"), ("bottle", "bottles"), ("bridge", "bridges"), ("brush", "brushes"),
    ("bucket", "buckets"), ("cabinet", "cabinets"), ("camera", "cameras"), ("candle", "candles"),
    ("carpet", "carpets"), ("castle", "castles"), ("chair", "chairs"), ("cheese", "cheeses"),
    ("chimney", "chimneys"), ("clock", "clocks"), ("coat", "coats"), ("cushion", "cushions"),
    ("dolphin", "dolphins"), ("drawer", "drawers"), ("engine", "engines"), ("envelope", "envelopes"),
    ("feather", "feathers"), ("fence", "fences"), ("fisherman", "fishermen"), ("flower", "flowers"),
    ("garage", "garages"), ("garden", "gardens"), ("giraffe", "giraffes"), ("glove", "gloves"),
    ("guitar", "guitars"), ("hammer", "hammers"), ("helmet", "helmets"), ("horse", "horses"),
    ("island", "islands"), ("jacket", "jackets"), ("jewel", "jewels"), ("kettle", "kettles"),
    ("kitten", "kittens"), ("ladder", "ladders"), ("lamp", "lamps"), ("lemon", "lemons"),
    ("letter", "letters"), ("machine", "machines"), ("map", "maps"), ("measure", "measures"),
    ("mirror", "mirrors"), ("monkey", "monkeys"), ("mountain", "mountains"), ("needle", "needles"),
    ("notebook", "notebooks"), ("orange", "oranges"), ("oyster", "oysters"), ("package", "packages"),
    ("painting", "paintings"), ("pencil", "pencils"), ("piano", "pianos"), ("pillow", "pillows"),
    ("pocket", "pockets"), ("potato", "potatoes"), ("puzzle", "puzzles"), ("rabbit", "rabbits"),
    ("radio", "radios"), ("ribbon", "ribbons"), ("rocket", "rockets"), ("sandwich", "sandwiches"),
    ("saucer", "saucers"), ("scarf", "scarves"), ("shadow", "shadows"), ("sheep", "sheep"),
    ("shovel", "shovels"), ("sister", "sisters"), ("spoon", "spoons"), ("statue", "statues"),
    ("stone", "stones"), ("suitcase", "suitcases"), ("sweater", "sweaters"), ("table", "tables"),
    ("teacher", "teachers"), ("thistle", "thistles"), ("thread", "threads"), ("ticket", "tickets"),
    ("tiger", "tigers"), ("tomato", "tomatoes"), ("towel", "towels"), ("treasure", "treasures"),
    ("trumpet", "trumpets"), ("tunnel", "tunnels"), ("umbrella", "umbrellas"), ("valley", "valleys"),
    ("vase", "vases"), ("violin", "violins"), ("wagon", "wagons"), ("wallet", "wallets"),
    ("whistle", "whistles"), ("window", "windows"), ("wizard", "wizards"), ("yacht", "yachts"),
    ("zebra", "zebras"), ("ostrich", "ostriches"), ("journey", "journeys"), ("voyage", "voyages"),
]

ADJECTIVES = [
    "ancient", "big", "bright", "broken", "brown", "careful", "cheerful", "clever", "cold", "curious",
    "damp", "dark", "dusty", "early", "empty", "enormous", "fancy", "fragile", "frozen", "gentle",
    "golden", "green", "heavy", "hollow", "huge", "jolly", "late", "lazy", "little", "loud", "lovely",
    "muddy", "narrow", "noisy", "odd", "orange", "pale", "polished", "purple", "quiet", "rough",
    "round", "rusty", "shiny", "silver", "smooth", "soft", "strange", "sturdy", "tiny", "unusual",
    "velvet", "warm", "wet", "wooden", "yellow", "thick", "thin", "shallow", "juicy",
]

# (base, past)
VERBS_T = [
    ("carry", "carried"), ("paint", "painted"), ("notice", "noticed"), ("borrow", "borrowed"),
    ("wash", "washed"), ("polish", "polished"), ("measure", "measured"), ("fetch", "fetched"),
    ("hide", "hid"), ("find", "found"), ("catch", "caught"), ("throw", "threw"), ("bring", "brought"),
    ("choose", "chose"), ("push", "pushed"), ("pull", "pulled"), ("lift", "lifted"), ("drop", "dropped"),
    ("mend", "mended"), ("open", "opened"), ("close", "closed"), ("fill", "filled"), ("empty", "emptied"),
    ("sell", "sold"), ("buy", "bought"), ("give away", "gave away"), ("examine", "examined"),
    ("deliver", "delivered"), ("pack", "packed"), ("weigh", "weighed"), ("sketch", "sketched"),
    ("guard", "guarded"), ("admire", "admired"), ("collect", "collected"), ("drag", "dragged"),
    ("juggle", "juggled"), ("squeeze", "squeezed"), ("shake", "shook"), ("touch", "touched"),
    ("thank", "thanked"),
]

VERBS_I = [
    ("laugh", "laughed"), ("whisper", "whispered"), ("wait", "waited"), ("sing", "sang"),
    ("dance", "danced"), ("shout", "shouted"), ("sleep", "slept"), ("cough", "coughed"),
    ("sneeze", "sneezed"), ("smile", "smiled"), ("wander", "wandered"), ("hurry", "hurried"),
    ("stumble", "stumbled"), ("giggle", "giggled"), ("rest", "rested"), ("travel", "travelled"),
    ("jump", "jumped"), ("shiver", "shivered"), ("yawn", "yawned"), ("argue", "argued"),
]

ADVERBS = [
    "quickly", "slowly", "quietly", "loudly", "carefully", "happily", "suddenly", "gently", "proudly",
    "nervously", "eagerly", "patiently", "rather clumsily", "very calmly", "almost silently",
    "without a word", "with great care", "once again", "at last", "in a hurry",
]

PLACES = [
    "the harbour", "the kitchen", "the garden", "the station", "the library", "the market",
    "the village square", "the old church", "the museum", "the bakery", "the farmhouse", "the attic",
    "the cellar", "the beach", "the forest", "the hospital", "the school yard", "the theatre",
    "the bus stop", "the shop on the corner", "the bathroom", "the hallway", "the playground",
    "the lighthouse", "the orchard", "the workshop", "the zoo", "the museum garden", "the treasury",
    "the riverbank",
]

PREPS = ["near", "behind", "inside", "under", "beside", "outside", "across", "above", "around", "through"]

TIMES = [
    "yesterday", "this morning", "last night", "on Monday", "on Thursday", "at noon", "after lunch",
    "before dinner", "in the evening", "every Sunday", "last winter", "in June", "at midnight",
    "early on Friday", "after the storm", "during the holidays", "the day before yesterday",
    "on a Wednesday afternoon", "in the autumn", "at half past seven",
]

NUMBERS = [
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fifteen", "twenty", "thirty", "forty", "a hundred", "several", "a dozen", "many",
]

CONNECTIVES = ["because", "while", "although", "but", "so", "and then", "after", "before", "until", "since"]

OPENERS = [
    "Apparently", "Of course", "Luckily", "To our surprise", "Strangely enough", "In the end",
    "Meanwhile", "However", "Sadly", "Without doubt", "Just then", "Naturally",
]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class SentenceGenerator:
    """Draw sentences from templates; `sentence(rng, min_words, max_words)` and `unique_sentences(...)`."""

    def __init__(self) -> None:
        self.templates: list[Callable[[np.random.Generator], str]] = [
            self._t_svo_place, self._t_svo_time, self._t_intransitive, self._t_question_did,
            self._t_question_where, self._t_imperative, self._t_there_were, self._t_compound,
            self._t_opener, self._t_description, self._t_name_gave, self._t_why, self._t_numbers,
            self._t_could, self._t_when_clause, self._t_said,
        ]

    # ---- slot fillers --------------------------------------------------------------------------
    @staticmethod
    def _pick(rng: np.random.Generator, seq):
        return seq[int(rng.integers(len(seq)))]

    def _np(self, rng, plural=None, adj_prob=0.6) -> str:
        """A noun phrase: determiner, optional adjective, noun."""
        sing, plur = self._pick(rng, NOUNS)
        plural = bool(rng.random() < 0.3) if plural is None else plural
        adj = self._pick(rng, ADJECTIVES) if rng.random() < adj_prob else None
        noun = plur if plural else sing
        head = f"{adj} {noun}" if adj else noun
        if plural:
            det = self._pick(rng, ["the", "some", "those", "her", "his", "our", "their", "all the"])
            return f"{det} {head}"
        det = self._pick(rng, ["the", "a", "that", "her", "his", "my", "our", "this"])
        return _a(head) if det == "a" else f"{det} {head}"

    def _pp(self, rng) -> str:
        return f"{self._pick(rng, PREPS)} {self._pick(rng, PLACES)}"

    def _name(self, rng) -> str:
        return self._pick(rng, NAMES)

    def _subj(self, rng) -> str:
        r = rng.random()
        if r < 0.45:
            return self._name(rng)
        if r < 0.6:
            return self._pick(rng, ["She", "He", "We", "They", "I", "Our neighbour", "The old farmer"])
        np_ = self._np(rng, adj_prob=0.5)
        return np_[0].upper() + np_[1:]

    # ---- templates -----------------------------------------------------------------------------
    def _t_svo_place(self, rng):
        return f"{self._subj(rng)} {self._pick(rng, VERBS_T)[1]} {self._np(rng)} {self._pp(rng)}."

    def _t_svo_time(self, rng):
        return f"{self._subj(rng)} {self._pick(rng, VERBS_T)[1]} {self._np(rng)} {self._pick(rng, TIMES)}."

    def _t_intransitive(self, rng):
        return (f"{self._subj(rng)} {self._pick(rng, VERBS_I)[1]} {self._pick(rng, ADVERBS)} "
                f"{self._pp(rng)}.")

    def _t_question_did(self, rng):
        return f"Did {self._name(rng)} {self._pick(rng, VERBS_T)[0]} {self._np(rng)} {self._pick(rng, TIMES)}?"

    def _t_question_where(self, rng):
        w = self._pick(rng, ["Where", "Why", "When", "How"])
        return f"{w} did {self._name(rng)} {self._pick(rng, VERBS_T)[0]} {self._np(rng)}?"

    def _t_imperative(self, rng):
        v1 = self._pick(rng, VERBS_T)[0]
        v2 = self._pick(rng, VERBS_T)[0]
        pre = self._pick(rng, ["Please", "Now", "Quickly", "Carefully", ""])
        s = f"{v1} {self._np(rng, adj_prob=0.8)} and {v2} it {self._pp(rng)}."
        s = f"{pre} {s}" if pre else s
        return s[0].upper() + s[1:]

    def _t_there_were(self, rng):
        sing, plur = self._pick(rng, NOUNS)
        return f"There were {self._pick(rng, NUMBERS)} {self._pick(rng, ADJECTIVES)} {plur} {self._pp(rng)}."

    def _t_compound(self, rng):
        a = f"{self._subj(rng)} {self._pick(rng, VERBS_T)[1]} {self._np(rng)}"
        b = f"{self._name(rng)} {self._pick(rng, VERBS_I)[1]}"
        return f"{a} {self._pick(rng, CONNECTIVES)} {b} {self._pick(rng, ADVERBS)}."

    def _t_opener(self, rng):
        return (f"{self._pick(rng, OPENERS)}, {self._name(rng)} {self._pick(rng, VERBS_T)[1]} "
                f"{self._np(rng)} {self._pick(rng, TIMES)}.")

    def _t_description(self, rng):
        sing, _ = self._pick(rng, NOUNS)
        a1, a2 = self._pick(rng, ADJECTIVES), self._pick(rng, ADJECTIVES)
        return f"The {sing} {self._pp(rng)} was {a1} and rather {a2}."

    def _t_name_gave(self, rng):
        return (f"{self._name(rng)} gave {self._name(rng)} {self._np(rng, adj_prob=0.9)} "
                f"{self._pick(rng, TIMES)}.")

    def _t_why(self, rng):
        return f"Why is {self._np(rng, plural=False)} always {self._pp(rng)}?"

    def _t_numbers(self, rng):
        return (f"{self._name(rng)} counted {self._pick(rng, NUMBERS)} {self._pick(rng, NOUNS)[1]} "
                f"and {self._pick(rng, NUMBERS)} {self._pick(rng, NOUNS)[1]} {self._pp(rng)}.")

    def _t_could(self, rng):
        m = self._pick(rng, ["could", "should", "would", "might", "must"])
        return f"{self._subj(rng)} {m} {self._pick(rng, VERBS_T)[0]} {self._np(rng)} {self._pick(rng, ADVERBS)}."

    def _t_when_clause(self, rng):
        return (f"When {self._name(rng)} {self._pick(rng, VERBS_I)[1]}, {self._name(rng)} "
                f"{self._pick(rng, VERBS_T)[1]} {self._np(rng)}.")

    def _t_said(self, rng):
        return (f"{self._name(rng)} said that {self._np(rng)} {self._pp(rng)} was "
                f"{self._pick(rng, ADJECTIVES)}.")

    # ---- public --------------------------------------------------------------------------------
    def _extend(self, rng, s: str) -> str:
        """Make a sentence longer by one clause or phrase."""
        body, end = s[:-1], s[-1]
        r = rng.random()
        if r < 0.35:
            return f"{body} {self._pick(rng, TIMES)}{end}"
        if r < 0.7:
            return f"{body}, {self._pick(rng, CONNECTIVES)} {self._name(rng)} {self._pick(rng, VERBS_I)[1]}{end}"
        return f"{body} {self._pp(rng)}{end}"

    def sentence(self, rng: np.random.Generator, min_words: int = 6, max_words: int = 14) -> str:
        """One sentence with `min_words`..`max_words` words (best effort after 50 draws)."""
        if min_words > max_words:
            raise ValueError(f"min_words {min_words} > max_words {max_words}")
        best = None
        centre = (min_words + max_words) / 2
        for _ in range(50):
            s = self._pick(rng, self.templates)(rng)
            while word_count(s) < min_words and word_count(s) < max_words:
                s = self._extend(rng, s)
            n = word_count(s)
            if min_words <= n <= max_words:
                return _clean(s)
            if best is None or abs(n - centre) < abs(word_count(best) - centre):
                best = s
        return _clean(best)

    def unique_sentences(self, rng: np.random.Generator, n: int, min_words: int, max_words: int,
                         seen: set[str]) -> list[str]:
        """`n` sentences not in `seen` (which is updated)."""
        out = []
        tries = 0
        while len(out) < n:
            s = self.sentence(rng, min_words, max_words)
            tries += 1
            if s.lower() in seen:
                if tries > 1000 * (n + 1):
                    raise RuntimeError("sentence generator exhausted; widen the word range")
                continue
            seen.add(s.lower())
            out.append(s)
        return out


_ALLOWED = re.compile(r"^[A-Za-z ,.?]+$")


def _clean(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    s = s[0].upper() + s[1:]
    if not _ALLOWED.match(s):
        raise ValueError(f"generated text has unexpected characters: {s!r}")
    return s


def word_count(s: str) -> int:
    return len(s.split())


def generate_sentences(seed: int, n: int, min_words: int = 6, max_words: int = 14) -> list[str]:
    """`n` distinct sentences from `seed` (convenience wrapper)."""
    return SentenceGenerator().unique_sentences(np.random.default_rng(seed), n, min_words, max_words, set())


def vocabulary() -> set[str]:
    """Every word the generator can emit (lower case)."""
    words: set[str] = set()
    groups = [NAMES, ADJECTIVES, ADVERBS, PLACES, PREPS, TIMES, NUMBERS, CONNECTIVES, OPENERS,
              [w for pair in NOUNS for w in pair], [w for pair in VERBS_T + VERBS_I for w in pair]]
    for g in groups:
        for phrase in g:
            words.update(phrase.lower().replace(",", "").split())
    return words
