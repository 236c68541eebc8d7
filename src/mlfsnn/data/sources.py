"""Where every dataset's files come from: one table of files per (dataset, source).

Each file has its URLs (tried in order, after the mirrors of ``MLFSNN_DATA_MIRROR``), its size and
checksum when they are published, and the folder under ``dataset.root`` where ``snn-train`` and
``snn-data prepare`` look for it. Checksums: CIFAR10's md5 is the one torchvision publishes for
the Toronto archive; the CIFAR10-DVS per-class md5s are figshare's for the release's files (as
SpikingJelly lists them); tonic's files have tonic's own md5s (tests/data/test_download.py
holds them equal to the installed tonic). A file without a known checksum is checked by the
archive's own integrity (zip CRCs, the gzip trailer) and its sha256 recorded beside it at the
first download (:mod:`.transfer`).

figshare files are fetched through the API address ``api.figshare.com/v2/file/download/<id>``,
which redirects to the file itself; the ``figshare.com/ndownloader`` links that tonic and
SpikingJelly use now answer scripts with a bot-challenge HTML page (tonic#330).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["MIRROR_ENV", "SOURCES", "RemoteFile", "Source", "default_source", "find_source", "mirror_urls"]

MIRROR_ENV = "MLFSNN_DATA_MIRROR"
_FIGSHARE = "https://api.figshare.com/v2/file/download/{}"


@dataclass(frozen=True)
class RemoteFile:
    name: str  # its name on disk, and on a mirror
    urls: tuple[str, ...]
    md5: str | None  # published; None: the archive's own integrity plus the sha256 recorded at first download
    size: int | None = None  # bytes, where published
    folder: str = ""  # below dataset.root, where the dataset code looks for it

    @property
    def kind(self) -> str:
        """``zip``, ``tar.gz`` or ``gz``: what the first bytes and the integrity check expect."""
        for kind in ("tar.gz", "zip", "gz"):
            if self.name.endswith("." + kind):
                return kind
        return ""


@dataclass(frozen=True)
class Source:
    dataset: str
    name: str  # dataset.source (cifar10 has only one)
    files: tuple[RemoteFile, ...]
    page: str  # where a person finds the files
    manual: str | None = None  # no direct link: where to get the files instead
    note: str = ""  # what happens after the download (extraction), for the docs and the CLI


def _figshare(name: str, file_id: int, md5: str, folder: str = "") -> RemoteFile:
    return RemoteFile(name, (_FIGSHARE.format(file_id),), md5, None, folder)


_CIFAR10_DVS_ZIPS = (
    ("airplane", 7712788, "0afd5c4bf9ae06af762a77b180354fdd"),
    ("automobile", 7712791, "8438dfeba3bc970c94962d995b1b9bdd"),
    ("bird", 7712794, "a9c207c91c55b9dc2002dc21c684d785"),
    ("cat", 7712812, "52c63c677c2b15fa5146a8daf4d56687"),
    ("deer", 7712815, "b6bf21f6c04d21ba4e23fc3e36c8a4a3"),
    ("dog", 7712818, "f379ebdf6703d16e0a690782e62639c3"),
    ("frog", 7712842, "cad6ed91214b1c7388a5f6ee56d08803"),
    ("horse", 7712851, "e7cbbf77bec584ffbf913f00e682782a"),
    ("ship", 7712836, "41c7bd7d6b251be82557c6cce9a7d5c9"),
    ("truck", 7712839, "89f3922fd147d9aeff89e76a2b0b70a7"),
)

SOURCES: dict[tuple[str, str], Source] = {
    ("cifar10", "toronto"): Source(
        "cifar10",
        "toronto",
        (
            RemoteFile(
                "cifar-10-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                "c58f30108f718f92721af3b95e74349a",
                170_498_071,
            ),
        ),
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        note="extracted to cifar-10-batches-py/ beside it",
    ),
    ("cifar10_dvs", "original"): Source(
        "cifar10_dvs",
        "original",
        tuple(_figshare(f"{cls}.zip", fid, md5) for cls, fid, md5 in _CIFAR10_DVS_ZIPS),
        "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671",
        note="read as they are (never extracted)",
    ),
    ("cifar10_dvs", "tonic"): Source(
        "cifar10_dvs",
        "tonic",
        (_figshare("CIFAR10DVS.zip", 38023437, "ce3a4a0682dc0943703bd8f749a7701c", "CIFAR10DVS"),),
        "https://figshare.com/ndownloader/files/38023437 (tonic.datasets.CIFAR10DVS)",
        note="tonic extracts it at the first snn-data prepare (no network then)",
    ),
    ("dvs_gesture", "tonic"): Source(
        "dvs_gesture",
        "tonic",
        (
            _figshare("ibmGestureTrain.tar.gz", 38022171, "3a8f0d4120a166bac7591f77409cb105", "DVSGesture"),
            _figshare("ibmGestureTest.tar.gz", 38020584, "56070e45dadaa85fff82e0fbfbc06de5", "DVSGesture"),
        ),
        "https://figshare.com/ndownloader/files/38022171 and .../38020584 (tonic.datasets.DVSGesture)",
        note="tonic extracts them at the first snn-data prepare (no network then)",
    ),
    ("dvs_gesture", "ibm"): Source(
        "dvs_gesture",
        "ibm",
        (RemoteFile("DvsGesture.tar.gz", (), None),),
        "https://research.ibm.com/interactive/dvsgesture/",
        manual=(
            "IBM publishes DvsGesture.tar.gz through a Box folder linked from "
            "https://research.ibm.com/interactive/dvsgesture/ (no direct link a script can fetch)"
        ),
        note="read in one streaming pass (never extracted)",
    ),
}

_DEFAULTS = {"cifar10": "toronto", "cifar10_dvs": "original", "dvs_gesture": "ibm"}
_MADE_HERE = {
    "digits_dvs": ": it is emulated from scikit-learn's digits on first use (snn-data prepare or snn-train)"
}


def default_source(dataset: str) -> str:
    """The source a dataset's config uses unless ``dataset.source`` says otherwise."""
    if dataset not in _DEFAULTS:
        raise ConfigError(
            f"dataset={dataset!r} has nothing to download; the datasets with files are "
            f"{', '.join(_DEFAULTS)} (digits ships with scikit-learn; digits_dvs is emulated from it on "
            "first use)"
        )
    return _DEFAULTS[dataset]


def find_source(dataset: str, source: str | None) -> Source:
    """The table of ``(dataset, source)``; ``source`` None means the dataset's default."""
    name = source or default_source(dataset)
    if (dataset, name) not in SOURCES:
        known = [s for d, s in SOURCES if d == dataset]
        raise ConfigError(
            f"source={name!r} is not a source of {dataset}: expected one of {', '.join(known)}"
            if known
            else f"dataset={dataset!r} has nothing to download" + _MADE_HERE.get(dataset, "")
        )
    return SOURCES[(dataset, name)]


def mirror_urls(dataset: str, file: RemoteFile, env: str | None = None) -> list[str]:
    """The mirror addresses of ``file`` (``<base>/<dataset>/<file name>`` for every base URL in
    ``MLFSNN_DATA_MIRROR``, separated by spaces), then the file's own URLs."""
    value = os.environ.get(MIRROR_ENV, "") if env is None else env
    mirrors = []
    for base in value.split():
        if not base.startswith(("http://", "https://", "file://")):
            raise ConfigError(
                f"{MIRROR_ENV}={base!r} is not a base URL: expected http://, https:// or file:// "
                f"addresses (each file at <base>/{dataset}/<file name>), separated by spaces"
            )
        mirrors.append(f"{base.rstrip('/')}/{dataset}/{file.name}")
    return [*mirrors, *file.urls]
