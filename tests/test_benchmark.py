"""`make benchmark PROTOCOL=paper` end to end: MVTec AD is fetched from a local mirror (a tiny archive
in MVTec layout on 127.0.0.1), both selections run next to RD mode, and the report has the gains."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aand_lightning.config.checks import check_config
from aand_lightning.config.command_line import compose_checked
from aand_lightning.data.demo import ensure_category

ROOT = Path(__file__).resolve().parents[1]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_paper_benchmark_runs_from_a_served_archive(tmp_path, smoke, authors_every_epoch):
    category = ensure_category(tmp_path / "src", "brick", image_size=64)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(archive, "w:xz") as bundle:
        bundle.add(category, "brick")  # MVTec's archive holds the category folders at its top level
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = tmp_path / "catalog.json"
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    mirror.write_text(json.dumps({"mvtec": [{"url": url, "digest": digest}]}))
    root = tmp_path / "data" / "mvtec_anomaly_detection"
    root.mkdir(parents=True)  # an empty folder given with --root is fetched into (dataset.download=auto)
    tiny = [
        *[o for o in smoke if not o.startswith("logger=")], "dataset.categories=[brick]",
        "synthesis.textures=procedural", *authors_every_epoch[1:], f"paths.cache_dir={tmp_path}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            [sys.executable, "benchmarks/run.py", "--protocol", "paper", "--datasets", "mvtec",
             "--root", f"mvtec={root}", "--output", str(tmp_path / "results"), "--runs", str(tmp_path),
             *tiny],
            cwd=ROOT, capture_output=True, text=True, timeout=1500,
            env={**os.environ, "AAND_CATALOG": str(mirror)},
        )  # fmt: skip
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "brick" / "train" / "good").is_dir()  # fetched from the mirror, checksum verified
    report = next((tmp_path / "results").glob("*-paper.md")).read_text()
    for label in ("clean: no test-set selection", "authors: selected on the test set"):
        assert f"## mvtec (`experiment=paper_mvtec`), {label}" in report
    assert report.count("| brick | AAND |") == 2 and report.count("| brick | RD (RAA off) |") == 2
    assert report.count("the paper reports image AUROC +1.0, PRO +1.0") == 2


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "mvtec3d"])
def test_the_vit_benchmark_composes_every_run_it_makes(dataset, tmp_path):
    """`make benchmark PROTOCOL=paper_vit`: each system's and selection's command line composes to the
    ViT recipe on the dataset and passes the config checks (the runs themselves need the data and
    OpenAI's weights: the paper benchmark above runs the same script end to end)."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    experiment = bench.PROTOCOLS["paper_vit"][dataset]
    for system in bench.SYSTEMS:
        for _, selection in bench.SELECTIONS["paper_vit"]:
            overrides = bench.train_overrides(
                system, experiment, dataset, tmp_path, [*selection, "trainer=cpu"]
            )
            cfg = compose_checked("train", overrides, sweep=True)
            check_config(cfg)
            assert cfg.dataset.name == dataset and cfg.backbone.family == "vit" and cfg.seed == 111
            assert cfg.backbone.student.kind == "vit_decoder"
