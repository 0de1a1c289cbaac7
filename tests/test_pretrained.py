"""The shipped pretrained weights: present, verified, within the size budget, and each
reproduces its stated accuracy when users load it."""

import json
import os
from pathlib import Path

import pytest

import zoo
from zoo import registry
from zoo.weights import sha256_file
from training import publish

#: the training issue's list: one ResNet-20 per method at the same budget, and the README's example
SHIPPED = [f"{method}_resnet20" for method in ("fp", "bnn", "xnor", "bireal", "rbnn", "bonn", "rbcn", "cbcn")] + [
    "rbnn_resnet18"
]
TAG = "fashion_mnist"
REPO = Path(__file__).resolve().parent.parent
SIZE_BUDGET = 40 * 2**20


def shipped_entry(name):
    return registry.pretrained_entry(name, TAG)


@pytest.mark.parametrize("name", SHIPPED)
def test_listed_with_its_file_checksum_and_command(name):
    entry = shipped_entry(name)
    assert name in zoo.list_models(pretrained=True)
    assert entry.dataset == TAG and entry.classes == 10 and entry.input_shape == (28, 28, 1)
    assert sha256_file(entry.source) == entry.sha256
    assert entry.size == os.path.getsize(entry.source)
    assert entry.command.startswith(f"zoo train {name} --dataset {TAG}")
    assert 10 < entry.metrics["top1"] <= 100 and entry.metrics["test_images"] == 10_000


def test_pretrained_directory_within_budget():
    directory = registry.manifest_path().parent
    total = sum(path.stat().st_size for path in directory.iterdir() if path.is_file())
    assert total < SIZE_BUDGET, f"pretrained/ holds {total / 2**20:.1f} MiB"
    files = {entry.file for entry in registry.manifest_entries()}
    assert files == {path.name for path in directory.glob("*.h5")}, "every weights file has one entry and vice versa"


#: binary ResNet-20s shipped from a longer schedule than the ranking budget, as the held-out
#: images chose, each with the committed results file that holds both schedules' runs
LONGER_SCHEDULE = {name: "schedule_length_fashion_mnist"
                   for name in ("bnn_resnet20", "xnor_resnet20", "bireal_resnet20", "rbnn_resnet20")}
BINARY_RESNET20 = [name for name in SHIPPED[:-1] if registry.get_model_spec(name).scheme.binary]
#: the binary ResNet-20s shipped at the ranking budget, and the results file that ranks them beside bnn_resnet20
RANKED = [name for name in BINARY_RESNET20 if name not in LONGER_SCHEDULE]
RANKING_RESULTS = "same_budget_fashion_mnist"
BUDGET_FLAGS = ("--epochs", "--train-images", "--val-images", "--batch-size", "--seed")


def budget_flags(command):
    words = command.split()
    return {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i] in BUDGET_FLAGS}


def ranking_budget() -> dict:
    """The budget flags the shipped binary ResNet-20s share, at which methods are ranked."""
    budgets = {json.dumps(budget_flags(shipped_entry(name).command), sort_keys=True) for name in RANKED}
    assert len(budgets) == 1, budgets
    return json.loads(budgets.pop())


def test_full_budget_entries_share_one_budget():
    """Every binary ResNet-20 trained on the whole training split (no ``--train-images``), and
    they compare methods fairly: the same epochs, held-out images, batch and seed, whatever
    each method's recipe. fp_resnet20 is the full-precision reference, on its own budget;
    LONGER_SCHEDULE's entries are ranked by their shorter runs (below)."""
    for name in BINARY_RESNET20:
        assert "--train-images" not in budget_flags(shipped_entry(name).command), f"{name} trained on part of it"
    assert ranking_budget()["--epochs"] and set(LONGER_SCHEDULE) <= set(SHIPPED)
    assert len(RANKED) >= 2


@pytest.mark.parametrize("name", RANKED)
def test_an_entry_at_the_ranking_budget_is_ranked_beside_bnn_at_that_budget(name):
    """The ranking results file holds the shipped run itself and at least two bnn_resnet20 seeds
    of the same budget, so the docs rank the method at equal epochs with BNN's spread."""
    runs = json.loads((REPO / "benchmarks" / "results" / f"{RANKING_RESULTS}.json").read_text())["runs"].values()
    entry = shipped_entry(name)
    [shipped] = [run for run in runs if run["command"] == entry.command]
    assert round(100 * shipped["test_top1_after_bn_recalibration"], 2) == entry.metrics["top1"]
    baselines = [run for run in runs if run["model"] == "bnn_resnet20" and run["budget"] == shipped["budget"]]
    assert len({run["seed"] for run in baselines}) >= 2


@pytest.mark.parametrize("name", sorted(LONGER_SCHEDULE))
def test_an_entry_from_a_longer_schedule_beat_the_ranking_budget_on_held_out_images(name):
    """Its results file holds the shipped run and the same command at the ranking budget's epochs
    (the run the methods are ranked against); the shipped one ended higher on the held-out images."""
    runs = json.loads((REPO / "benchmarks" / "results" / f"{LONGER_SCHEDULE[name]}.json").read_text())["runs"].values()
    entry = shipped_entry(name)
    [shipped] = [run for run in runs if run["command"] == entry.command]
    assert round(100 * shipped["test_top1_after_bn_recalibration"], 2) == entry.metrics["top1"]
    epochs, ranking_epochs = budget_flags(entry.command)["--epochs"], ranking_budget()["--epochs"]
    assert int(epochs) > int(ranking_epochs)
    shorter_command = entry.command.replace(f"--epochs {epochs} ", f"--epochs {ranking_epochs} ")
    [shorter] = [run for run in runs if run["command"] == shorter_command]
    assert shipped["held_out_accuracy"][-1] > shorter["held_out_accuracy"][-1]


def test_every_entry_held_images_out_to_choose_its_recipe():
    """The test split only measures: each shipped run held training images out (``--val-images``)."""
    for entry in registry.manifest_entries():
        assert entry.training["held_out_images"] > 0 and "--val-images" in budget_flags(entry.command), entry.name


@pytest.mark.parametrize("name", SHIPPED)
def test_reloaded_weights_reproduce_the_stated_accuracy(name, fashion_mnist_data_dir):
    entry = shipped_entry(name)
    model = zoo.load(name, weights=TAG)
    metric = publish.check_metric(publish.CHECK_IMAGES)
    measured = publish.top1_on_first(model, TAG, publish.CHECK_IMAGES, data_dir=fashion_mnist_data_dir)
    assert abs(measured - entry.metrics[metric]) <= 1.0, (measured, entry.metrics)
