"""Where the official dataset archives live, how to check them, and where their data ends up.

Checksums are the ones published with the archives' reference loaders (anomalib for MVTec AD,
MVTec 3D-AD and VisA, torchvision for DTD); MVTec 3D-AD is only published with an MD5 sum.

A mirror (a lab's file server, or the local server the tests and the benchmark check use) replaces
an entry's archives through `$AAND_CATALOG`: a JSON file `{"mvtec": [{"url": ..., "digest": ...,
"algorithm": "sha256"}], ...}`. The checksum is verified all the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

_NON_COMMERCIAL = (
    "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/), for non-commercial use"
)


@dataclass(frozen=True)
class Archive:
    """One downloadable file and its published checksum (hex digest of `algorithm`)."""

    url: str
    digest: str
    algorithm: str = "sha256"

    @property
    def filename(self) -> str:
        """The file name the URL ends in; the download is stored under it."""
        return PurePosixPath(urlsplit(self.url).path).name


@dataclass(frozen=True)
class CatalogEntry:
    """A dataset that `download.fetch` can install as `<data_dir>/<folder>`.

    nested: the archives hold one top-level folder named `folder` (DTD's `dtd/`); otherwise their
    top level is the content of `folder` (MVTec's category folders), so they are extracted into it.
    """

    name: str
    title: str
    licence: str
    folder: str
    archives: tuple[Archive, ...]
    nested: bool = False


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="mvtec",
            title="MVTec AD",
            licence=_NON_COMMERCIAL,
            folder="mvtec_anomaly_detection",  # <category>/{train,test,ground_truth}, license.txt
            archives=(
                Archive(
                    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                    "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
                    "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
                ),
            ),
        ),
        CatalogEntry(
            name="mvtec3d",
            title="MVTec 3D-AD",
            licence=_NON_COMMERCIAL,
            folder="mvtec_3d_anomaly_detection",  # <category>/{train,validation,test}/<defect>/{rgb,xyz,gt}
            archives=(
                Archive(
                    "https://www.mydrive.ch/shares/45920/dd1eb345346df066c63b5c95676b961b/download/"
                    "428824485-1643285832/mvtec_3d_anomaly_detection.tar.xz",
                    "d8bb2800fbf3ac88e798da6ae10dc819",
                    algorithm="md5",
                ),
            ),
        ),
        CatalogEntry(
            name="visa",
            title="VisA",
            licence="CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), as the VisA README states",
            folder="visa",  # <category>/Data/{Images,Masks}, <category>/image_anno.csv, split_csv/1cls.csv
            archives=(
                Archive(
                    "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                    "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
                ),
            ),
        ),
        CatalogEntry(
            name="dtd",
            title="Describable Textures Dataset (DTD)",
            licence="research use only (https://www.robots.ox.ac.uk/~vgg/data/dtd/)",
            folder="dtd",  # images/<class>/*.jpg, labels/, imdb/
            archives=(
                Archive(
                    "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                    "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
                ),
            ),
            nested=True,
        ),
    )
}


def lookup(name: str) -> CatalogEntry | None:
    """The entry named `name`, its archives replaced by `$AAND_CATALOG`'s when that file names it."""
    entry = CATALOG.get(name)
    mirror = os.environ.get("AAND_CATALOG")
    if entry is None or not mirror:
        return entry
    archives = json.loads(Path(mirror).read_text()).get(name)
    return entry if archives is None else replace(entry, archives=tuple(Archive(**a) for a in archives))
