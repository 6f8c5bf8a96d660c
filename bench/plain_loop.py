"""The sample federation's work as a plain loop: one process, no framework, the sites one after the other.

    python -m bench.plain_loop [--sample-dir sample_data] [--out DIR]

What ``bench/run_breakdown.py`` times the federation against: the same data, models, seed
and rounds, with the app's own training and evaluation functions, but no FeatureCloud
engine, no HTTP, no processes, no waits and no outputs besides ``student.pt``. Every site's
teacher logits are computed once; each round every site trains from the global student in
turn, FedAvg runs in-process, and the global student is evaluated on every site's test set
(the federation does that too). It uses every core, as a script run by hand would.

It prints one line, ``plain_loop_seconds=<s> accuracy=<a>``; ``accuracy`` is the final student's
on all sites' test images together.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

STARTED = time.perf_counter()   # imports count: a script run by hand pays for them too

import torch  # noqa: E402

from app.aggregation import Update, fedavg, to_arrays  # noqa: E402
from app.config import load_config  # noqa: E402
from app.data import load_dataset  # noqa: E402
from app.files import STUDENT_WEIGHTS, save_state_dict  # noqa: E402
from app.model_files import build_model  # noqa: E402
from app.training import compute_logits, evaluate, train_local  # noqa: E402
from app.weights import load_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(sample_dir: Path, out: Path) -> float:
    """Train the federation's student in this process; returns its accuracy on all sites' test images."""
    generic = sample_dir / "generic"
    config = load_config(generic / "config.yml")
    sites = sorted(path for path in sample_dir.iterdir() if path.is_dir() and path != generic)
    torch.manual_seed(config.seed)   # as the coordinator does: the teacher is built first, then the student
    teacher = build_model(generic / config.teacher_model, config.teacher_args, "teacher_model")
    student = build_model(generic / config.student_model, config.student_args, "student_model")
    load_weights(teacher, generic / config.teacher_weights)
    teacher.eval().requires_grad_(False)
    train = {site.name: load_dataset(site / config.train_dataset, "train_dataset") for site in sites}
    test = {site.name: load_dataset(site / config.test_dataset, "test_dataset") for site in sites}
    classes = max(int(data.labels.max()) for data in test.values()) + 1
    logits = {}
    for name in train:
        evaluate(teacher, test[name], classes)
        logits[name] = compute_logits(teacher, train[name])
    global_weights = to_arrays(student.state_dict())
    for round_index in range(config.max_iter):
        updates = []
        for name, data in train.items():
            student.load_state_dict({key: torch.as_tensor(value) for key, value in global_weights.items()})
            train_local(student, data, config, epochs=config.local_epochs, proximal_mu=config.proximal_mu,
                        teacher_logits=logits[name], round_index=round_index)
            updates.append(Update(name, to_arrays(student.state_dict()), len(data)))
        global_weights = to_arrays(fedavg(updates))
        student.load_state_dict({key: torch.as_tensor(value) for key, value in global_weights.items()})
        evaluations = [evaluate(student, data, classes) for data in test.values()]
    save_state_dict(student.state_dict(), out / STUDENT_WEIGHTS)
    correct = sum(e.accuracy * e.samples for e in evaluations)
    return correct / sum(e.samples for e in evaluations)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-dir", type=Path, default=ROOT / "sample_data",
                        help="generic/ and one folder per site (default sample_data/)")
    parser.add_argument("--out", type=Path, default=Path("plain-loop"), help="where student.pt goes")
    args = parser.parse_args(argv)
    accuracy = run(args.sample_dir, args.out)
    print(f"plain_loop_seconds={time.perf_counter() - STARTED:.2f} accuracy={accuracy:.4f}")


if __name__ == "__main__":
    main()
