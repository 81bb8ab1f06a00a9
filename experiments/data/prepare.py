"""Make a TFDS dataset readable as ``array_record``, or fail within seconds saying how.

TFDS alone, asked for a dataset that is not prepared on a machine without network, retries its
downloads for minutes and then fails with a message about sockets. ``prepare`` checks first:
a dataset that is prepared is used as is; one that builds from files shipped with the project
is built; one that must be downloaded is downloaded only after a quick check that its host
answers, and otherwise a ``DatasetNotPreparedError`` says how to prepare it elsewhere.

Two kinds of dataset cannot be built from a download here: one whose raw files only a user
can supply (``manual``: Flickr8k, whose licence forbids redistribution) is built from
``manual_dir``, or a ``DatasetNotPreparedError`` says which files to put where; one whose TFDS
builder imports TensorFlow even to describe the dataset (``needs_tensorflow``: COCO) is, when
TensorFlow is absent, read from the files of a copy prepared elsewhere, or the error says how
to prepare it there.

A ``manual_dir`` that does not exist is an error at once. It spares the network only when it
holds every file the builder would download (``BuilderSource.manual_files``); otherwise the
download host is probed as without one. Only a host that answers is downloaded from, so no
command waits on an absent network for longer than the probe (3 s).

A prepared copy is checked when it is opened (``open_split``): its metadata must parse and every
one of its array_record files must open and yield its first record, so a truncated, emptied or
missing file, or a damaged ``dataset_info.json``, is a ``DataError`` that names the data set,
the file and the command that rebuilds it, rather than a parse error or a crash mid-run. A
corrupt record found later while reading says the same.

The command for a connected machine is ``python -m experiments.data NAME --data_dir DIR``
(``__main__.py``; ``tfds build`` needs TensorFlow, this does not).
"""

import bisect
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from google.protobuf import json_format

from experiments.data import text_builders
from experiments.errors import DataError

FILE_FORMAT = tfds.core.file_adapters.FileFormat.ARRAY_RECORD


@dataclasses.dataclass(frozen=True)
class BuilderSource:
    """Where a TFDS builder is defined and where its data comes from."""

    # Imported to register the builder: without TensorFlow, `import tensorflow_datasets` skips
    # its own dataset modules, so e.g. `wmt14_translate` is unknown until its module is imported.
    module: str
    # Host probed before downloading, so an offline machine fails in seconds; None when the
    # builder reads only files shipped with the project.
    download_host: str | None
    download_port: int = 80
    # A class in `module` that builds the dataset instead of TFDS's registered builder: TFDS's
    # own text builders read their downloads through `tf.io.gfile`, which needs TensorFlow. It
    # writes the same name, version, features and splits, so either side reads what the other
    # prepared. None builds with the registered builder.
    builder_class: str | None = None
    # The raw files cannot be downloaded by anyone but the user (a licence to accept): built
    # only from ``manual_dir`` (or TFDS's default ``DATA_DIR/downloads/manual``).
    manual: bool = False
    # TFDS's builder code imports TensorFlow even to describe the dataset (TFDS's COCO uses
    # `tf.int64` in `_info`): without TensorFlow, only a copy prepared elsewhere can be read,
    # from its files, which needs no builder code.
    needs_tensorflow: bool = False
    # Raw files that, all of them in ``manual_dir``, replace every download, so the build needs
    # no network. Empty where a manual_dir cannot stand in for the downloads: WMT'14 fr-en and
    # de-en have no manually downloaded subsets (TFDS's wmt.py downloads every file itself).
    manual_files: tuple[str, ...] = ()


# Keyed by the TFDS name without config ("wmt14_translate" for "wmt14_translate/fr-en").
KNOWN_BUILDERS = {
    "bible_en_es": BuilderSource("experiments.data.bible_en_es", download_host=None),
    "shakespeare_plays": BuilderSource("experiments.data.shakespeare_plays", download_host=None),
    "tiny_shakespeare": BuilderSource(
        "experiments.data.text_builders",
        download_host="raw.githubusercontent.com",
        download_port=443,
        builder_class="TinyShakespeare",
        manual_files=(text_builders.TinyShakespeare.FILE_NAME,),
    ),
    "lm1b": BuilderSource(
        "experiments.data.text_builders",
        download_host="www.statmt.org",
        builder_class="Lm1b",
        manual_files=(text_builders.Lm1b.FILE_NAME,),
    ),
    "digit_scenes": BuilderSource("experiments.data.digit_scenes", download_host=None),
    "flickr8k": BuilderSource("experiments.data.flickr8k", download_host=None, manual=True),
    "coco_captions": BuilderSource(
        "tensorflow_datasets.object_detection.coco_captions",
        download_host="images.cocodataset.org",
        needs_tensorflow=True,
    ),
    "wmt14_translate": BuilderSource(
        "tensorflow_datasets.translate.wmt14", download_host="www.statmt.org"
    ),
    "wmt15_translate": BuilderSource(
        "tensorflow_datasets.translate.wmt15", download_host="www.statmt.org"
    ),
}


class DatasetNotPreparedError(DataError):
    """The dataset is not in ``data_dir`` and cannot be built here and now."""


def builder_source(name: str) -> BuilderSource:
    """The ``BuilderSource`` of ``name`` ("dataset" or "dataset/config"); ValueError if unknown."""
    base = name.split("/")[0].split(":")[0]
    if base not in KNOWN_BUILDERS:
        raise ValueError(
            f"name: unknown dataset {name!r}; expected one of {sorted(KNOWN_BUILDERS)} "
            "(optionally with '/config'); add new ones to prepare.KNOWN_BUILDERS"
        )
    return KNOWN_BUILDERS[base]


def host_reachable(host: str, port: int, *, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout_s`` seconds.

    Runs in a daemon thread because name resolution has no timeout of its own and can hang far
    longer than the connect on a machine without DNS.
    """
    outcome: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(outcome and outcome[0])


def how_to_prepare(name: str, data_dir: Path, reason: str) -> str:
    """The message of ``DatasetNotPreparedError``: what is missing and three ways to fix it."""
    base = name.split("/")[0]
    files = builder_source(name).manual_files
    if files:
        local = (
            "  2. or, if you have its raw download here, pass the directory holding\n"
            f"       {', '.join(files)}\n"
            "     as manual_dir=THAT_DIR (python -m experiments.data ... --manual_dir THAT_DIR);\n"
            "     it is read from there instead of downloaded;\n"
        )
    else:
        local = f"  2. (a manual_dir does not help: TFDS downloads every file of {name} itself);\n"
    return (
        f"Dataset {name!r} is not prepared in data_dir={data_dir} ({reason}).\n"
        "To prepare it:\n"
        "  1. on a machine with network access, run\n"
        f"       python -m experiments.data {name} --data_dir DIR\n"
        "     (or, where TensorFlow is installed,\n"
        f"       tfds build {name} --file_format=array_record --data_dir=DIR)\n"
        f"     then copy DIR/{base}/ to {data_dir}/{base}/;\n"
        f"{local}"
        "  3. or run again with network access and download allowed."
    )


def _builder(
    name: str, source: BuilderSource, *, data_dir: str | Path | None
) -> tfds.core.DatasetBuilder:
    module = importlib.import_module(source.module)  # registers the builder (see BuilderSource)
    if source.builder_class is None:
        return tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
    if "/" in name or ":" in name:
        raise ValueError(f"name: expected no config or version for this dataset, got {name!r}")
    builder_class = getattr(module, source.builder_class)
    return builder_class(data_dir=data_dir, file_format=FILE_FORMAT)


def how_to_prepare_elsewhere(name: str, data_dir: Path) -> str:
    """The error for a dataset whose TFDS builder needs TensorFlow, which is not installed."""
    base = name.split("/")[0]
    return (
        f"Dataset {name!r} is not prepared in data_dir={data_dir}, and TFDS's builder for it "
        "needs TensorFlow, which is not installed here.\n"
        "To prepare it:\n"
        "  1. on a machine with TensorFlow and network access, run\n"
        f"       tfds build {name} --file_format=array_record --data_dir=DIR\n"
        f"     then copy DIR/{base}/ to {data_dir}/{base}/ (reading it needs no TensorFlow);\n"
        "  2. or install TensorFlow here and run again with network access."
    )


def how_to_supply_files(name: str, data_dir: Path, reason: str, instructions: str) -> str:
    """The error for a dataset built only from raw files the user supplies in ``manual_dir``."""
    return (
        f"Dataset {name!r} is not prepared in data_dir={data_dir} ({reason}).\n"
        "It is built from raw files that you download yourself; pass their directory as\n"
        f"manual_dir=THAT_DIR (python -m experiments.data {name} --manual_dir THAT_DIR).\n"
        f"{instructions.strip()}"
    )


def _manual_files_dir(
    name: str, where: Path, manual_dir: str | Path | None, instructions: str
) -> Path:
    """``manual_dir``, or TFDS's default one, if it exists and is not empty."""
    folder = Path(manual_dir) if manual_dir is not None else where / "downloads" / "manual"
    if not folder.is_dir() or not any(folder.iterdir()):
        given = "no manual_dir given" if manual_dir is None else f"manual_dir={manual_dir}"
        reason = f"{given}, and {folder} is missing or empty"
        raise DatasetNotPreparedError(how_to_supply_files(name, where, reason, instructions))
    return folder


def how_to_rebuild(name: str, data_dir: Path) -> str:
    """The end of a ``DataError`` about a prepared copy: how to build it again."""
    source = builder_source(name)
    needs = (
        "it builds from files shipped with the project, offline"
        if source.download_host is None and not source.manual
        else "it needs its raw files (manual_dir) or network access, as when first prepared"
    )
    return (
        f"To rebuild it, delete that directory and run\n"
        f"    python -m experiments.data {name} --data_dir {data_dir}\n"
        f"({needs}), or run the experiment again, which prepares it the same way."
    )


def _damaged_metadata(folder: Path) -> list[Path]:
    """The metadata files of the versions under ``folder`` that are not valid JSON."""
    candidates = [*folder.rglob("dataset_info.json"), *folder.rglob("features.json")]
    damaged = []
    for path in sorted(candidates):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            damaged.append(path)
    return damaged


def _metadata_error(name: str, data_dir: Path, error: Exception) -> DataError:
    """TFDS could not parse the metadata of a prepared copy: say which file and what to do."""
    base = data_dir / name.split("/")[0]
    damaged = _damaged_metadata(base)
    folder = damaged[0].parent if damaged else base
    files = ", ".join(str(path) for path in damaged) or f"a metadata file under {base}"
    return DataError(
        f"Dataset {name!r} in {folder} is corrupt: {files} cannot be parsed "
        f"({type(error).__name__}: {str(error)[:300]}).\n{how_to_rebuild(name, data_dir)}"
    )


# What TFDS raises for a dataset_info.json or features.json that is not valid JSON or not the
# expected protobuf (DatasetInfo.read_from_directory parses them with json_format).
_METADATA_ERRORS = (json_format.ParseError, json.JSONDecodeError)


def _check_not_partial(name: str, builder: tfds.core.DatasetBuilder) -> None:
    """TFDS builds in an ``incomplete.*`` directory and renames it when done, so a version
    directory without its metadata is a damaged or half-copied one. TFDS would not rebuild it
    ("already exists") and then find no splits in it."""
    version_dir = Path(builder.data_dir)
    missing = [f for f in ("dataset_info.json", "features.json") if not (version_dir / f).exists()]
    if version_dir.is_dir() and any(version_dir.iterdir()) and missing:
        raise DataError(
            f"Dataset {name!r} in {version_dir} is corrupt: it lacks {' and '.join(missing)} "
            "(an interrupted copy, or a file deleted).\n"
            + how_to_rebuild(name, Path(builder.data_dir_root))
        )


def _check_manual_dir(name: str, source: BuilderSource, folder: Path, where: Path) -> None:
    """A ``manual_dir`` that was given must exist, whatever the data set reads from it."""
    if folder.is_dir():
        return
    base = name.split("/")[0]
    if source.manual_files:
        wanted = f"It should hold the raw download: {', '.join(source.manual_files)}."
    else:
        wanted = (
            f"{name} reads nothing from a manual_dir (TFDS downloads every file of it): drop "
            "manual_dir, and to prepare it without network here, run\n"
            f"    python -m experiments.data {name} --data_dir DIR\n"
            f"on a machine with network access, then copy DIR/{base}/ to {where}/{base}/."
        )
    raise DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in data_dir={where}, and manual_dir={folder} does "
        f"not exist or is not a directory. {wanted}"
    )


def _missing_manual_files(source: BuilderSource, manual_dir: str | Path | None) -> str | None:
    """None when ``manual_dir`` holds every download of the builder; else what it lacks."""
    if manual_dir is None:
        return "is not given"
    if not source.manual_files:
        return "does not replace its downloads"
    missing = [f for f in source.manual_files if not (Path(manual_dir) / f).is_file()]
    return f"lacks {', '.join(missing)}" if missing else None


def _prepared_copy(name: str, data_dir: str | Path | None) -> tfds.core.DatasetBuilder:
    """A builder read from the files of ``name`` prepared in ``data_dir``, no builder code."""
    where = Path(data_dir) if data_dir is not None else Path(tfds.core.constants.DATA_DIR)
    try:
        builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DatasetNotPreparedError(how_to_prepare_elsewhere(name, where)) from None
    except _METADATA_ERRORS as error:
        raise _metadata_error(name, where, error) from error
    _check_file_format(name, builder)
    return builder


def _check_file_format(name: str, builder: tfds.core.DatasetBuilder) -> None:
    if builder.info.file_format != FILE_FORMAT:
        raise DatasetNotPreparedError(
            f"Dataset {name!r} in {builder.data_dir} is prepared as "
            f"{builder.info.file_format.value}, but random access needs "
            f"{FILE_FORMAT.value}: prepare it again in another data_dir."
        )


def prepare(
    name: str,
    *,
    data_dir: str | Path | None,
    manual_dir: str | Path | None = None,
    download: bool = True,
    probe_timeout_s: float = 3.0,
) -> tfds.core.DatasetBuilder:
    """A builder of ``name`` whose data is prepared in ``data_dir`` as ``array_record``.

    Args:
      name: TFDS name, with config if any ("bible_en_es", "wmt14_translate/fr-en").
      data_dir: TFDS data directory; None means TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      manual_dir: directory with manually downloaded raw files, handed to TFDS; it must
        exist, and spares the network only if it holds ``BuilderSource.manual_files``.
      download: whether a dataset that is not prepared may be downloaded.
      probe_timeout_s: how long to wait for the download host before giving up.

    Raises:
      ValueError: ``name`` is not in ``KNOWN_BUILDERS``.
      DatasetNotPreparedError: not prepared, and cannot be (no download allowed, host
        unreachable, raw files missing, manual_dir missing, TensorFlow missing, or prepared
        in another file format).
      experiments.errors.DataError: a prepared copy whose metadata is damaged or missing.
    """
    source = builder_source(name)
    if source.needs_tensorflow and importlib.util.find_spec("tensorflow") is None:
        return _prepared_copy(name, data_dir)
    try:
        builder = _builder(name, source, data_dir=data_dir)
    except _METADATA_ERRORS as error:
        where = Path(data_dir) if data_dir is not None else Path(tfds.core.constants.DATA_DIR)
        raise _metadata_error(name, where, error) from error
    where = Path(builder.data_dir_root)
    if builder.is_prepared():
        _check_file_format(name, builder)
        return builder
    _check_not_partial(name, builder)
    if source.manual:
        instructions = builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ""
        manual_dir = _manual_files_dir(name, where, manual_dir, instructions)
    elif manual_dir is not None:
        _check_manual_dir(name, source, Path(manual_dir), where)
    missing = _missing_manual_files(source, manual_dir)
    if source.download_host is not None and missing is not None:
        given = "" if manual_dir is None else f"manual_dir={manual_dir} {missing}, "
        if not download:
            raise DatasetNotPreparedError(how_to_prepare(name, where, f"{given}and download=False"))
        if not host_reachable(
            source.download_host, source.download_port, timeout_s=probe_timeout_s
        ):
            reason = f"{given}and its download host {source.download_host} is not reachable"
            raise DatasetNotPreparedError(how_to_prepare(name, where, reason))
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir),
        # Prepared copies on Google Cloud Storage are TFRecord and need network; never look.
        try_download_gcs=False,
    )
    builder.download_and_prepare(download_config=config)
    return builder


# What array_record raises for a file it cannot read: truncated ("should be at least 64KB
# big"), corrupt (Riegeli "chunk hash mismatch"), missing ("open() failed").
_READ_ERRORS = (RuntimeError, OSError)


class CheckedSource(Sequence):
    """A TFDS random-access source whose read errors are ``DataError``s naming the file.

    Wraps what ``builder.as_data_source`` returns, for ``pipeline.read_records`` and
    ``grain.MapDataset.source`` alike (``len``, ``[i]`` and ``__getitems__``).
    """

    def __init__(self, source: Any, *, name: str, split: str, builder: tfds.core.DatasetBuilder):
        self.source = source
        self.name = name
        self.split = split
        self.version_dir = Path(builder.data_dir)
        self.data_dir = Path(builder.data_dir_root)
        # (first index, file, records the metadata says it holds) of every file the split reads,
        # in the source's order.
        self.files: list[tuple[int, str, int]] = []
        start = 0
        for instruction in builder.info.splits[split].file_instructions:
            self.files.append((start, str(instruction.filename), instruction.examples_in_shard))
            start += instruction.take if instruction.take >= 0 else instruction.examples_in_shard

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.__getitems__(range(len(self))[index])
        try:
            return self.source[index]
        except _READ_ERRORS as error:
            raise self.error([index], error) from error

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        try:
            return list(self.source.__getitems__(list(indices)))
        except _READ_ERRORS as error:
            raise self.error(indices, error) from error

    def _file_of(self, index: int) -> str:
        starts = [start for start, _, _ in self.files]
        position = max(0, bisect.bisect_right(starts, index % max(len(self), 1)) - 1)
        return self.files[position][1]

    def error(self, indices: Sequence[int], error: Exception | str) -> DataError:
        files = sorted({self._file_of(i) for i in indices}) if self.files else []
        where = ", ".join(files) or str(self.version_dir)
        why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return DataError(
            f"Dataset {self.name!r} in {self.version_dir} is corrupt: split {self.split!r} "
            f"cannot be read from {where} ({why}).\n" + how_to_rebuild(self.name, self.data_dir)
        )

    def check_files(self) -> None:
        """Open every file of the split, count its records and read its first one.

        array_record reads a file's index (at its end) on opening, so a truncated file fails
        here; one cut to a whole 64 KiB block opens as an empty file instead, whose records
        TFDS would decode as None, hence the count against the metadata.
        """
        for start, filename, expected in self.files:
            if not Path(filename).is_file():
                raise self.error([start], "the file is missing")
            try:
                count = _count_records(filename)
                # Reading says why a file does not open (e.g. "should be at least 64KB big").
                if start < len(self):
                    self.source[start]
            except _READ_ERRORS as error:
                raise self.error([start], error) from error
            if count is None:
                raise self.error([start], "array_record cannot read its index: it is truncated")
            if count != expected:
                raise self.error([start], f"it holds {count} records, its metadata {expected}")


def _count_records(filename: str) -> int | None:
    """The records in an array_record file, or None when it does not open."""
    reader = array_record_module.ArrayRecordReader(filename, "readahead_buffer_size:0")
    count, ok = reader.num_records(), reader.ok()
    # A reader that failed to open says so again on close, without a message.
    with contextlib.suppress(RuntimeError):
        reader.close()
    return count if ok else None


def open_split(
    name: str,
    builder: tfds.core.DatasetBuilder,
    split: str,
    *,
    decoders: Mapping[str, Any] | None = None,
) -> CheckedSource:
    """Random access to ``split`` of a ``prepare``d builder, its files checked now.

    Raises ``DataError`` naming the data set, the file and the command that rebuilds it when a
    file is missing, truncated or corrupt, now or when a record is read later.
    """
    try:
        source = builder.as_data_source(split, decoders=decoders)
    except KeyError as error:  # TFDS: "splits is empty" when the metadata lists none
        raise DataError(
            f"Dataset {name!r} in {builder.data_dir} has no split {split!r} in its metadata "
            f"({error}).\n{how_to_rebuild(name, Path(builder.data_dir_root))}"
        ) from error
    checked = CheckedSource(source, name=name, split=split, builder=builder)
    checked.check_files()
    return checked
