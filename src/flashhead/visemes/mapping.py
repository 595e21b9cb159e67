"""Visemes: mouth shapes, and the maps from phoneme symbols (espeak, ARPAbet, letters) to them.

A viseme is a target for the mouth columns of FrameFeatures plus a dominance (how strongly it
resists co-articulation: lip closures and lip-teeth contacts must be reached, /h/ and schwa
borrow their shape from the neighbours).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

PHONEME_SETS = ("espeak", "arpabet", "letters")


@dataclass(frozen=True)
class Viseme:
    name: str
    open: float      # 0..1 jaw/lip opening
    spread: float    # -1 rounded .. +1 wide
    round: float     # 0..1 protrusion
    closure: float   # 0..1 lips pressed (bilabials)
    teeth: float     # 0..1 lower lip to upper teeth / teeth showing
    dominance: float  # weight in co-articulation blending


_TABLE = (
    #      name  open spread round clos teeth dominance
    Viseme("sil", 0.00, 0.00, 0.00, 0.0, 0.00, 0.3),   # silence, mouth closed at rest
    Viseme("PP", 0.00, 0.00, 0.00, 1.0, 0.00, 2.0),    # m b p: lips sealed
    Viseme("FF", 0.08, 0.10, 0.00, 0.0, 1.00, 1.5),    # f v: lower lip to upper teeth
    Viseme("TH", 0.22, 0.10, 0.00, 0.0, 0.70, 1.2),    # th: tongue between teeth
    Viseme("DD", 0.25, 0.15, 0.00, 0.0, 0.35, 0.8),    # t d n l: tongue tip at ridge
    Viseme("SS", 0.12, 0.45, 0.00, 0.0, 0.60, 1.4),    # s z: teeth close together, spread
    Viseme("SH", 0.18, -0.35, 0.55, 0.0, 0.40, 1.4),   # sh ch j zh: protruded lips
    Viseme("KK", 0.30, 0.10, 0.00, 0.0, 0.15, 0.7),    # k g ng: tongue back
    Viseme("RR", 0.22, -0.25, 0.45, 0.0, 0.10, 1.0),   # r: slight rounding
    Viseme("WW", 0.12, -0.85, 0.95, 0.0, 0.00, 1.6),   # w, oo: tight rounding
    Viseme("OO", 0.50, -0.55, 0.70, 0.0, 0.00, 1.2),   # o, aw: open rounded
    Viseme("AA", 0.95, 0.15, 0.00, 0.0, 0.20, 1.0),    # a, ah: wide open jaw
    Viseme("EH", 0.55, 0.45, 0.00, 0.0, 0.30, 1.0),    # e, ae: mid open, spread
    Viseme("EE", 0.22, 0.90, 0.00, 0.0, 0.45, 1.2),    # i, ee, y: spread lips
    Viseme("AH", 0.40, 0.05, 0.00, 0.0, 0.15, 0.6),    # schwa, uh: relaxed
    Viseme("HH", 0.35, 0.00, 0.00, 0.0, 0.10, 0.2),    # h: shaped by the next vowel
)
VISEMES: dict[str, Viseme] = {v.name: v for v in _TABLE}
SILENCE = VISEMES["sil"]

# espeak-ng English phoneme mnemonics (stress marks removed). Diphthongs glide between two visemes.
ESPEAK: dict[str, tuple[str, ...]] = {
    "_": ("sil",), "_:": ("sil",), "_!": ("sil",), "||": ("sil",), "|": ("sil",),
    "p": ("PP",), "b": ("PP",), "m": ("PP",),
    "f": ("FF",), "v": ("FF",),
    "T": ("TH",), "D": ("TH",),
    "t": ("DD",), "d": ("DD",), "n": ("DD",), "l": ("DD",), "t#": ("DD",), "?": ("DD",),
    "s": ("SS",), "z": ("SS",),
    "S": ("SH",), "Z": ("SH",), "tS": ("SH",), "dZ": ("SH",),
    "k": ("KK",), "g": ("KK",), "N": ("KK",), "x": ("KK",),
    "r": ("RR",), "w": ("WW",), "j": ("EE",), "h": ("HH",),
    "a": ("AA",), "A:": ("AA",), "A": ("AA",), "aa": ("AA",), "A@": ("AA", "AH"), "V": ("AH",),
    "0": ("OO",), "O": ("OO",), "O:": ("OO",), "O@": ("OO", "AH"), "o@": ("OO", "AH"),
    "o": ("OO",), "oU": ("OO", "WW"), "OI": ("OO", "EE"),
    "u:": ("WW",), "U": ("WW",), "u": ("WW",), "U@": ("WW", "AH"),
    "i:": ("EE",), "i": ("EE",), "I": ("EE",), "I@": ("EE", "AH"), "i@": ("EE", "AH"),
    "E": ("EH",), "e": ("EH",), "eI": ("EH", "EE"), "e@": ("EH", "AH"),
    "aI": ("AA", "EE"), "aU": ("AA", "WW"), "aI@": ("AA", "EE", "AH"), "aU@": ("AA", "WW", "AH"),
    "@": ("AH",), "3:": ("RR",), "3": ("AH",), "@L": ("AH", "DD"), "@r": ("AH", "RR"),
    "a#": ("AH",), "I#": ("EE",),
}

ARPABET: dict[str, tuple[str, ...]] = {
    "SIL": ("sil",), "SP": ("sil",), "+NSN+": ("sil",), "+SPN+": ("sil",), "+BREATH+": ("sil",),
    "P": ("PP",), "B": ("PP",), "M": ("PP",), "F": ("FF",), "V": ("FF",),
    "TH": ("TH",), "DH": ("TH",), "T": ("DD",), "D": ("DD",), "N": ("DD",), "L": ("DD",),
    "DX": ("DD",), "S": ("SS",), "Z": ("SS",), "SH": ("SH",), "ZH": ("SH",), "CH": ("SH",),
    "JH": ("SH",), "K": ("KK",), "G": ("KK",), "NG": ("KK",), "R": ("RR",), "ER": ("RR",),
    "W": ("WW",), "Y": ("EE",), "HH": ("HH",),
    "AA": ("AA",), "AE": ("EH",), "AH": ("AH",), "AO": ("OO",), "AW": ("AA", "WW"),
    "AY": ("AA", "EE"), "EH": ("EH",), "EY": ("EH", "EE"), "IH": ("EE",), "IY": ("EE",),
    "OW": ("OO", "WW"), "OY": ("OO", "EE"), "UH": ("WW",), "UW": ("WW",),
}

# Plain letters (ElevenLabs character alignment). Digraphs are matched first.
LETTERS: dict[str, tuple[str, ...]] = {
    "th": ("TH",), "sh": ("SH",), "ch": ("SH",), "ph": ("FF",), "ng": ("KK",), "ck": ("KK",),
    "oo": ("WW",), "ee": ("EE",), "ea": ("EE",), "ou": ("AA", "WW"), "ow": ("OO", "WW"),
    "oi": ("OO", "EE"), "oy": ("OO", "EE"), "ai": ("EH", "EE"), "ay": ("EH", "EE"),
    "qu": ("KK", "WW"), "wh": ("WW",),
    "a": ("AA",), "b": ("PP",), "c": ("KK",), "d": ("DD",), "e": ("EH",), "f": ("FF",),
    "g": ("KK",), "h": ("HH",), "i": ("EE",), "j": ("SH",), "k": ("KK",), "l": ("DD",),
    "m": ("PP",), "n": ("DD",), "o": ("OO",), "p": ("PP",), "q": ("KK",), "r": ("RR",),
    "s": ("SS",), "t": ("DD",), "u": ("WW",), "v": ("FF",), "w": ("WW",), "x": ("KK", "SS"),
    "y": ("EE",), "z": ("SS",),
}
LETTER_DIGRAPHS = frozenset(k for k in LETTERS if len(k) == 2)

_ESPEAK_STRESS = re.compile(r"['\",%=]")
_ESPEAK_VOWEL = re.compile(r"[aeiouAEIOUV@3]")


def _espeak(symbol: str) -> tuple[str, ...]:
    s = _ESPEAK_STRESS.sub("", symbol)
    if s in ESPEAK:
        return ESPEAK[s]
    for cut in (s.rstrip("0123456789#-/;"), s[:2], s[:1]):   # variants: "@2", "r-", "l/", "a#"
        if cut and cut in ESPEAK:
            return ESPEAK[cut]
    return ("AH",) if _ESPEAK_VOWEL.search(s) else ("DD",)


def _arpabet(symbol: str) -> tuple[str, ...]:
    s = symbol.upper().rstrip("012")
    return ARPABET.get(s, ("sil",) if s.startswith("+") or not s else ("AH",))


def _letters(symbol: str) -> tuple[str, ...]:
    s = symbol.lower()
    if s in LETTERS:
        return LETTERS[s]
    if s[:1].isalpha():                     # other scripts: a letter we cannot read -> vowel-ish
        return ("AH",)
    return ("sil",)                         # spaces, punctuation


def visemes_for(symbol: str, phoneme_set: str = "espeak") -> tuple[Viseme, ...]:
    """The viseme sequence for one phoneme symbol (diphthongs give two or three)."""
    if phoneme_set == "espeak":
        names = _espeak(symbol)
    elif phoneme_set == "arpabet":
        names = _arpabet(symbol)
    elif phoneme_set == "letters":
        names = _letters(symbol)
    else:
        raise ValueError(f"unknown phoneme set {phoneme_set!r}; one of {PHONEME_SETS}")
    return tuple(VISEMES[n] for n in names)


def letter_units(chars: list[str]) -> list[tuple[int, int, str]]:
    """Group characters into (first, end, symbol): known digraphs pair up, others stand alone.

    Accented letters fold to their base letter ("é" -> "e").
    """
    text = "".join(c[:1] or " " for c in chars)
    folded = "".join(unicodedata.normalize("NFKD", ch)[:1].lower() for ch in text)
    spans, i = [], 0
    while i < len(folded):
        step = 2 if folded[i:i + 2] in LETTER_DIGRAPHS else 1
        spans.append((i, i + step, folded[i:i + step]))
        i += step
    return spans
