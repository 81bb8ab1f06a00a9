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

The command for a connected machine is ``python -m experiments.data NAME --data_dir DIR``
(``__main__.py``; ``tfds build`` needs TensorFlow, this does not).
"""

import dataclasses
import importlib
import importlib.util
import socket
import threading
from pathlib import Path

import tensorflow_datasets as tfds

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


# Keyed by the TFDS name without config ("wmt14_translate" for "wmt14_translate/fr-en").
KNOWN_BUILDERS = {
    "bible_en_es": BuilderSource("experiments.data.bible_en_es", download_host=None),
    "shakespeare_plays": BuilderSource("experiments.data.shakespeare_plays", download_host=None),
    "tiny_shakespeare": BuilderSource(
        "experiments.data.text_builders",
        download_host="raw.githubusercontent.com",
        download_port=443,
        builder_class="TinyShakespeare",
    ),
    "lm1b": BuilderSource(
        "experiments.data.text_builders",
        download_host="www.statmt.org",
        builder_class="Lm1b",
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


class DatasetNotPreparedError(RuntimeError):
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
    return (
        f"Dataset {name!r} is not prepared in data_dir={data_dir} ({reason}).\n"
        "To prepare it:\n"
        "  1. on a machine with network access, run\n"
        f"       python -m experiments.data {name} --data_dir DIR\n"
        "     (or, where TensorFlow is installed,\n"
        f"       tfds build {name} --file_format=array_record --data_dir=DIR)\n"
        f"     then copy DIR/{base}/ to {data_dir}/{base}/;\n"
        "  2. or, if you have the dataset's raw files here, pass manual_dir=THAT_DIR\n"
        "     (python -m experiments.data ... --manual_dir THAT_DIR); TFDS reads\n"
        "     manually downloaded files from there instead of downloading them;\n"
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


def _prepared_copy(name: str, data_dir: str | Path | None) -> tfds.core.DatasetBuilder:
    """A builder read from the files of ``name`` prepared in ``data_dir``, no builder code."""
    where = Path(data_dir) if data_dir is not None else Path(tfds.core.constants.DATA_DIR)
    try:
        builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DatasetNotPreparedError(how_to_prepare_elsewhere(name, where)) from None
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
      manual_dir: directory with manually downloaded raw files, handed to TFDS.
      download: whether a dataset that is not prepared may be downloaded.
      probe_timeout_s: how long to wait for the download host before giving up.

    Raises:
      ValueError: ``name`` is not in ``KNOWN_BUILDERS``.
      DatasetNotPreparedError: not prepared, and cannot be (no download allowed, host
        unreachable, raw files missing, TensorFlow missing, or prepared in another file
        format).
    """
    source = builder_source(name)
    if source.needs_tensorflow and importlib.util.find_spec("tensorflow") is None:
        return _prepared_copy(name, data_dir)
    builder = _builder(name, source, data_dir=data_dir)
    where = Path(builder.data_dir_root)
    if builder.is_prepared():
        _check_file_format(name, builder)
        return builder
    if source.manual:
        instructions = builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ""
        manual_dir = _manual_files_dir(name, where, manual_dir, instructions)
    needs_network = source.download_host is not None and manual_dir is None
    if needs_network:
        if not download:
            raise DatasetNotPreparedError(how_to_prepare(name, where, "and download=False"))
        if not host_reachable(
            source.download_host, source.download_port, timeout_s=probe_timeout_s
        ):
            reason = f"and its download host {source.download_host} is not reachable"
            raise DatasetNotPreparedError(how_to_prepare(name, where, reason))
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir),
        # Prepared copies on Google Cloud Storage are TFRecord and need network; never look.
        try_download_gcs=False,
    )
    builder.download_and_prepare(download_config=config)
    return builder
