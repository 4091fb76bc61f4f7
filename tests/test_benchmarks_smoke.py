"""The paper-table benchmarks run end to end in --quick mode (a few steps), so they cannot rot silently."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.mark.slow
@pytest.mark.parametrize("script,detectors,tables", [
    ("cascade_ablation", ["faster_rcnn", "cascade"], ("table1", "table2")),
    ("onestage_ablation", ["focal", "con_2_2"], ("aploss_table2", "consistent_table3")),
])
def test_ablation_quick_run_prints_its_tables(script, detectors, tables, tmp_path, capsys):
    module = __import__(script)
    report = module.main(["--quick", "--detectors", *detectors, "--out-dir", str(tmp_path),
                          "--json", str(tmp_path / "report.json")])
    assert all(report[t] for t in tables)
    assert (tmp_path / "report.json").exists()
    assert len(list(tmp_path.glob("quick/*_seed0.json"))) == len(detectors)
    assert os.path.exists(tmp_path / "quick" / f"{script}.png")
    out = capsys.readouterr().out
    assert "mean ± std" in out
    # A second invocation resumes: nothing is trained again.
    module.main(["--quick", "--detectors", *detectors, "--out-dir", str(tmp_path)])
    assert out.count("done before") == 0 and capsys.readouterr().out.count("done before") == len(detectors)
