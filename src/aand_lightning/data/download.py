"""Fetch a catalog dataset into `<data_dir>/<folder>` (or any folder) once, safely, also from many jobs.

Downloads go to `.downloads/<file>.part` next to the dataset folder and resume with an HTTP Range
request; a file gets its final name only after its checksum matched. Archives are unpacked into a
temporary folder next to the target and moved into place with one rename, so a dataset folder is
either complete or absent (a non-empty target folder counts as installed: it is also what extracting
by hand gives).
A lock file per dataset makes parallel jobs download once: the others wait, then find the data; the
job holding it removes it when done.

The readers call `fetch_root` with `dataset.download`: `auto` (the default) fetches only into a root
folder that exists, so a mistyped `dataset.root` stops with a did-you-mean instead of downloading
gigabytes into a new folder; `true` also creates the root; `false` never fetches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from aand_lightning.data.catalog import CATALOG, Archive, CatalogEntry, lookup
from aand_lightning.data.records import DatasetError
from aand_lightning.errors import UserError, did_you_mean

Download = bool | Literal["auto"]  # the values of dataset.download

DOWNLOADS = ".downloads"
ATTEMPTS = 5  # tries per file while each try gets some bytes (a dropped connection resumes)
_CHUNK = 1 << 20
# What a failed or broken-off transfer raises: refused/unreachable (URLError), timeouts and resets
# (OSError), a body cut short by the server (http.client.IncompleteRead and friends).
_NETWORK_ERRORS = (URLError, OSError, http.client.HTTPException)


class DownloadError(UserError):
    """A dataset could not be fetched; the message is one sentence that says what to do instead."""


class _BrokenOff(Exception):
    """A transfer that stopped after receiving some bytes; worth resuming at once."""


def _entry(name_or_entry: str | CatalogEntry) -> CatalogEntry:
    """A catalog entry by name; an entry passes through (tests and mirrors point it elsewhere)."""
    if isinstance(name_or_entry, CatalogEntry):
        return name_or_entry
    entry = lookup(name_or_entry)
    if entry is None:
        raise DownloadError(
            f"No download is known for dataset {name_or_entry!r}; use one of {', '.join(sorted(CATALOG))}."
        )
    return entry


def is_installed(target: Path) -> bool:
    """True when the dataset folder exists and holds something (ours or extracted by hand)."""
    return target.is_dir() and any(target.iterdir())


def _by_hand(entry: CatalogEntry, target: Path) -> str:
    """The manual alternative, for error messages: where to extract the archive."""
    if not entry.nested:
        return f"extract it into {target}"
    if target.name == entry.folder:
        return f"extract it into {target.parent}, which gives {target}"
    return f"extract it and move the {entry.folder} folder it holds to {target}"


def _still_at(handle: IO[str], path: Path) -> bool:
    """True while `path` names the file `handle` has open (a finished holder unlinks it)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path`, and remove the file when done so no lock file stays behind.

    The holder unlinks the file before it releases the lock. A job that opened the old file and was
    waiting on it then holds a lock nobody else sees, so after acquiring it checks that `path` still
    names the file it locked, and otherwise tries again on the current one.
    """
    announced = False
    while True:
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not announced:
                    print(f"Waiting for another job that is fetching {what} (lock {path}).", file=sys.stderr)
                    announced = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            if not _still_at(handle, path):
                continue  # closing the handle releases the stale lock
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
            return  # closing the handle releases the lock


def _file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (archives are gigabytes)."""
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _reason(err: BaseException) -> str:
    """A short cause for messages: "HTTP 404 Not Found", "[Errno 111] Connection refused", "timed out"."""
    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason}"
    return str(err.reason if isinstance(err, URLError) else err) or type(err).__name__


def _transfer(archive: Archive, part: Path, timeout: float, progress: bool) -> None:
    """One request: append to `part` on 206, restart it on 200; _BrokenOff if cut short after some bytes."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urlopen(Request(archive.url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the .part is already whole
            return
        raise
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        expected = None if length is None else int(length)
        received = 0
        with (
            part.open("ab" if resumed else "wb") as sink,
            tqdm(
                total=None if expected is None else expected + (offset if resumed else 0),
                initial=offset if resumed else 0,
                unit="B", unit_scale=True, unit_divisor=1024, desc=archive.filename,
                disable=not progress, file=sys.stderr,
            ) as bar,
        ):  # fmt: skip
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except _NETWORK_ERRORS as err:
                    if received:
                        raise _BrokenOff(_reason(err)) from err
                    raise
                if not chunk:
                    break
                sink.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received < expected:  # urllib returns b"" when the server hangs up
        raise _BrokenOff(f"got {received} of {expected} bytes")


def _download(archive: Archive, folder: Path, timeout: float, progress: bool, by_hand: str) -> Path:
    """The verified archive in `folder`, downloaded (or resumed) unless a verified copy is there."""
    final = folder / archive.filename
    if final.is_file():
        return final
    part = final.with_name(final.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _transfer(archive, part, timeout, progress)
            break
        except _BrokenOff as err:
            if attempt == ATTEMPTS:
                raise DownloadError(
                    f"Download of {archive.url} kept breaking off ({err}) after {ATTEMPTS} tries; run "
                    f"again to resume {part}, or download it yourself and {by_hand}."
                ) from err
        except _NETWORK_ERRORS as err:
            raise DownloadError(
                f"Cannot download {archive.url} ({_reason(err)}); download it yourself, on another machine "
                f"if this one is offline, and {by_hand}."
            ) from err
    got = _file_digest(part, archive.algorithm)
    if got != archive.digest.lower():
        part.unlink()
        raise DownloadError(
            f"Downloaded {archive.url} has {archive.algorithm} {got} but {archive.digest} is expected, so "
            "it was deleted; run again, and if it still differs the file on the server has changed."
        )
    part.rename(final)
    return final


def _extract(archive: Path, into: Path) -> None:
    """Unpack a tar (any compression) or zip into `into`, refusing members that would land outside."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            root = into.resolve()
            for name in bundle.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise DownloadError(f"Archive {archive} holds {name!r}, outside the folder; delete it.")
            bundle.extractall(into)
        return
    with tarfile.open(archive) as bundle:
        try:
            bundle.extractall(into, filter="data")
        except tarfile.FilterError as err:
            raise DownloadError(f"Archive {archive} holds an unsafe member ({err}); delete it.") from err


def _install(entry: CatalogEntry, archives: list[Path], target: Path) -> None:
    """Extract next to the target, then rename into place; leftovers of an interrupted try are removed."""
    for stale in target.parent.glob(f".{target.name}.extract-*"):
        shutil.rmtree(stale, ignore_errors=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        for archive in archives:
            _extract(archive, workspace)
        content = workspace / entry.folder if entry.nested else workspace
        if not content.is_dir():
            raise DownloadError(
                f"Archive {archives[0]} has no top-level folder {entry.folder}; fix the catalog entry."
            )
        if target.is_dir():  # empty (is_installed was False): rename replaces it
            target.rmdir()
        content.rename(target)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def fetch(
    name_or_entry: str | CatalogEntry, data_dir: str | Path, progress: bool = True, timeout: float = 10.0
) -> Path:
    """`<data_dir>/<folder>` of a catalog dataset (its own folder name), fetched first if it is missing."""
    entry = _entry(name_or_entry)
    return fetch_into(entry, Path(data_dir) / entry.folder, progress, timeout)


def fetch_into(
    name_or_entry: str | CatalogEntry, target: str | Path, progress: bool = True, timeout: float = 10.0
) -> Path:
    """`target`, the dataset folder under any name, downloaded and extracted first if it is missing or empty.

    timeout (seconds) bounds connecting and each read, so an offline machine fails within seconds
    with a DownloadError that names the URL and where to extract a copy fetched elsewhere.
    """
    entry = _entry(name_or_entry)
    target = Path(target)
    if is_installed(target):
        return target
    downloads = target.parent / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    with _locked(downloads / f"{entry.name}.lock", entry.title):
        if is_installed(target):  # another job fetched it while we waited
            return target
        print(f"{entry.title}, licence: {entry.licence}; fetching it into {target}.", file=sys.stderr)
        by_hand = _by_hand(entry, target)
        archives = [_download(archive, downloads, timeout, progress, by_hand) for archive in entry.archives]
        _install(entry, archives, target)
        for archive in archives:
            archive.unlink()
    return target


def download_setting(value: object) -> Download:
    """`value` as a dataset.download setting; readers check it when built, so a typo fails before any work."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise DatasetError(f"dataset.download is {value!r}; set it to auto, true or false.")


def fetch_root(name: str, root: Path, download: Download) -> None:
    """Fetch dataset `name` into a reader's `root` if missing or empty, as dataset.download allows.

    `auto` fetches only into a folder that exists (an empty folder the user made counts as asking):
    a missing root is more likely a typo than a request for gigabytes, so it stops with the closest
    sibling folder and the setting that fetches. `true` creates the root; `false` never fetches.
    """
    if download is False:
        return
    if download == "auto" and not root.is_dir():
        siblings = (
            [p.name for p in root.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if root.parent.is_dir()
            else []
        )
        raise DatasetError(
            f"dataset.root {root} does not exist{did_you_mean(root.name, sorted(siblings))}; fix it, or "
            f"pass dataset.download=true to fetch {_entry(name).title} into it."
        )
    fetch_into(name, root)
