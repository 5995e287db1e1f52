"""manage.py routerbench on a small RouteLLM-format directory the test writes itself: the
JSON shape, the held-out learned router (trained through the product's decision log in a
scratch database) beating random, the cascade on GSM8K only, the --train mode, the plot,
and that the scratch database is gone afterwards, also when the run fails. Reads no data
outside the repository."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from signal import SIGTERM

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from controlplane.models import ModelEndpoint, TaskClass
from evaluation.logreg import l2_choose
from evaluation.models import LearnedRouter
from evaluation.routerbench import STRONG, WEAK
from evaluation.services.routerbench import scratch_databases_left
from telemetry.models import DecisionOutcome, DecisionRecord

# The command creates and drops a database of its own: no transaction may be open around it.
scratch = pytest.mark.django_db(transaction=True)

TOPICS = ["orbit", "enzyme", "treaty", "ledger", "voltage", "sonnet"]
FILLER = "consider the following statement carefully and choose the best option".split()


def _mmlu_write(directory: Path, domains: list[str], per_domain: int, seed: int) -> None:
    """Questions that say "integral" or "derivative" are hard for the weak model (it fails
    4 in 5, the strong one 1 in 10); "trivia" ones are failed by both half the time;
    the rest the weak model gets right 9 in 10. Whole domains differ in their words."""
    rng = random.Random(seed)
    (directory / "mmlu").mkdir(parents=True, exist_ok=True)
    for d, domain in enumerate(domains):
        with (directory / "mmlu" / f"mmlu_{domain}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prompt", WEAK, STRONG])
            for i in range(per_domain):
                kind = rng.choice(["hard", "hard", "trivia", "easy", "easy", "easy"])
                words = [*rng.sample(FILLER, 6), TOPICS[d % len(TOPICS)], domain]
                if kind == "hard":
                    words.append(rng.choice(["integral", "derivative"]))
                    weak, strong = rng.random() < 0.2, rng.random() < 0.9
                elif kind == "trivia":
                    words.append("trivia")
                    both = rng.random() < 0.5
                    weak, strong = both, both
                else:
                    weak, strong = rng.random() < 0.9, rng.random() < 0.95
                rng.shuffle(words)
                prompt = " ".join(words) + f" ({i})?\nA. one\nB. two\nAnswer:"
                writer.writerow([prompt, str(weak), str(strong)])


def _gsm8k_write(directory: Path, n: int, seed: int) -> None:
    """Word problems; the weak model's wrong answers mostly hedge or end without a number."""
    rng = random.Random(seed)
    with (directory / "gsm8k_responses.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", WEAK, STRONG, f"{WEAK}_response", f"{STRONG}_response",
                         "reference_answer"])  # fmt: skip
        for _ in range(n):
            a, b = rng.randint(2, 90), rng.randint(2, 90)
            weak = rng.random() < 0.65
            strong = rng.random() < 0.9
            if weak:
                answer = f"{a} + {b} = {a + b}.\n#### {a + b}"
            elif rng.random() < 0.8:
                answer = "I think it might be more than that, it depends on the baskets."
            else:
                answer = f"{a} + {b} = {a + b + 1}.\n#### {a + b + 1}"
            prompt = f"Ann has {a} apples and buys {b} more. How many apples has she now?"
            writer.writerow([prompt, str(weak), str(strong), answer, f"#### {a + b}", a + b])


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    directory = tmp_path / "routellm"
    domains = [f"domain_{c}" for c in "abcdefghij"]
    _mmlu_write(directory, domains, per_domain=60, seed=1)
    _gsm8k_write(directory, 240, seed=2)
    return directory


def _run(*args: str) -> tuple[str, dict[str, object]]:
    out = io.StringIO()
    call_command("routerbench", *args, "--json", stdout=out)
    text = out.getvalue()
    _nothing_left_behind()
    return text, json.loads(text.strip().splitlines()[-1])


def _nothing_left_behind() -> None:
    """No scratch database, and nothing written to the database the command started on."""
    assert scratch_databases_left() == []
    assert not TaskClass.objects.filter(slug__startswith="mmlu-").exists()
    assert not ModelEndpoint.objects.filter(slug__startswith="bench-").exists()
    assert DecisionRecord.objects.count() == 0 and DecisionOutcome.objects.count() == 0
    assert LearnedRouter.objects.count() == 0


@scratch
def test_routerbench_holds_out_domains_and_reports_every_router(
    recording: Path, tmp_path: Path
) -> None:
    target = tmp_path / "results" / "routing_quality.json"
    plot = tmp_path / "curves.html"
    text, results = _run(str(recording), "--out", str(target), "--plot", str(plot))
    assert set(results) == {"mmlu", "gsm8k"}
    mmlu, gsm8k = results["mmlu"], results["gsm8k"]
    assert isinstance(mmlu, dict) and isinstance(gsm8k, dict)
    assert mmlu["prompts"] == 600 and gsm8k["prompts"] == 240
    assert set(mmlu) >= {"random", "length", "learned", "semantic", "oracle"}
    assert "cascade" not in mmlu
    assert {"random", "length", "learned", "semantic", "cascade", "oracle"} <= set(gsm8k)
    for res in (mmlu, gsm8k):
        for router in ("random", "length", "learned", "semantic", "oracle"):
            assert 0.0 <= res[router]["cpt50"] <= 1.0
            assert 0.0 <= res[router]["cpt80"] <= 1.0
    # Held-out domains: the words that make a question hard carry over; the domain does not.
    assert mmlu["learned"]["apgr"] > mmlu["random"]["apgr"] + 0.15
    assert mmlu["learned"]["cpt50"] < 0.4
    assert mmlu["learned"]["brier"] < mmlu["learned"]["brier_base_rate"]
    # The semantic router's examples carry the hard words too.
    assert mmlu["semantic"]["apgr"] > mmlu["random"]["apgr"] + 0.05
    # One router per fold, trained by the product from the decisions recorded for that
    # fold's training prompts (both models graded on each: 4 of 5 folds of 600 prompts,
    # one in five held out by the trainer itself).
    routers = mmlu["learned"]["routers"]
    assert [r["task_class"] for r in routers] == [f"mmlu-f{k}" for k in range(5)]
    for r in routers:
        # Trained (v1), then re-thresholded (v2) to the strong-share target on its traffic.
        assert r["rule"] == "gain" and r["version"] == 2 and 0.0 <= r["threshold"] <= 1.0
        assert set(r["samples"]) == {"bench-weak", "bench-strong"}
        assert 350 <= r["samples"]["bench-weak"] == r["samples"]["bench-strong"] <= 420
    # The engine's decisions at the calibrated threshold: about the targeted share strong
    # (calibrated on the training traffic, measured on held-out domains), and their
    # confidence (the chosen model's predicted success) calibrated better than a coin.
    assert mmlu["learned"]["calibrated_to"] == {"strong_share": 0.5}
    assert 0.3 < mmlu["learned"]["strong_share"] < 0.7
    assert mmlu["learned"]["accuracy"] > mmlu["weak_accuracy"]
    assert mmlu["learned"]["confidence_brier"] < 0.25
    # The cascade reads the weak model's answer: hedges without a number escalate.
    assert gsm8k["cascade"]["apgr"] > gsm8k["random"]["apgr"] + 0.15
    assert gsm8k["cascade"]["strong_share_at_0.5"] > 0.15
    assert json.loads(target.read_text()) == results
    assert "plotly" in plot.read_text()[:5000].lower()
    assert "learned" in text and "APGR" in text


@scratch
def test_routerbench_trains_on_one_directory_and_tests_on_another(tmp_path: Path) -> None:
    train, test = tmp_path / "train", tmp_path / "test"
    _mmlu_write(train, [f"train_{c}" for c in "abcdef"], per_domain=60, seed=3)
    _mmlu_write(test, [f"test_{c}" for c in "abc"], per_domain=60, seed=4)
    _, results = _run(str(test), "--train", str(train))
    mmlu = results["mmlu"]
    assert isinstance(mmlu, dict)
    assert mmlu["prompts"] == 180 and mmlu["held_out"] == "trained on --train"
    assert mmlu["learned"]["apgr"] > mmlu["random"]["apgr"] + 0.15
    assert [r["task_class"] for r in mmlu["learned"]["routers"]] == ["mmlu-f0"]


@scratch
def test_routerbench_drops_its_database_when_the_run_fails(tmp_path: Path) -> None:
    """Too few graded prompts to train a router: the command fails and leaves nothing."""
    _mmlu_write(tmp_path, ["tiny_a", "tiny_b"], per_domain=6, seed=6)
    with pytest.raises(CommandError, match="not enough graded decisions"):
        call_command("routerbench", str(tmp_path), "--folds", "2", stdout=io.StringIO())
    _nothing_left_behind()


@scratch
def test_routerbench_drops_its_database_when_terminated(tmp_path: Path) -> None:
    """``kill`` (SIGTERM) while the command works in its scratch database: it unwinds and
    drops the database before exiting — or, when the signal lands where Python ignores the
    exception (a garbage-collector finaliser), it finishes, cleans up and exits 143 all the
    same. (A recording large enough that the run is still going when the signal arrives.)"""
    _mmlu_write(tmp_path, [f"domain_{c}" for c in "abcdefghij"], per_domain=150, seed=7)
    _gsm8k_write(tmp_path, 600, seed=8)
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "manage.py", "routerbench", str(tmp_path)],
        cwd=root,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not scratch_databases_left(pid=child.pid):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # migrated by now, or migrating: both must be cleaned up
        child.send_signal(SIGTERM)
        assert child.wait(timeout=60) == 128 + SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
    assert scratch_databases_left(pid=child.pid) == []


def test_routerbench_refuses_a_directory_without_data(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no RouteLLM-format data"):
        call_command("routerbench", str(tmp_path), stdout=io.StringIO())
    with pytest.raises(CommandError, match="not a directory"):
        call_command("routerbench", str(tmp_path / "missing"), stdout=io.StringIO())


def test_penalty_chosen_by_grouped_cross_validation() -> None:
    """Pure noise: the strongest penalty wins; a clear signal: a weak one."""
    rng = random.Random(5)
    features, noise, signal, groups = [], [], [], []
    for i in range(600):
        f = {j: rng.gauss(0, 1) for j in range(40)}
        features.append(f)
        noise.append(float(rng.random() < 0.5))
        signal.append(float(f[0] > 0))
        groups.append(f"g{i % 12}")
    grid = (1e-4, 1e-2, 1.0)
    l2_noise, losses = l2_choose(features, np.asarray(noise), groups, 40, grid=grid)
    assert l2_noise == 1.0 and set(losses) == {"0.0001", "0.01", "1"}
    l2_signal, _ = l2_choose(features, np.asarray(signal), groups, 40, grid=grid)
    assert l2_signal < 1.0
