"""download.fetch against a local HTTP server with Range support, serving tiny archives in real layouts;
the readers (`dataset.download`) and the DTD texture source (`synthesis.textures=dtd`) fetching on use."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from aand_lightning.data.catalog import CATALOG, Archive, CatalogEntry
from aand_lightning.data.download import DOWNLOADS, DownloadError, fetch, fetch_into
from aand_lightning.data.mvtec import MVTecAD
from aand_lightning.data.mvtec3d import MVTec3DRGB
from aand_lightning.data.records import DatasetError
from aand_lightning.data.synthesis.textures import DTDTextures, TextureFolder
from aand_lightning.data.visa import VisA
from aand_lightning.errors import UserError


@dataclasses.dataclass
class Served:
    """What the test server holds and saw: files by name, (name, Range header) per GET."""

    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    cut_once: dict[str, int] = dataclasses.field(default_factory=dict)  # hang up after n bytes, once
    ranges: bool = True  # False: ignore Range and always send the whole file (200)
    delay: float = 0.0
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def entry(self, name: str, body: bytes, digest: str | None = None) -> CatalogEntry:
        """The catalog entry `name`, its archive served here under the real file name."""
        real = CATALOG[name]
        filename = real.archives[0].filename
        self.files[filename] = body
        archive = Archive(self.url(filename), digest or hashlib.sha256(body).hexdigest())
        return dataclasses.replace(real, archives=(archive,))


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        name, range_header = self.path.lstrip("/"), self.headers.get("Range")
        self.served.requests.append((name, range_header))
        body = self.served.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1]) if range_header else 0
        if not self.served.ranges or not range_header:
            start = 0
            self.send_response(200)
        elif start >= len(body):
            self.send_response(416)
            self.end_headers()
            return
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        time.sleep(self.served.delay)
        cut = self.served.cut_once.pop(name, None)
        self.wfile.write(payload if cut is None else payload[:cut])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[Served]:
    """A threaded HTTP server on 127.0.0.1 with Range support; the Served object configures and records it."""
    state = Served()
    handler = type("Handler", (_Handler,), {"served": state})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        state.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        yield state
        server.shutdown()


def _pack(filename: str, content: Path, arcname: str = "") -> bytes:
    """`content`'s children (or `content` itself as `arcname`) as a tar or zip named like `filename`."""
    members = (
        [(content, arcname)] if arcname else [(child, child.name) for child in sorted(content.iterdir())]
    )
    buffer = io.BytesIO()
    if filename.endswith(".zip"):
        with zipfile.ZipFile(buffer, "w") as bundle:
            for path, name in members:
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    bundle.write(file, f"{name}/{file.relative_to(path)}")
    else:
        mode = {".xz": "w:xz", ".gz": "w:gz"}.get(Path(filename).suffix, "w")
        with tarfile.open(fileobj=buffer, mode=mode) as bundle:
            for path, name in members:
                bundle.add(path, name)
    return buffer.getvalue()


def _dtd_root(tmp_path: Path, write_png: Callable) -> Path:
    """DTD's layout: dtd/images/<class>/*.jpg and dtd/labels/*.txt."""
    root = tmp_path / "dtd"
    for cls in ("banded", "woven"):
        write_png(root / "images" / cls / f"{cls}_0001.jpg", np.full((8, 8, 3), 90, np.uint8))
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\n")
    return root


# name -> (fixture that writes the layout, the archive nests it under this folder, reader check)
_LAYOUTS: dict[str, tuple[str, str, Callable[[Path], int]]] = {
    "mvtec": ("mvtec_root", "", lambda root: len(MVTecAD(root, "bottle").splits().train)),
    "mvtec3d": ("mvtec3d_root", "", lambda root: len(MVTec3DRGB(root, "foam").splits().train)),
    "visa": ("visa_root", "", lambda root: len(VisA(root, "candle").splits().train)),
    "dtd": ("", "dtd", lambda root: len(TextureFolder(root / "images").paths)),
}
_TRAIN_COUNTS = {"mvtec": 3, "mvtec3d": 2, "visa": 3, "dtd": 2}


@pytest.fixture
def archive_of(request: pytest.FixtureRequest, tmp_path: Path, write_png: Callable) -> Callable[[str], bytes]:
    """The bytes of a tiny archive in dataset `name`'s real layout, under its real file name's format."""

    def build(name: str) -> bytes:
        fixture, nested, _ = _LAYOUTS[name]
        content = request.getfixturevalue(fixture) if fixture else _dtd_root(tmp_path, write_png)
        return _pack(CATALOG[name].archives[0].filename, content, nested)

    return build


def _leftovers(data_dir: Path) -> list[str]:
    """What fetch should not leave behind: partial downloads, archives, lock files, extraction workspaces."""
    return sorted(p.name for p in [*data_dir.glob(".*.extract-*"), *(data_dir / DOWNLOADS).iterdir()])


@pytest.mark.parametrize("name", sorted(_LAYOUTS))
def test_fetch_downloads_and_extracts_where_the_reader_looks(name, served, archive_of, tmp_path, capsys):
    entry = served.entry(name, archive_of(name))
    data_dir = tmp_path / "data"

    root = fetch(entry, data_dir, progress=False)

    assert root == data_dir / CATALOG[name].folder
    assert _LAYOUTS[name][2](root) == _TRAIN_COUNTS[name]
    assert CATALOG[name].licence in capsys.readouterr().err  # licence shown before downloading
    assert _leftovers(data_dir) == []
    assert fetch(entry, data_dir, progress=False) == root
    assert len(served.requests) == 1  # the second call found the data


def test_catalog_entries_name_the_real_archives_with_checksums_of_the_right_length():
    files = {name: [a.filename for a in entry.archives] for name, entry in CATALOG.items()}
    assert files == {
        "mvtec": ["mvtec_anomaly_detection.tar.xz"],
        "mvtec3d": ["mvtec_3d_anomaly_detection.tar.xz"],
        "visa": ["VisA_20220922.tar"],
        "dtd": ["dtd-r1.0.1.tar.gz"],
    }
    for entry in CATALOG.values():
        for archive in entry.archives:
            assert archive.url.startswith("https://")
            hex_length = 2 * hashlib.new(archive.algorithm).digest_size
            assert re.fullmatch(f"[0-9a-f]{{{hex_length}}}", archive.digest)


def test_checksum_mismatch_deletes_the_file_and_names_url_and_both_hashes(
    served, archive_of, tmp_path, one_sentence
):
    body = archive_of("mvtec")
    entry = served.entry("mvtec", body, digest="0" * 64)
    data_dir = tmp_path / "data"

    with pytest.raises(DownloadError) as caught:
        fetch(entry, data_dir, progress=False)

    message = str(caught.value)
    one_sentence(message)
    assert entry.archives[0].url in message
    assert "0" * 64 in message and hashlib.sha256(body).hexdigest() in message
    assert _leftovers(data_dir) == [] and not (data_dir / entry.folder).exists()


def test_connection_dropped_half_way_resumes_with_a_range_request(served, archive_of, tmp_path):
    entry = served.entry("visa", archive_of("visa"))
    filename = entry.archives[0].filename
    half = len(served.files[filename]) // 2
    served.cut_once[filename] = half

    root = fetch(entry, tmp_path / "data", progress=False)

    assert served.requests == [(filename, None), (filename, f"bytes={half}-")]
    assert len(VisA(root, "candle").splits().test) == 3  # the resumed archive verified and extracted


@pytest.mark.parametrize("ranges", [True, False], ids=["206-appends", "200-restarts"])
def test_an_existing_part_file_is_resumed_or_restarted(ranges, served, archive_of, tmp_path):
    entry = served.entry("mvtec", archive_of("mvtec"))
    served.ranges = ranges
    filename = entry.archives[0].filename
    downloads = tmp_path / "data" / DOWNLOADS
    downloads.mkdir(parents=True)
    (downloads / f"{filename}.part").write_bytes(served.files[filename][:100])

    root = fetch(entry, tmp_path / "data", progress=False)

    assert served.requests == [(filename, "bytes=100-")]
    assert len(MVTecAD(root, "bottle").splits().train) == 3  # appending to a 200 would fail the checksum


def test_interrupted_extraction_is_redone_from_the_verified_archive(served, archive_of, tmp_path):
    entry = served.entry("mvtec", archive_of("mvtec"))
    data_dir = tmp_path / "data"
    (data_dir / DOWNLOADS).mkdir(parents=True)
    (data_dir / DOWNLOADS / entry.archives[0].filename).write_bytes(served.files[entry.archives[0].filename])
    stale = data_dir / f".{entry.folder}.extract-crashed" / "bottle" / "train"
    stale.mkdir(parents=True)  # what a killed extraction leaves: a workspace, no target
    (data_dir / entry.folder).mkdir()  # an empty target counts as missing

    root = fetch(entry, data_dir, progress=False)

    assert served.requests == []  # the archive was already downloaded and verified
    assert len(MVTecAD(root, "bottle").splits().test) == 5
    assert _leftovers(data_dir) == []


def test_a_folder_extracted_by_hand_is_used_as_it_is(served, mvtec_root, tmp_path):
    entry = served.entry("mvtec", b"never fetched")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    mvtec_root.rename(data_dir / entry.folder)

    assert fetch(entry, data_dir, progress=False) == data_dir / entry.folder
    assert served.requests == []


def test_parallel_jobs_download_once_the_second_waits_on_the_lock(served, archive_of, tmp_path, capsys):
    entry = served.entry("dtd", archive_of("dtd"))
    served.delay = 0.5  # keep the first download busy while the second job arrives
    start = threading.Barrier(2)
    results: list[Path] = []

    def job() -> None:
        start.wait()
        results.append(fetch(entry, tmp_path / "data", progress=False))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert results == [tmp_path / "data" / "dtd"] * 2
    assert len(served.requests) == 1
    assert "Waiting for another job" in capsys.readouterr().err
    assert _leftovers(tmp_path / "data") == []  # the waiting job found the lock file gone and made its own


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("failure", ["refused", "http-404", "timeout"])
def test_unreachable_server_stops_within_seconds_naming_url_and_folder(
    failure, served, tmp_path, one_sentence
):
    url = {"refused": f"http://127.0.0.1:{_closed_port()}/x.tar.xz", "http-404": served.url("missing.tar.xz")}
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url["timeout"] = f"http://127.0.0.1:{silent.getsockname()[1]}/x.tar.xz"
        entry = dataclasses.replace(CATALOG["mvtec"], archives=(Archive(url[failure], "0" * 64),))
        began = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch(entry, tmp_path / "data", progress=False, timeout=0.5)
        assert time.monotonic() - began < 5

    message = str(caught.value)
    one_sentence(message)
    assert url[failure] in message and str(tmp_path / "data" / entry.folder) in message


@pytest.mark.parametrize("filename", ["evil.tar", "evil.zip"])
def test_archive_members_escaping_the_folder_are_refused(filename, served, tmp_path):
    buffer = io.BytesIO()
    if filename.endswith(".zip"):
        with zipfile.ZipFile(buffer, "w") as bundle:
            bundle.writestr("../escaped.txt", "x")
    else:
        with tarfile.open(fileobj=buffer, mode="w") as bundle:
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 1
            bundle.addfile(info, io.BytesIO(b"x"))
    served.files[filename] = buffer.getvalue()
    archive = Archive(served.url(filename), hashlib.sha256(buffer.getvalue()).hexdigest())
    entry = CatalogEntry("evil", "Evil", "none", "evil", (archive,))

    with pytest.raises(DownloadError, match=r"escaped\.txt"):
        fetch(entry, tmp_path / "data", progress=False)

    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data" / "evil").exists()


def test_zip_archives_are_extracted_too(served, tmp_path, write_png):
    body = _pack("textures.zip", _dtd_root(tmp_path, write_png), "dtd")
    served.files["textures.zip"] = body
    archive = Archive(served.url("textures.zip"), hashlib.sha256(body).hexdigest())
    entry = dataclasses.replace(CATALOG["dtd"], archives=(archive,))

    root = fetch(entry, tmp_path / "data", progress=False)

    assert len(TextureFolder(root / "images").paths) == 2


def test_unknown_dataset_name_lists_the_known_ones(tmp_path, one_sentence):
    with pytest.raises(DownloadError, match="dtd, mvtec, mvtec3d, visa") as caught:
        fetch("mnist", tmp_path)
    one_sentence(str(caught.value))


def test_fetch_into_a_folder_of_another_name_and_the_manual_step_for_it(
    served, archive_of, tmp_path, one_sentence
):
    entry = served.entry("dtd", archive_of("dtd"))
    target = tmp_path / "data" / "textures"

    assert fetch_into(entry, target, progress=False) == target
    assert len(TextureFolder(target / "images").paths) == 2 and not (tmp_path / "data" / "dtd").exists()

    offline = dataclasses.replace(
        entry, archives=(Archive(f"http://127.0.0.1:{_closed_port()}/d.tgz", "0" * 64),)
    )
    with pytest.raises(DownloadError) as caught:
        fetch_into(offline, tmp_path / "other" / "textures", progress=False)
    one_sentence(str(caught.value))
    assert f"move the dtd folder it holds to {tmp_path / 'other' / 'textures'}" in str(caught.value)


# --- readers fetch their dataset into an empty root (dataset.download=auto, the default), also a
# missing one with dataset.download=true; a missing root is a typo until the user says otherwise ---

_READERS = {"mvtec": ("bottle", 3), "mvtec3d": ("foam", 2), "visa": ("candle", 3)}  # category, train images


@pytest.fixture
def serve_catalog(served, archive_of, monkeypatch) -> Callable[[str], CatalogEntry]:
    """Point catalog entry `name` at a tiny archive of its real layout on the local server."""

    def serve(name: str) -> CatalogEntry:
        entry = served.entry(name, archive_of(name))
        monkeypatch.setitem(CATALOG, name, entry)
        return entry

    return serve


@pytest.mark.parametrize("name", sorted(_READERS))
def test_download_true_creates_the_missing_root_and_fetches_into_it(
    name, serve_catalog, dataset_config, tmp_path
):
    serve_catalog(name)
    category, train_images = _READERS[name]
    data_dir = tmp_path / "data"
    cfg = dataset_config(name, data_dir, f"dataset.category={category}", "dataset.download=true")

    splits = instantiate(cfg.dataset.source).splits()

    assert len(splits.train) == train_images and splits.test
    assert (data_dir / CATALOG[name].folder).is_dir()  # the default root is the catalog's folder
    assert _leftovers(data_dir) == []


@pytest.mark.parametrize("name", sorted(_READERS))
def test_a_root_of_another_name_is_fetched_into_exactly_that_folder(
    name, serve_catalog, dataset_config, tmp_path
):
    serve_catalog(name)
    root = tmp_path / "datasets" / f"my_{name}"
    root.mkdir(parents=True)  # an empty root the user made: asked to fetch into it
    cfg = dataset_config(
        name, tmp_path / "data", f"dataset.root={root}", f"dataset.category={_READERS[name][0]}"
    )
    assert cfg.dataset.download == "auto"  # the default: an existing empty root is fetched into

    assert len(instantiate(cfg.dataset.source).splits().train) == _READERS[name][1]
    assert sorted(p.name for p in root.parent.iterdir()) == [DOWNLOADS, root.name]


@pytest.mark.parametrize("name", sorted(_READERS))
def test_download_false_keeps_the_missing_root_error(name, serve_catalog, served, dataset_config, tmp_path):
    serve_catalog(name)
    cfg = dataset_config(name, tmp_path / "data", "dataset.download=false")

    with pytest.raises(DatasetError, match=r"root .* does not exist; pass dataset\.root="):
        instantiate(cfg.dataset.source).splits()
    assert served.requests == [] and not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", sorted(_READERS))
def test_offline_reader_stops_in_seconds_naming_url_and_root(
    name, monkeypatch, dataset_config, tmp_path, one_sentence
):
    url = f"http://127.0.0.1:{_closed_port()}/{CATALOG[name].archives[0].filename}"
    monkeypatch.setitem(CATALOG, name, dataclasses.replace(CATALOG[name], archives=(Archive(url, "0" * 64),)))
    root = tmp_path / "data" / CATALOG[name].folder
    source = instantiate(dataset_config(name, tmp_path / "data", "dataset.download=true").dataset.source)

    began = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        source.splits()
    assert time.monotonic() - began < 5

    assert isinstance(caught.value, UserError)  # the CLI prints it as one line, exit status 2
    one_sentence(str(caught.value))
    assert url in str(caught.value) and f"extract it into {root}" in str(caught.value)


@pytest.mark.parametrize("name", sorted(_READERS))
def test_a_mistyped_root_stops_with_a_did_you_mean_and_creates_and_fetches_nothing(
    name, serve_catalog, served, dataset_config, tmp_path, one_sentence
):
    serve_catalog(name)
    data_dir = tmp_path / "data"
    (data_dir / name).mkdir(parents=True)  # the real root, say /data/mvtec
    typo = data_dir / f"{name}rot"
    cfg = dataset_config(name, data_dir, f"dataset.root={typo}")  # default settings otherwise

    with pytest.raises(DatasetError) as caught:
        instantiate(cfg.dataset.source).splits()

    message = str(caught.value)
    one_sentence(message)
    assert f"dataset.root {typo} does not exist (did you mean {name!r}?)" in message
    assert f"pass dataset.download=true to fetch {CATALOG[name].title} into it" in message
    assert served.requests == [] and sorted(p.name for p in data_dir.iterdir()) == [name]  # no lock either


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_no_lock_file_remains_after_a_download(outcome, served, archive_of, tmp_path):
    entry = served.entry("visa", archive_of("visa"), digest=None if outcome == "succeeds" else "0" * 64)
    data_dir = tmp_path / "data"

    if outcome == "succeeds":
        fetch(entry, data_dir, progress=False)
    else:  # a checksum mismatch: the file came, then the download failed
        with pytest.raises(DownloadError):
            fetch(entry, data_dir, progress=False)

    assert len(served.requests) == 1 and (data_dir / DOWNLOADS).is_dir()  # it did lock and download
    assert list((data_dir / DOWNLOADS).glob("*.lock")) == []


def test_a_bad_download_value_is_one_sentence_when_the_reader_is_built(tmp_path, one_sentence):
    with pytest.raises(DatasetError, match=r"dataset\.download is 'yes'; set it to auto, true or") as caught:
        MVTecAD(tmp_path, "bottle", download="yes")
    one_sentence(str(caught.value))


# --- synthesis.textures=dtd: DTD is fetched on first use, then its images/ are the textures ---


def test_dtd_textures_are_fetched_on_first_use_and_read_from_images(
    serve_catalog, served, dataset_config, tmp_path
):
    serve_catalog("dtd")
    data_dir = tmp_path / "data"
    cfg = dataset_config("demo", data_dir, "+synthesis=default", "synthesis.textures=dtd")
    synthesizer = instantiate(cfg.synthesis)
    source = synthesizer.texture_source
    assert isinstance(source, DTDTextures) and served.requests == []  # nothing fetched by building it

    assert source.description == f"dtd ({data_dir / 'dtd' / 'images'}, 2 images)"
    texture = source.sample(np.random.default_rng(0), 16, 24)
    assert texture.shape == (16, 24, 3) and texture.dtype == np.uint8
    image, mask = synthesizer(
        np.zeros((16, 24, 3), np.float32), np.ones((16, 24), bool), np.random.default_rng(1)
    )
    assert image.shape == (16, 24, 3) and mask.shape == (16, 24)
    assert len(served.requests) == 1


def test_dtd_root_without_images_names_the_setting(tmp_path, one_sentence):
    (tmp_path / "dtd" / "labels").mkdir(parents=True)  # present, so not fetched, but not DTD

    with pytest.raises(DatasetError, match=r"synthesis\.dtd_root") as caught:
        DTDTextures(tmp_path / "dtd").sample(np.random.default_rng(0), 8, 8)
    one_sentence(str(caught.value))
