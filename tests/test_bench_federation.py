"""Smoke tests of bench.noniid, bench.privacy and the other federation benches, run as subprocesses
with tiny settings.

They check each table's structure (columns, one row per configuration, accuracies in [0, 1])
and the results file, never the size of the figures.
"""
import re
import subprocess
import sys

import pytest
import yaml

from app.config import SECTION, KDConfig
from app.results import chance_margin
from scripts.devdata.idx import DEFAULT_MNIST
from tests.conftest import REPO, cut_site, folder_federation, generic_dir

pytestmark = pytest.mark.slow
MNIST = str(DEFAULT_MNIST)


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", f"bench.{script}", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done


def parse_table(output: str) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of the table after the header's blank line (cells split on 2+ spaces)."""
    lines = output.split("\n\n", 1)[1].strip().splitlines()
    columns, *rows = (re.split(r"\s{2,}", line.strip()) for line in lines)
    assert all(len(row) == len(columns) for row in rows), rows
    return columns, rows


def assert_fractions(rows: list[list[str]], first: int, last: int) -> None:
    for row in rows:
        assert all(0.0 <= float(cell) <= 1.0 for cell in row[first:last]), row


@pytest.fixture
def small_samples(tmp_path):
    """A sample_data/ with the real generic folder and 200/100 images of c1 and c2."""
    root = tmp_path / "samples"
    generic_dir(root / "generic")
    for site in ("c1", "c2"):
        cut_site(site, root / site, n_train=200, n_test=100)
    return root


@pytest.mark.skipif(not DEFAULT_MNIST.is_dir(), reason="needs MNIST")
def test_noniid_table_has_every_split_and_strategy_on_mnist(tmp_path):
    results = tmp_path / "out" / "noniid.txt"
    done = run_bench("noniid", "--per-site", "150", "--per-site-test", "60", "--rounds", "1", "--alphas", "0.3",
                     "--mnist-dir", MNIST, "--results", str(results))
    assert results.read_text() == done.stdout
    assert "the 30,000 training images the sample teacher did not see" in done.stdout
    columns, rows = parse_table(done.stdout)
    assert columns == ["split", "strategy", "accuracy", "sites mean", "site1", "site2", "site3", "seconds"]
    assert [row[:2] for row in rows] == [[split, strategy] for split in ("IID", "Dirichlet 0.3")
                                         for strategy in ("FedAvg", "FedProx", "centralized")]
    assert_fractions(rows, 2, 7)
    assert all(float(row[7]) > 0 for row in rows)


def test_noniid_falls_back_to_the_sample_sites_and_says_so(tmp_path, small_samples):
    done = run_bench("noniid", "--per-site", "500", "--rounds", "1", "--alphas", "0.5", "--sites", "2",
                     "--mnist-dir", str(tmp_path / "no_mnist"), "--sample-dir", str(small_samples),
                     "--results", str(tmp_path / "noniid.txt"))
    assert f"NO MNIST in {tmp_path / 'no_mnist'}: falling back to the sample sites c1, c2" in done.stdout
    assert "2 sites, 200 training and 100 test images per site on average (500/1,000 requested" in done.stdout
    columns, rows = parse_table(done.stdout)
    assert columns == ["split", "strategy", "accuracy", "sites mean", "site1", "site2", "seconds"]
    assert len(rows) == 6
    assert_fractions(rows, 2, 6)


def test_privacy_table_has_the_plain_smpc_and_dp_rows(tmp_path, small_samples):
    results = tmp_path / "privacy.txt"
    done = run_bench("privacy", "--rounds", "1", "--epsilons", "10", "--laplace-epsilons", "1000",
                     "--clipping", "0.5", "--sample-dir", str(small_samples), "--results", str(results))
    assert results.read_text() == done.stdout
    assert re.search(r"L2 norm median \d", done.stdout)
    columns, rows = parse_table(done.stdout)
    assert columns == ["privacy", "noise", "epsilon", "clipping", "noise/change", "accuracy", "c1", "c2", "outputs",
                       "seconds"]
    assert [row[:3] for row in rows] == [["off (FedAvg)", "-", "-"], ["SMPC", "-", "-"],
                                         ["off, round 1 jittered 1e-07", "-", "-"],
                                         ["DP, clipping only", "gauss", "1e+12"], ["DP", "gauss", "10"],
                                         ["DP", "laplace", "1000"]]
    assert [row[3] for row in rows[3:5]] == ["L2 0.5", "L2 0.5"]   # --clipping is used
    assert rows[5][3].startswith("L1 ")
    assert all(row[8] == "finite" for row in rows)   # the app keeps noised students' outputs finite
    assert_fractions(rows, 5, 8)


def test_convergence_ends_with_its_two_figures(tmp_path, small_samples):
    results = tmp_path / "convergence.txt"
    done = run_bench("convergence", "--per-site", "100", "--per-site-test", "20", "--federations", "0.5:2",
                     "--recipes", "seed + fedadam,defaults", "--max-rounds", "1",
                     "--mnist-dir", str(tmp_path / "no_mnist"), "--sample-dir", str(small_samples),
                     "--results", str(results))
    assert results.read_text() == done.stdout
    header, table, summary = done.stdout.strip().split("\n\n")
    assert "NO MNIST" in header and "seed + fedadam: 1x1 epochs, batch 256" in header
    columns, *rows = (re.split(r"\s{2,}", line.strip()) for line in table.splitlines())
    assert columns == ["federation", "recipe", "KD", "no KD", "central", "KD-central", "KD-noKD", "2SE", "seconds"]
    assert [row[:2] for row in rows] == [["Dir 0.5, 2 sites", "seed + fedadam"], ["Dir 0.5, 2 sites", "defaults"]]
    assert_fractions(rows, 2, 5)
    figures = re.fullmatch(r"max_gap_to_central_pp=(-?\d+\.\d\d) worst_kd_minus_baseline_pp=(-?\d+\.\d\d)",
                           summary.splitlines()[-1])
    assert figures, summary
    gap, worst = (float(value) for value in figures.groups())
    defaults = rows[1]   # the last line speaks of the 'defaults' rows only
    assert gap == pytest.approx(-float(defaults[5]), abs=0.011)
    assert worst == pytest.approx(float(defaults[6]), abs=0.011)


def test_convergence_runs_the_photo_sample_on_all_its_test_photos(tmp_path):
    """The photo federation: image folders beside generic/, its image keys kept under every recipe, and the
    federation and the pooled central run both scored on every site's test photos."""
    photos = tmp_path / "photos"
    sites = [dict(source="c1", n_train=40, n_test=30), dict(source="c2", n_train=40, n_test=30, lacking=(3,))]
    folder_federation(photos, sites, image_size=28, channels=1, normalize="federated")
    missing = subprocess.run([sys.executable, "-m", "bench.convergence", "--federations", "0.5:2,photo",
                              "--photo-sample", str(tmp_path / "none")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode != 0 and "python -m scripts.make_photo_sample --out" in missing.stderr
    results = tmp_path / "convergence.txt"
    done = run_bench("convergence", "--federations", "photo", "--photo-recipes", "sample,defaults", "--max-rounds",
                     "1", "--photo-sample", str(photos), "--results", str(results))
    assert results.read_text() == done.stdout
    header, table, summary = done.stdout.strip().split("\n\n")
    assert "image_size 28, channels 1, normalize federated" in header
    counts = re.search(r"photo sample: site1 40: (\[.*\]); site2 (\d+): (\[.*\])", header)
    assert counts and eval(counts.group(3))[3] == 0 and sum(eval(counts.group(3))) == int(counts.group(2)) < 40
    columns, *rows = (re.split(r"\s{2,}", line.strip()) for line in table.splitlines())
    assert [row[:2] for row in rows] == [["photo sample", "sample"], ["photo sample", "defaults"]]
    assert_fractions(rows, 2, 5)
    tests = sum(1 for _ in photos.glob("site*/test/*/*"))
    for row in rows:   # two standard errors over all the test photos of both sites
        kd, baseline = float(row[2]), float(row[3])
        assert float(row[7]) == pytest.approx(100 * chance_margin(kd, baseline, tests), abs=0.006)
    assert summary.splitlines()[-1].startswith("max_gap_to_central_pp=")


def test_quick_start_table_has_the_baseline_smpc_and_scarce_rows(tmp_path, small_samples):
    results = tmp_path / "quick_start.txt"
    done = run_bench("quick_start", "--rounds", "1", "--scarce", "50", "--sample-dir", str(small_samples),
                     "--mnist-dir", str(tmp_path / "no_mnist"), "--results", str(results))
    assert results.read_text() == done.stdout
    assert f"NO MNIST in {tmp_path / 'no_mnist'}: falling back to the sample sites c1, c2" in done.stdout
    columns, rows = parse_table(done.stdout)
    assert columns == ["run", "train/site", "distilled", "alone", "gain", "chance", "seconds"]
    assert [row[:2] for row in rows] == [["sample", "200"], ["sample, use_smpc", "200"], ["50 images per site", "50"]]
    for row in rows:
        assert 0 <= float(row[2].rstrip("%")) <= 100, row
    for row in (rows[0], rows[2]):   # with the baseline: its accuracy, the gain and its chance margin
        distilled, alone = (float(cell.rstrip("%")) for cell in row[2:4])
        assert float(row[4]) == pytest.approx(distilled - alone, abs=0.011) and row[5].startswith("±")
    assert rows[1][3:6] == ["-", "-", "-"]


def test_augment_measures_both_teachings_and_three_federations_per_seed(tmp_path):
    """bench.augment on two small folders of MNIST PNG files with the sample teacher and student, two seeds
    in two worker processes."""
    photos = tmp_path / "photos"
    folder_federation(photos, [dict(source="c1", n_train=40, n_test=30), dict(source="c2", n_train=40, n_test=30)])
    output = tmp_path / "augment.txt"
    done = run_bench("augment", "--photos", str(photos), "--rounds", "1", "--local-epochs", "1", "--views", "2",
                     "--timed-epochs", "1", "--seeds", "0", "1", "--jobs", "2", "--output", str(output))
    assert output.read_text() == done.stdout
    assert "40 images × 2 views × 10 classes × 2 bytes = 1.6 KB of float16 teacher logits" in done.stdout
    sample = yaml.safe_load((photos / "generic" / "config.yml").read_text())[SECTION]
    defaults = {key: KDConfig.model_fields[key].default for key in ("learning_rate", "lr_schedule")}
    assert sample["learning_rate"] != defaults["learning_rate"]   # so the line below shows the override
    assert f"learning_rate {defaults['learning_rate']}, lr_schedule {defaults['lr_schedule']}" in done.stdout
    assert "60 test images" in done.stdout
    rows = re.findall(r"^ +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +([+-][\d.]+) +([+-][\d.]+) +([\d-]+/[\d-]+/[\d-]+) "
                      r"+(\d+/\d+/\d+)$", done.stdout, re.MULTILINE)
    assert [row[0] for row in rows] == ["0", "1"]
    accuracies = [[float(cell) for cell in row[1:4]] for row in rows]
    for (c, d, e), row in zip(accuracies, rows):
        assert all(0 <= value <= 100 for value in (c, d, e))
        assert float(row[4]) == pytest.approx(c - d, abs=0.016) and float(row[5]) == pytest.approx(c - e, abs=0.016)
    last = re.fullmatch(r"views_vs_online=([\d.]+) augment_gain_pp=(-?[\d.]+) views_vs_online_pp=(-?[\d.]+)",
                        done.stdout.splitlines()[-1])
    assert last and float(last.group(1)) > 0
    assert float(last.group(2)) == pytest.approx(sum(c - d for c, d, _ in accuracies) / 2, abs=0.02)
    assert float(last.group(3)) == pytest.approx(sum(c - e for c, _, e in accuracies) / 2, abs=0.02)
