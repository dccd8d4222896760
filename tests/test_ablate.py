"""python/ablate.py end to end on tiny data (two settings, one short epoch): the table, the
picture and the JSON of every run, and a rerun that resumes without redoing finished runs."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--train-size", "64", "--test-size", "32", "--batch-size", "32", "--width", "4",
        "--image-size", "16", "--eval-epochs", "2", "--no-progress", "--epochs", "1"]


def _ablate(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "python" / "ablate.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=str(cwd))


def test_head_study_smoke_writes_table_png_json_and_resumes(tmp_path):
    run = tmp_path / "head"
    cmd = ["--study", "head", "--only", "none head;nonlinear head", "--run-dir", str(run), *TINY]
    out = _ablate(cmd, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[run 1 of 2]" in out.stdout and "[run 2 of 2]" in out.stdout
    study = json.loads((run / "study.json").read_text())
    assert study["study"] == "head" and set(study["runs"]) == {"shapes/none head", "shapes/nonlinear head"}
    for key, head in (("shapes/none head", "none"), ("shapes/nonlinear head", "nonlinear")):
        r = study["runs"][key]
        assert r["config"]["head"] == head and r["config"]["epochs"] == 1
        assert set(r["results"]) == {"h", "g"}  # evaluated on h and on g(h)
        for res in r["results"].values():
            assert 0 <= res["top1"] <= res["top5"] <= 100
        assert r["final_loss"] is not None and r["seconds"] > 0
    # the none head has g(h) = h: the same features, the same classifier, the same accuracy
    none = study["runs"]["shapes/none head"]["results"]
    assert none["h"] == none["g"]
    table = (run / "study.md").read_text()
    assert "| none head |" in table and "| nonlinear head |" in table and "g(h)" in table
    assert (run / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun of the same command redoes nothing
    again = _ablate(cmd, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs (2 already done)" in again.stdout and "pretraining:" not in again.stdout
    assert json.loads((run / "study.json").read_text())["runs"] == study["runs"]
    # other settings in the same run directory are refused, not mixed in
    other = _ablate(["--study", "head", "--run-dir", str(run), *TINY[:-1], "2"], tmp_path)
    assert other.returncode != 0 and "holds a study with other settings" in other.stderr


@pytest.fixture(scope="module")
def ablate():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "python"))
        yield importlib.import_module("ablate")


def test_augment_study_runs_an_asymmetric_pair_and_draws_the_heat_map(tmp_path, ablate, capsys):
    run = tmp_path / "aug"
    assert ablate.main(["--study", "augment", "--only", "crop;sobel+rotate", "--run-dir", str(run),
                        *TINY]) == 0
    study = json.loads((run / "study.json").read_text())
    assert study["runs"]["shapes/sobel+rotate"]["transforms"] == ["sobel", "rotate"]
    table = (run / "study.md").read_text()
    assert "| first \\ second |" in table
    row = next(line for line in table.splitlines() if line.startswith("| sobel |"))
    assert row.count("-") == 6  # one of seven cells measured in that row
    assert (run / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("study, names", [
    ("loss", ["random init", "NT-Xent", "NT-Logistic", "NT-Logistic (semi-hard)",
              "margin triplet", "margin triplet (semi-hard)"]),
    ("temperature", ["random init"] + [f"t={t}" for t in (0.05, 0.1, 0.2, 0.5, 1.0)]),
])
def test_study_settings_are_the_papers_rows(ablate, study, names):
    assert sorted(s.name for s in ablate.study_settings(study, False)) == sorted(names)


def test_study_settings_sizes(ablate):
    assert len(ablate.study_settings("augment", False)) == 1 + 49  # 7 alone + 42 ordered pairs
    color = ablate.study_settings("color", False)
    assert sum(s.kind == "supervised" for s in color) == sum(s.kind == "simclr" for s in color) == 5
    batch = ablate.study_settings("batch", True)
    assert {s.kind for s in batch} == {"random", "supervised", "simclr"}


def test_flags_the_study_sets_are_refused(ablate):
    with pytest.raises(SystemExit, match="--resume is set by the study"):
        ablate.main(["--study", "head", "--resume", "x"])
    with pytest.raises(SystemExit, match="no setting named"):
        ablate.main(["--study", "head", "--only", "mlp head", *TINY])
