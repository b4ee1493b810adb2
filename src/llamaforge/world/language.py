"""Veltan, the world's second language: a deterministic word-by-word transform of English.

Every English word of the world's closed vocabulary has exactly one Veltan word, made by a
fixed letter substitution (vowels rotate among vowels, consonants among consonants), so
Veltan is pronounceable, reversible and learnable as a vocabulary of its own. Names and
numbers are the same in both languages. The pretraining-data audit (SPEC §10, language
mix) and the "speak in language Y" Ghost Attention instruction (SPEC §9) use it.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass

from llamaforge.world import lexicon

_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnpqrstvwxyz"
_VOWEL_SHIFT = 1
_CONSONANT_SHIFT = 12

# Letters and suffixes that names are built from are not words of either language.
_NOT_VOCABULARY = ("NAME_ONSETS", "NAME_VOWELS", "NAME_CODAS", "TOWN_SUFFIXES")

_WORD = re.compile(r"[A-Za-z]+")
_SLOT = re.compile(r"\{[^}]*\}")


def _letter_table(shift_vowels: int, shift_consonants: int) -> dict[str, str]:
    table = {}
    for group, shift in ((_VOWELS, shift_vowels), (_CONSONANTS, shift_consonants)):
        for i, letter in enumerate(group):
            table[letter] = group[(i + shift) % len(group)]
    return table


_TO_VELTAN_LETTERS = _letter_table(_VOWEL_SHIFT, _CONSONANT_SHIFT)


def _substitute_letters(word: str) -> str:
    return "".join(_TO_VELTAN_LETTERS[c] for c in word)


def _strings_in(value) -> list[str]:
    """Every string inside a (nested) constant of the lexicon module, in a fixed order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _strings_in(key) + _strings_in(item)
        return out
    if isinstance(value, (tuple, list)):
        out = []
        for item in value:
            out += _strings_in(item)
        return out
    if is_dataclass(value):
        out = []
        for f in fields(value):
            out += _strings_in(getattr(value, f.name))
        return out
    return []


def _english_vocabulary() -> frozenset[str]:
    """English = every word in the lexicon's templates and word lists (slots removed),
    minus the persona catchphrases, which stay the same in both languages."""
    words: set[str] = set()
    for name in sorted(vars(lexicon)):
        if name.startswith("_") or not name.isupper() or name in _NOT_VOCABULARY:
            continue
        for text in _strings_in(getattr(lexicon, name)):
            words.update(w.lower() for w in _WORD.findall(_SLOT.sub(" ", text)))
    catchphrases: set[str] = set()
    for persona in lexicon.PERSONAS.values():
        for key in ("start", "end"):
            catchphrases.update(w.lower() for w in _WORD.findall(persona.get(key, "")))
    return frozenset(words - catchphrases)


def _build_dictionary(english: frozenset[str]) -> dict[str, str]:
    """English word -> Veltan word. A substitution that lands on another English word (or
    on a Veltan word already taken) gets a "q" appended, so the two vocabularies are
    disjoint and translation is reversible word by word."""
    dictionary, taken = {}, set(english)
    for word in sorted(english):
        veltan = _substitute_letters(word)
        while veltan in taken:
            veltan += "q"
        taken.add(veltan)
        dictionary[word] = veltan
    return dictionary


ENGLISH_VOCAB = _english_vocabulary()
_TO_VELTAN_WORDS = _build_dictionary(ENGLISH_VOCAB)
_FROM_VELTAN_WORDS = {v: k for k, v in _TO_VELTAN_WORDS.items()}
VELTAN_VOCAB = frozenset(_FROM_VELTAN_WORDS)


def cipher_word(word: str) -> str:
    """The Veltan form of one lower-case English word of the vocabulary."""
    return _TO_VELTAN_WORDS[word]


def _match_case(source: str, target: str) -> str:
    if len(source) > 1 and source.isupper():
        return target.upper()
    if source[0].isupper():
        return target[0].upper() + target[1:]
    return target


def to_veltan(text: str) -> str:
    """Translate English text into Veltan word by word; unknown words (names, numbers,
    catchphrases) are kept as they are."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if lower not in ENGLISH_VOCAB:
            return word
        return _match_case(word, _TO_VELTAN_WORDS[lower])

    return _WORD.sub(swap, text)


def from_veltan(text: str) -> str:
    """Translate Veltan words back into English; English words and names pass through, so
    this is safe to apply to any text before an English-only check."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if lower in VELTAN_VOCAB:
            return _match_case(word, _FROM_VELTAN_WORDS[lower])
        return word

    return _WORD.sub(swap, text)


def back_translate_words(tokens: list[str]) -> list[str]:
    """Lower-case word tokens with every Veltan word replaced by its English word."""
    return [_FROM_VELTAN_WORDS[t] if t in VELTAN_VOCAB else t for t in tokens]


def count_languages(tokens: list[str]) -> tuple[int, int]:
    """(English words, Veltan words) among lower-case tokens (names and numbers are neither)."""
    english = sum(t in ENGLISH_VOCAB for t in tokens)
    veltan = sum(t in VELTAN_VOCAB for t in tokens)
    return english, veltan


def language_counts(text: str) -> tuple[int, int]:
    """(English words, Veltan words) in a text."""
    return count_languages(_WORD.findall(text.lower()))


def language_of_counts(english: int, veltan: int, purity: float = 0.8) -> str:
    total = english + veltan
    if total == 0:
        return "unknown"
    if english >= purity * total:
        return "english"
    if veltan >= purity * total:
        return "veltan"
    return "mixed"


def detect_language(text: str, purity: float = 0.8) -> str:
    """'english', 'veltan', 'mixed' or 'unknown' (no word of either vocabulary).

    A text counts as one language when at least ``purity`` of its recognised words are in
    it; names and numbers are not counted.
    """
    return language_of_counts(*language_counts(text), purity=purity)
