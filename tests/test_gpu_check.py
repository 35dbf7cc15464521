"""scripts/gpu_check.py cannot wait for a GPU to find out it is broken: a dry run of its whole path on
the CPU, on the tiny dataset, every number it reports present (GPU memory reads as nan there)."""

from __future__ import annotations

import sys

from tests.conftest import load_script


def test_gpu_check_dry_run_writes_its_report(kaggle_folder, tmp_path, monkeypatch):
    from tests.test_evaluation_sets import with_years

    with_years(kaggle_folder, year=2015)
    gpu_check = load_script("gpu_check")
    output = tmp_path / "gpu.md"
    monkeypatch.setattr(sys, "argv", [
        "gpu_check.py", f"data.root={kaggle_folder}", "backbone=test_tiny", "backbone.image_size=32",
        "data.num_workers=0", "data.batch_size=8", "labels.min_count=1", "data.out_of_time_years=[2015]",
        "~data.eval_sets.cross_resolution", f"+data.eval_sets.sharp={{_target_:fashion.data.EvalSource,root:{kaggle_folder}}}", f"paths.output_dir={tmp_path}",
        "--allow-cpu", "--precisions", "bf16-mixed", "--steps", "2", "--warmup", "1", "--infer-batch", "4",
        "--infer-batches", "2", "--epochs", "1", "--catalogue-size", "480", "--output", str(output)])
    gpu_check.main()
    text = output.read_text()
    assert "| bf16-mixed |" in text and "CPU (dry run)" in text
    row = next(line for line in text.splitlines() if line.startswith("| bf16-mixed |")).split("|")[2:-1]
    loop, bare, ratio = (float(cell) for cell in row[:3])
    # img/s are printed as whole numbers and the ratio to 2 decimals: the ratio must lie within what the
    # rounded speeds allow (on the CPU they are small numbers, so rounding alone moves loop/bare by a few %)
    assert loop > 0 and bare > 0
    assert (loop - 0.5) / (bare + 0.5) - 0.005 <= ratio <= (loop + 0.5) / (bare - 0.5) + 0.005
    assert "1 epoch(s), " in text and "Projected for the whole catalogue (480 products)" in text
    table = text.split("| split |")[1].splitlines()
    assert "gender" in table[0] and table[2].startswith("| val |") and table[3].startswith("| test |")
    assert "nan" not in table[3]
    assert table[4].startswith("| out_of_time |") and table[5].startswith("| sharp |")
