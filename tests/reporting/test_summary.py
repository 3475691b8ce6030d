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


def _unmasked(category: str, note: str) -> dict:
    record = _record(category, "distill", 0.8)
    record["metrics"] |= {"pixel_auroc": None, "aupro": None, "per_image_pro": None}
    record["pixel_coverage"] = {"note": note}
    return record


def test_pixel_metrics_without_masks_are_a_dash_and_say_why():
    note = "Pixel metrics are not available: none of the 4 anomalous test images has a mask."
    table = format_table([_unmasked("parts", note)])
    assert "| demo | parts | distill | aand | 80.0 | – | – | – |" in table
    assert table.splitlines()[-1] == f"demo parts (distill): {note}"


def test_a_mean_over_a_record_without_pixel_metrics_is_a_dash(tmp_path):
    for record in (_record("a", "distill", 0.9), _unmasked("b", "none has a mask")):
        stage_dir = tmp_path / record["category"] / "distill"
        stage_dir.mkdir(parents=True)
        (stage_dir / "metrics.json").write_text(json.dumps(record))
    table = write_summary(tmp_path)
    assert "| demo | mean | distill | aand | 85.0 | – | – | – |" in table
    assert "demo b (distill): none has a mask" in table
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[2] == "demo,b,distill,aand,80.0,,,," and rows[3] == "demo,mean,distill,aand,85.0,,,,"


def test_complete_coverage_adds_no_line():
    record = _record("a", "distill", 0.5) | {"pixel_coverage": {"images": 4, "note": None}}
    assert format_table([record]) == format_table([_record("a", "distill", 0.5)])
    assert len(format_table([record]).splitlines()) == 3
