"""Prepare a dataset as array_record, e.g. on a machine with network access, to copy elsewhere::

    python -m experiments.data wmt14_translate/fr-en --data_dir DIR [--manual_dir RAW_FILES]

``tfds build`` does the same where TensorFlow is installed; this needs only our dependencies.
"""

import argparse
import sys

from experiments.data.prepare import KNOWN_BUILDERS, prepare
from experiments.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.data", description="Prepare a TFDS dataset as array_record."
    )
    parser.add_argument("name", help=f"one of {sorted(KNOWN_BUILDERS)}, with '/config' if any")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--manual_dir", default=None, help="manually downloaded raw files")
    args = parser.parse_args(argv)
    try:
        builder = prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
    except (ValueError, DataError) as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{args.name} is ready in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
