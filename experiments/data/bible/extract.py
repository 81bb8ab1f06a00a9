"""Regenerate ``kjv_rv1909.tsv.xz``: verse-aligned English-Spanish pairs from two SWORD modules.

The King James Version (module ``engKJV2006eb``) and the Reina-Valera 1909 (``spaRV1909eb``) are
both public domain and both packaged for Debian. Install them and the exporter, then run this
script from the repository root::

    apt-get install sword-text-kjv sword-text-sparv libsword-utils
    python -m experiments.data.bible.extract

``mod2imp`` exports each module as IMP text: a ``$$$Book C:V`` line, then that verse's OSIS
markup. Both modules use the KJV versification, so the same key names the same verse in both
and alignment is a join on the key. Markup is removed here rather than with ``mod2imp -s`` so
that what is kept (canonical psalm titles, words added by the translators) and what is dropped
(footnotes, editorial headings) is decided in this file, not by SWORD's render options.

Output: a TSV (header ``book chapter verse en es``, canonical order) compressed with xz. The
counts printed at the end are the ones quoted in README.md.
"""

import argparse
import html
import lzma
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

ENGLISH_MODULE = "engKJV2006eb"  # Debian package sword-text-kjv
SPANISH_MODULE = "spaRV1909eb"  # Debian package sword-text-sparv
OUTPUT = Path(__file__).with_name("kjv_rv1909.tsv.xz")

Key = tuple[str, int, int]  # (book, chapter, verse)

# The RV1909 is about 8% shorter than the KJV in characters (median ratio 0.92, 98% of verses
# within 0.65..1.29). A verse far outside that holds text of a neighbouring verse: where the
# Spanish numbering differs, the module stores two Spanish verses under one KJV number, and the
# pair would teach the model to hallucinate or drop content.
MAX_LOG_LENGTH_RATIO = math.log(2.0)
# Below this many characters a length ratio says nothing, so very short pairs are kept as is.
MIN_CHARS_FOR_RATIO = 20
# Chapters in which the RV1909 module's verses are shifted against the KJV for a run of
# verses (a KJV verse left empty at one end, two Spanish verses merged at the other). Inside
# the run most pairs have plausible lengths but are translations of different verses, so a
# per-pair ratio cannot catch them; the chapters are dropped whole. Found with
# `neighbour_fit_flags` below (printed at the end of a run) and confirmed by reading both sides.
SHIFTED_CHAPTERS = frozenset(
    {
        ("Numbers", 13),
        ("Numbers", 30),
        ("I Samuel", 24),
        ("I Kings", 22),
        ("I Chronicles", 21),
        ("II Chronicles", 33),
        ("Job", 39),
        ("Job", 40),
        ("Hosea", 12),
        ("Jonah", 2),
    }
)
# Flagged by `neighbour_fit_flags` only at their edges, next to the shifted Job 39-40, and
# aligned on reading.
REVIEWED_ALIGNED_CHAPTERS = frozenset({("Job", 38), ("Job", 41)})
_MEDIAN_LOG_RATIO = math.log(0.92)

_KEY = re.compile(r"^(?P<book>.+) (?P<chapter>\d+):(?P<verse>\d+)$")
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
# Editorial headings (e.g. the acrostic letters of Psalm 119 in the KJV module) are not part of
# the verse; canonical titles (the psalm superscriptions) are, and the RV1909 prints them
# inside verse 1, so keeping them keeps the two sides aligned.
_NON_CANONICAL_TITLE = re.compile(
    r"<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.DOTALL
)
# Milestones (<l/>, <lb/>, <div .../>) can stand between two words, inline elements (<w>, <q>,
# <transChange>) never do: replace the first with a space, the second with nothing.
_EMPTY_ELEMENT = re.compile(r"<[^>]*/>")
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)])")
# The RV1909 prints the first word of each chapter in capitals (a drop-cap convention: "EN el
# principio"); left as is, the tokenizer would learn a second spelling of common words.
_CAPITALIZED_WORD = re.compile(r"\b([A-ZÁÉÍÓÚÑÜ]{2,})\b")
_WORD = re.compile(r"\w+")
# Psalm 119 is an acrostic in eight-verse stanzas; the KJV module keeps the Hebrew letter names
# as headings (dropped above), the RV1909 puts them in front of the stanza's first verse.
_ACROSTIC_LETTER = re.compile(r"^[A-Z]+\.?\s+")
# The RV1909 module writes words added by the translators as <transChange> directly against the
# neighbouring <w> elements, with no space: "María<transChange>madre</transChange><w>de".
# Only an enclitic pronoun really belongs to the word before it ("sáca" + "lo" = "sácalo").
_ADDED_AFTER_WORD = re.compile(
    r"</w>(?=<transChange[^>]*>(?!(?:le|lo|la|les|los|las|me|te|se|nos|os)</))"
)
_WORD_AFTER_ADDED = re.compile(r"</transChange>(?=<w\b)")


def run_mod2imp(module: str) -> str:
    """The raw IMP export of one installed SWORD module."""
    try:
        result = subprocess.run(["mod2imp", module], capture_output=True, check=True, text=True)
    except FileNotFoundError as error:
        raise SystemExit(
            "mod2imp not found: apt-get install libsword-utils sword-text-kjv sword-text-sparv"
        ) from error
    if not result.stdout.strip():
        raise SystemExit(f"mod2imp {module} printed nothing: is the module installed?")
    return result.stdout


def parse_imp(text: str) -> Iterator[tuple[str, int, int, str]]:
    """Yield ``(book, chapter, verse, markup)`` for every verse; skip headings and intros."""
    for block in text.split("$$$")[1:]:
        key, _, body = block.partition("\n")
        match = _KEY.match(key.strip())
        if match is None:  # "[ Module Heading ]" and the like
            continue
        chapter, verse = int(match["chapter"]), int(match["verse"])
        if chapter == 0 or verse == 0:  # book and chapter introductions, not verses
            continue
        yield match["book"], chapter, verse, body


def clean_markup(markup: str) -> str:
    """OSIS verse markup -> plain text on one line."""
    text = _NOTE.sub("", markup)
    text = _NON_CANONICAL_TITLE.sub("", text)
    text = _ADDED_AFTER_WORD.sub("</w> ", text)
    text = _WORD_AFTER_ADDED.sub("</transChange> ", text)
    text = _EMPTY_ELEMENT.sub(" ", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = text.replace("¶", " ")  # the KJV's paragraph marks are layout, not text
    text = _SPACE.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def opens_section(book: str, chapter: int, verse: int) -> bool:
    """True where the RV1909 sets a drop capital: a chapter's first verse, a stanza of Ps 119."""
    return verse == 1 or (book == "Psalms" and chapter == 119 and verse % 8 == 1)


def usual_casing(texts: Iterable[str]) -> dict[str, str]:
    """Lower-cased word -> its most frequent spelling inside a verse, capitals aside.

    Tells a proper noun ('JEHOVÁ' -> 'Jehová') from a common word ('ACONTECIÓ' -> 'aconteció')
    without a word list. All-capitals spellings are not counted: they are the drop capitals
    being repaired.
    """
    spellings: Counter[str] = Counter()
    for text in texts:
        spellings.update(word for word in _WORD.findall(text)[1:] if not word.isupper())
    usual: dict[str, str] = {}
    for spelling, _ in spellings.most_common():
        usual.setdefault(spelling.lower(), spelling)
    return usual


def starts_sentence(before: str) -> bool:
    """Whether a word preceded by ``before`` starts a sentence (RV1909 capitalizes after ':')."""
    before = before.rstrip(" ¡¿(")
    return not before or before[-1] in ".!?:"


def recase_opening(text: str, usual: dict[str, str], *, strip_acrostic: bool) -> str:
    """'Y ACONTECIÓ que' -> 'Y aconteció que', 'EN el principio' -> 'En el principio'.

    Only the first all-capitals word is changed, because later ones are genuine inscriptions
    ('SANTIDAD Á JEHOVÁ', 'MENE, MENE').
    """
    if strip_acrostic:
        text = _ACROSTIC_LETTER.sub("", text)
    match = _CAPITALIZED_WORD.search(text)
    if match is None:
        return text
    word = usual.get(match[1].lower(), match[1].lower())
    if starts_sentence(text[: match.start()]):
        word = word[0].upper() + word[1:]
    return text[: match.start()] + word + text[match.end() :]


def plausible_length_ratio(english: str, spanish: str) -> bool:
    """False for pairs whose character lengths differ too much to be translations."""
    if min(len(english), len(spanish)) < MIN_CHARS_FOR_RATIO:
        return True
    return abs(math.log(len(spanish) / len(english))) <= MAX_LOG_LENGTH_RATIO


def verses(module: str) -> dict[Key, str]:
    """Clean text of every verse of a module, keyed by ``(book, chapter, verse)``."""
    return {
        (book, chapter, verse): clean_markup(markup)
        for book, chapter, verse, markup in parse_imp(run_mod2imp(module))
    }


def _log_ratio_misfit(english: str, spanish: str) -> float:
    """How far a pair's length ratio is from the corpus median, in log units."""
    return abs(math.log((len(spanish) + 10) / (len(english) + 10)) - _MEDIAN_LOG_RATIO)


def neighbour_fit_flags(
    english: dict[Key, str], spanish: dict[Key, str], *, window: int = 3, max_shift: int = 3
) -> Counter[tuple[str, int]]:
    """Per chapter, how many verses fit a shifted Spanish sequence clearly better than their own.

    A diagnostic for ``SHIFTED_CHAPTERS``: over the ``2 * window + 1`` verses around each verse,
    compare the mean length misfit at offset 0 with the best offset up to ``max_shift``. Lengths
    alone are noisy (poetry has runs of verses of similar length), which is why its verdict is
    read by a person rather than applied.
    """
    flags: Counter[tuple[str, int]] = Counter()
    books: dict[str, list[Key]] = {}
    for key in english:
        books.setdefault(key[0], []).append(key)
    shifts = [k for k in range(-max_shift, max_shift + 1) if k]
    for keys in books.values():
        n = len(keys)
        for i, key in enumerate(keys):
            around = range(max(0, i - window), min(n, i + window + 1))
            misfit = {
                k: sum(_log_ratio_misfit(english[keys[j]], spanish[keys[j + k]]) for j in inside)
                / len(inside)
                for k in [0, *shifts]
                if (inside := [j for j in around if 0 <= j + k < n])
            }
            best_shifted = min(misfit[k] for k in shifts if k in misfit)
            if misfit[0] > 0.25 and best_shifted < 0.5 * misfit[0]:
                flags[key[:2]] += 1
    return flags


def align(
    english: dict[Key, str], spanish: dict[Key, str]
) -> tuple[list[tuple[str, int, int, str, str]], dict[str, int]]:
    """Join on the verse key in English (canonical) order; return the kept rows and counts."""
    usual = usual_casing(spanish.values())
    rows: list[tuple[str, int, int, str, str]] = []
    counts = Counter(
        {"english verses": len(english), "spanish verses": len(spanish), "missing in spanish": 0}
    )
    for key, en in english.items():
        es = spanish.get(key)
        if es is None:
            counts["missing in spanish"] += 1
            continue
        if opens_section(*key):
            in_psalm_119 = key[:2] == ("Psalms", 119)
            es = recase_opening(es, usual, strip_acrostic=in_psalm_119)
        if not en or not es:
            counts["empty on one side"] += 1
        elif key[:2] in SHIFTED_CHAPTERS:
            counts["in a shifted chapter"] += 1
        elif not plausible_length_ratio(en, es):
            counts["dropped by length ratio"] += 1
        else:
            rows.append((*key, en, es))
    counts["pairs kept"] = len(rows)
    return rows, dict(counts)


def to_tsv(rows: list[tuple[str, int, int, str, str]]) -> str:
    lines = ["book\tchapter\tverse\ten\tes"]
    for book, chapter, verse, en, es in rows:
        if "\t" in en + es or "\n" in en + es:
            raise ValueError(f"{book} {chapter}:{verse} still contains a tab or newline")
        lines.append(f"{book}\t{chapter}\t{verse}\t{en}\t{es}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the .tsv.xz")
    args = parser.parse_args(argv)
    english, spanish = verses(ENGLISH_MODULE), verses(SPANISH_MODULE)
    rows, counts = align(english, spanish)
    # preset 9 with the extreme flag: the file ships in the repository, so bytes matter more than
    # the second it costs; xz output is deterministic, so a regeneration diffs cleanly.
    args.output.write_bytes(lzma.compress(to_tsv(rows).encode(), preset=9 | lzma.PRESET_EXTREME))
    for name, count in counts.items():
        print(f"{name}: {count}")
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
    suspects = {
        chapter: count
        for chapter, count in neighbour_fit_flags(english, spanish).items()
        if count >= 3 and chapter not in SHIFTED_CHAPTERS | REVIEWED_ALIGNED_CHAPTERS
    }
    if suspects:
        print(f"review these chapters for shifted verses (SHIFTED_CHAPTERS): {suspects}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
