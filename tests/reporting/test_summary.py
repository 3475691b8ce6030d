import json

from aand_lightning.reporting.summary import collect, format_table, write_summary


def _record(category: str, stage: str, auroc: float) -> dict:
    metrics = {"image_auroc": auroc, "pixel_auroc": 0.9, "aupro": 0.8, "per_image_pro": 0.7}
    return {"dataset": "demo", "category": category, "stage": stage, "map": "aand", "metrics": metrics}


def test_summary_collects_jobs_and_adds_the_mean(tmp_path):
    for category, auroc in (("a", 0.9), ("b", 0.7)):
        stage_dir = tmp_path / "distill" / "demo" / category / "seed0" / "distill"
        stage_dir.mkdir(parents=True)
        (stage_dir / "metrics.json").write_text(json.dumps(_record(category, "distill", auroc)))
    assert [r["category"] for r in collect(tmp_path)] == ["a", "b"]
    table = write_summary(tmp_path)
    assert "| demo | mean | distill | aand | 80.0 | 90.0 | 80.0 | 70.0 |" in table
    assert (tmp_path / "summary.md").read_text().strip() == table
    assert (tmp_path / "summary.csv").read_text().count("\n") == 4


def test_single_record_has_no_mean_row():
    assert "mean" not in format_table([_record("a", "distill", 0.5)])
