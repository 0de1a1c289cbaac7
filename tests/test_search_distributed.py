"""Search processes: Keras Tuner's chief + two workers, and resuming a killed search."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

TINY = ["--space", "bars", "--dataset", "fashion_mnist", "--epochs", "1", "--train-images", "64",
        "--val-images", "64", "--batch-size", "32", "--schemes", "bnn", "--ops", "bconv3x3,skip,max_pool3x3"]


def search_command(output, data_dir, *extra):
    return [sys.executable, "-m", "zoo.cli", "search", *TINY, "--data-dir", data_dir, "-o", str(output), *extra]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def events(output) -> list[dict]:
    path = output / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trial_statuses(output) -> dict[str, str]:
    """Each trial's status as the oracle saved it."""
    return {
        json.loads(path.read_text())["trial_id"]: json.loads(path.read_text())["status"]
        for path in (output / "trials").glob("trial_*/trial.json")
    }


def run(process: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def test_a_chief_and_two_workers_run_every_trial_exactly_once(tmp_path, fashion_mnist_data_dir):
    output, port, trials = tmp_path / "distributed", free_port(), 4
    command = search_command(output, fashion_mnist_data_dir, "--tuner", "bayesian", "--max-trials", str(trials))

    def start(tuner_id):
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": str(port)}
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    chief = start("chief")
    workers = [start("worker0"), start("worker1")]
    worker_outputs = [run(worker) for worker in workers]
    chief_output = run(chief)

    ended = [e for e in events(output) if e["event"] == "end"]
    expected = [str(i) for i in range(trials)]
    assert sorted(e["trial_id"] for e in ended) == expected  # each trial ran to its end once
    assert {e["tuner_id"] for e in ended} == {"worker0", "worker1"}  # shared between the workers
    assert all(e["status"] == "COMPLETED" for e in ended)
    assert trial_statuses(output) == dict.fromkeys(expected, "COMPLETED")
    for worker, text in zip(("worker0", "worker1"), worker_outputs):
        assert f"[{worker}] trial" in text and "Best architecture" not in text  # workers do not report
    summary = json.loads((output / "summary.json").read_text())  # the chief does
    assert summary["counts"] == {"trials": trials, "trained": trials, "over_budget": 0, "failed": 0}
    assert "Best architecture" in chief_output and (output / "best.json").exists()


def test_a_killed_search_resumes_from_its_results_dir(tmp_path, fashion_mnist_data_dir):
    output, trials = tmp_path / "resumed", 3
    command = search_command(output, fashion_mnist_data_dir, "--tuner", "random", "--max-trials", str(trials))
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while True:  # kill it inside a trial, once an earlier trial has finished
        seen = events(output)
        started_after_an_end = [e for e in seen if e["event"] == "start" and any(
            f["event"] == "end" and f["time"] <= e["time"] for f in seen)]
        if started_after_an_end:
            break
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"the first search ended (status {first.returncode}) before it could be killed: {seen}")
        time.sleep(0.2)
    first.kill()  # SIGKILL: nothing of the search gets to clean up
    first.wait()
    before = events(output)
    done_before = {e["trial_id"] for e in before if e["event"] == "end"}
    interrupted = {e["trial_id"] for e in before if e["event"] == "start"} - done_before
    assert done_before and len(interrupted) == 1 and len({e["trial_id"] for e in before}) < trials

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming the search in {output}" in resumed.stdout
    after = events(output)
    ended = sorted(e["trial_id"] for e in after if e["event"] == "end")
    assert ended == [str(i) for i in range(trials)]  # every trial finished once, none twice
    starts = [e["trial_id"] for e in after if e["event"] == "start"]
    assert all(starts.count(t) == 1 for t in done_before)  # finished trials were not run again
    assert all(starts.count(t) == 2 for t in interrupted)  # the killed one was run again
    assert trial_statuses(output) == {str(i): "COMPLETED" for i in range(trials)}
    assert json.loads((output / "summary.json").read_text())["counts"]["trials"] == trials
