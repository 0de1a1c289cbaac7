"""Architecture search: spaces, export of searched networks, budget counts, errors, search, serving."""

import json
import random

import larq as lq
import numpy as np
import pytest
import tf_keras as keras
import zoo
from helpers import randomize_batch_norms, random_pixels, relative_error
from larq_compute_engine.tflite.python.interpreter import Interpreter
from zoo import cli, registry
from zoo.export import binary_exports, convert_lce, op_histogram, to_inference
from zoo.search import DOWNSAMPLES, OPS, Budget, BudgetError, Genotype, Node, SearchedNetwork, Stage, get_space
from zoo.search import tuning
from zoo.search.budget import check_reachable, model_costs
from zoo.search.kt import keras_tuner as kt
from zoo.architectures.searched.ops import UnknownOpError, UnsupportedOpError

SHAPE = (28, 28, 1)
TINY_SEARCH = ["--dataset", "fashion_mnist", "--tuner", "random", "--epochs", "1", "--train-images", "96",
               "--val-images", "64", "--batch-size", "32", "--schemes", "bnn,xnor",
               "--ops", "bconv3x3,skip,max_pool3x3"]


@pytest.fixture
def isolated_registry(monkeypatch):
    """Searched models registered by a test do not outlive it."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_ARCHITECTURES", dict(registry._ARCHITECTURES))


def sample(space, seed, **overrides):
    """A random point of the space (Keras Tuner's own sampling), some values overridden."""
    hp = kt.HyperParameters()
    space.candidate(hp)
    rng = random.Random(seed)
    for parameter in hp.space:
        hp.values[parameter.name] = parameter.random_sample(rng.randrange(10**6))
    hp.values.update(overrides)
    return space.candidate(hp)


def edge_ops(space, offset):
    """Edge-op values that walk through the op set, so a few samples use every op."""
    names = [f"node{i}_op{e}" for i in range(1, space.nodes + 1) for e in (1, 2)]
    return {name: list(OPS)[(offset + k) % len(OPS)] for k, name in enumerate(names)}


BNAS, BARS = get_space("bnas"), get_space("bars", ops=list(OPS))
SMALL_BARS = {"stage1_width": 16, "stage2_width": 32, "stage3_width": 64,
              "stage1_cells": 1, "stage2_cells": 1, "stage3_cells": 1}
# Every op, downsampling, stem and default scheme appears in at least one sample below.
SAMPLES = [
    (BNAS, 1, {"scheme": "bnn", "cells": 3, "width": 16, "downsample": "binary_conv1x1", **edge_ops(BNAS, 0)}),
    (BARS, 3, {"scheme": "xnor", "stem": "conv3x3", "stage2_downsample": "float_conv1x1",
               "stage3_downsample": "binary_conv1x1", **SMALL_BARS, **edge_ops(BARS, 0)}),
    (BARS, 4, {"scheme": "bireal", "stem": "conv3x3_s2", "stage2_downsample": "option_a",
               "stage3_downsample": "float_conv1x1", **SMALL_BARS, **edge_ops(BARS, 4)}),
]


def test_the_samples_cover_every_op_downsampling_and_scheme():
    candidates = [sample(space, seed, **values) for space, seed, values in SAMPLES]
    ops = {op for c in candidates for node in c.genotype.stages[0].cell for op in node.ops}
    downsamples = {s.downsample for c in candidates for s in c.genotype.stages[1:]}
    assert ops == set(OPS) and downsamples == set(DOWNSAMPLES)
    assert {c.scheme for c in candidates} == {"bnn", "xnor", "bireal"}


@pytest.mark.parametrize("space, seed, values", SAMPLES, ids=[f"{s.name}-{v['scheme']}" for s, _, v in SAMPLES])
def test_sampled_architectures_export_and_convert_to_bconvs(space, seed, values, fashion_mnist_data_dir):
    candidate = sample(space, seed, **values)
    model = SearchedNetwork("sampled", candidate.genotype, SHAPE, 10)(registry.get_scheme(candidate.scheme))
    randomize_batch_norms(model)
    inference = to_inference(model)
    x = random_pixels(SHAPE, batch=4)
    assert relative_error(model(x, training=False).numpy(), inference(x, training=False).numpy()) <= 1e-4
    binary = [layer for layer in inference.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert binary and len(binary) == len(binary_exports(model)) == model_costs(model)["binary_convs"]
    for layer in binary:
        assert set(np.unique(layer.get_weights()[0])) <= {-1.0, 1.0}, layer.name

    flatbuffer = convert_lce(model)
    ops = op_histogram(flatbuffer)
    assert ops["LceBconv2d"] == len(binary)
    assert ops.get("CONV_2D", 0) == sum(type(layer) is keras.layers.Conv2D for layer in model.layers)
    images, _ = next(iter(zoo.load_dataset("fashion_mnist", "test", batch_size=32, data_dir=fashion_mnist_data_dir)))
    expected = inference.predict(images.numpy(), verbose=0)
    actual = Interpreter(flatbuffer, num_threads=1).predict(images.numpy())
    # As in test_export: LCE's output transform rounds differently from Keras' BN, and an
    # untrained net (no margins) turns a flipped near-zero sign into a different output;
    # the deeper random cells here do that in a few samples (measured: 28/32 within 1e-3).
    per_sample = np.max(np.abs(expected - actual), axis=1)
    assert np.mean(per_sample <= 1e-3) >= 0.75 and np.median(per_sample) <= 1e-5
    assert np.mean(expected.argmax(1) == actual.argmax(1)) >= 0.9


def test_costs_equal_larqs_profile_and_a_count_by_hand():
    # 8x8x1 -> float 3x3 stem (8) -> cell [bconv3x3 + skip] -> binary downsample to 16
    # (bconv3x3/2 + bconv1x1/2 shortcut) -> cell [4-group bconv3x3 + max-pool] -> dense 10.
    genotype = Genotype("conv3x3", (
        Stage(8, 1, (Node((0, 0), ("bconv3x3", "skip")),)),
        Stage(16, 1, (Node((0, 0), ("bgroup3x3", "max_pool3x3")),), downsample="binary_conv1x1"),
    ))
    model = SearchedNetwork("by_hand", genotype, (8, 8, 1), 10)(registry.get_scheme("xnor"))
    costs = model_costs(model)
    binary = 8 * 8 * 9 * 8 * 8 + 4 * 4 * 9 * 8 * 16 + 4 * 4 * 8 * 16 + 4 * (4 * 4 * 9 * 4 * 4)
    floating = 8 * 8 * 9 * 1 * 8 + 16 * 10
    # Larq counts a BN as 2 per channel (fused); the normalisation's mean and std are constants.
    parameters = 72 + 576 + 1152 + 128 + 4 * 144 + 170 + 2 * (8 + 8 + 16 + 16 + 16 + 16)
    assert costs == {"binary_macs": binary, "float_macs": floating, "parameters": parameters, "binary_convs": 7}
    profile = lq.models.ModelProfile(to_inference(model))
    assert costs["binary_macs"] == profile.op_count("mac", 1)
    assert costs["float_macs"] == profile.op_count("mac") - profile.op_count("mac", 1)
    assert costs["parameters"] == profile.weight_count()


def test_costs_agree_with_zoo_info_on_a_registry_model():
    info = zoo.info("bnn_resnet20", input_shape=SHAPE)
    costs = model_costs(zoo.load("bnn_resnet20", weights=None, input_shape=SHAPE))
    assert (costs["binary_macs"], costs["float_macs"]) == (info["binary_macs"], info["float_macs"])


def test_budget_parsing():
    budget = Budget.parse(["binary_macs=20M", "params=0.3M,float_macs=1.5k"])
    assert budget.as_dict() == {"binary_macs": 20e6, "parameters": 3e5, "float_macs": 1500.0}
    assert budget.excess({"binary_macs": 30e6, "parameters": 1e5, "float_macs": 1500}) == pytest.approx(0.5)
    assert budget.excess({"binary_macs": 20e6, "parameters": 3e5, "float_macs": 1000}) <= 0
    with pytest.raises(BudgetError, match="Unknown budget 'flops'.*binary_macs, float_macs, parameters, latency_ms"):
        Budget.parse("flops=3M")
    with pytest.raises(BudgetError, match="positive number"):
        Budget.parse("binary_macs=lots")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown search space 'darts'; valid spaces: bnas, bars"):
        get_space("darts")
    with pytest.raises(UnknownOpError, match="Unknown op 'sep_conv3x3'; valid ops: bconv3x3, bconv5x5, bdil3x3"):
        get_space("bars", ops=["bconv3x3", "sep_conv3x3"])
    with pytest.raises(ValueError, match="Unknown scheme 'xnr'; registered schemes: .*xnor"):
        get_space("bars", schemes=["xnr"])
    with pytest.raises(ValueError, match="'fp' is not binary"):
        get_space("bars", schemes=["fp"])
    with pytest.raises(UnsupportedOpError, match="'rbnn'.*no dilation"):
        get_space("bnas", schemes=["rbnn"])
    assert get_space("bars", schemes=["rbnn"], ops=["bconv3x3", "bgroup3x3", "skip"]).schemes == ("rbnn",)
    with pytest.raises(UnknownOpError, match="Unknown downsample 'pool'"):
        Genotype("conv3x3", (Stage(8, 1, (Node((0,), ("skip",)),)), Stage(16, 1, (Node((0,), ("skip",)),), "pool")))


def test_smallest_architecture_bounds_the_space():
    space = get_space("bars", schemes=["bnn"])
    smallest = space.smallest("binary_macs", "bnn")
    assert smallest.stem == "conv3x3_s2"
    assert [(s.width, s.cells) for s in smallest.stages] == [(16, 1), (32, 1), (64, 1)]
    assert all(not OPS[op].binary for node in smallest.stages[0].cell for op in node.ops)
    least = check_reachable(space, Budget.parse("binary_macs=1M"), SHAPE, 10)["binary_macs"]
    # only the downsampling convs are binary: 3x3/2 convs 16->32 to 7x7 and 32->64 to 4x4
    assert least == 7 * 7 * 9 * 16 * 32 + 4 * 4 * 9 * 32 * 64
    candidate = sample(space, 0, **SMALL_BARS)
    model = SearchedNetwork("s", candidate.genotype, SHAPE, 10)(registry.get_scheme("bnn"))
    assert model_costs(model)["binary_macs"] >= least


def test_a_latency_budget_is_measured_and_an_unreachable_one_refused():
    space = get_space("bars", schemes=["bnn"], ops=["bconv3x3", "skip"])
    with pytest.raises(BudgetError, match=r"meets latency_ms <= 1e-06 .* the smallest needs"):
        check_reachable(space, Budget.parse("latency_ms=0.000001"), SHAPE, 10)


def test_an_unreachable_budget_fails_before_any_training(tmp_path, capsys):
    output = tmp_path / "search"
    status = cli.main(["search", "--space", "bars", *TINY_SEARCH, "--budget", "binary_macs=50k", "-o", str(output)])
    assert status == 2
    error = capsys.readouterr().err
    assert "No architecture of space 'bars' meets binary_macs <= 50k" in error and "smallest needs 521k" in error
    assert not output.exists()


def test_search_trains_every_trial_within_budget_and_serves_the_best(tmp_path, fashion_mnist_data_dir,
                                                                     isolated_registry, monkeypatch):
    output = tmp_path / "search"
    drawn = []
    monkeypatch.setattr(tuning.BinaryHyperModel, "costs",
                        lambda self, model: drawn.append(model_costs(model)) or drawn[-1])
    # Hyperband, 3 epochs, factor 3: three 1-epoch trials, then the best of them continued to epoch 3.
    status = cli.main(["search", "--space", "bars", *TINY_SEARCH, "--tuner", "hyperband", "--epochs", "3",
                       "--max-trials", "4", "--budget", "binary_macs=6M", "--data-dir", fashion_mnist_data_dir,
                       "-o", str(output), "--seed", "4"])
    assert status == 0
    summary = json.loads((output / "summary.json").read_text())
    trials = summary["trials"]
    assert [t["trial_id"] for t in trials] == ["0", "1", "2", "3"] and {t["status"] for t in trials} == {"COMPLETED"}
    # seed 4's oracle proposes candidates on both sides of the budget: those over it were
    # replaced by samples within it, and every trial trained one
    assert any(costs["binary_macs"] > 6e6 for costs in drawn) and len(drawn) > 4
    first_round, continued = trials[:3], trials[3]
    for trial in trials:
        assert not trial["over_budget"] and trial["binary_macs"] <= 6e6 and trial["score"] == trial["val_accuracy"]
        assert 0 <= trial["val_accuracy"] <= 1
    assert [trial["epochs_trained"] for trial in first_round] == [1, 1, 1]
    # the continued trial is the best trained one, on from its checkpoint (epochs 2 and 3)
    trained = first_round
    best_first = max(trained, key=lambda t: t["val_accuracy"])
    assert continued["genotype"] == best_first["genotype"] and continued["scheme"] == best_first["scheme"]
    assert continued["epochs"] == 3 and continued["epochs_trained"] == 2
    best = max(trained + [continued], key=lambda t: t["val_accuracy"])
    assert summary["best"]["trial_id"] == best["trial_id"] and best["trial_id"] in summary["pareto_front"]
    png = (output / "accuracy_vs_binary_macs.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    events = [json.loads(line) for line in (output / "events.jsonl").read_text().splitlines()]
    assert sorted(e["trial_id"] for e in events if e["event"] == "end") == ["0", "1", "2", "3"]

    # The best architecture is served by the registry, by path and by name.
    config = summary["best_config"]
    model = zoo.load(config, weights=None)
    assert model.input_shape[1:] == SHAPE and model.output_shape[-1] == 10
    name = zoo.register_searched(config)
    assert name == summary["best_model"] == f"{best['scheme']}_{json.loads(open(config).read())['name']}"
    assert name in zoo.list_models() and zoo.info(name)["binary_macs"] == best["binary_macs"]
    assert zoo.callbacks(config, 2) == []
    assert op_histogram(convert_lce(zoo.load(name, weights=None)))["LceBconv2d"] == best["binary_convs"]


def test_a_search_where_no_sample_fits_the_budget_says_what_to_change(tmp_path, fashion_mnist_data_dir,
                                                                      monkeypatch):
    from zoo.search import run_search

    monkeypatch.setattr(tuning, "MAX_SAMPLES", 2)
    output = tmp_path / "search"
    # 560k binary MACs: the space's least (521k: no binary cell op) fits, random samples do not
    with pytest.raises(BudgetError) as refused:
        run_search(space="bars", dataset="fashion_mnist", budget="binary_macs=560k", tuner="random", max_trials=2,
                   epochs=1, output_dir=output, schemes=["bnn"], ops=["bconv3x3", "skip", "max_pool3x3"],
                   train_images=96, val_images=64, batch_size=32, data_dir=fashion_mnist_data_dir, verbose=0)
    message = str(refused.value)
    assert message.startswith("No trial was trained: none of 2 trials found an architecture within the budget "
                              "(binary_macs <= 560k) in 2 samples of the space")
    assert "Raise the budget, or narrow the space" in message and str(output) in message
    summary = json.loads((output / "summary.json").read_text())
    assert all(t["over_budget"] and t["binary_macs"] > 560e3 for t in summary["trials"])
    assert summary["best_config"] is None and not (output / "best.json").exists()


@pytest.mark.parametrize("setting, value", [("max_trials", 0), ("epochs", 0), ("val_images", 0), ("batch_size", -1),
                                            ("train_images", 0), ("patience", -1), ("learning_rate", 0.0)])
def test_search_settings_are_checked_before_anything_is_written(setting, value, tmp_path):
    from zoo.search import run_search

    with pytest.raises(ValueError, match=rf"^{setting} \(--{setting.replace('_', '-')}\) must be"):
        run_search(dataset="fashion_mnist", output_dir=tmp_path / "search", **{setting: value})
    assert not (tmp_path / "search").exists()


SEARCHED = {"format": "zoo-searched-architecture", "version": 1, "name": "mine", "scheme": "bnn",
            "input_shape": [28, 28, 1], "classes": 10,
            "genotype": {"stem": "conv3x3_s2", "stages": [
                {"width": 8, "cells": 1, "downsample": None, "cell": [{"inputs": [0], "ops": ["bconv3x3"]}]}]}}


def searched(**changes) -> dict:
    """SEARCHED with ``changes``: top-level fields, or ``stage``/``node`` fields of the first stage/node."""
    config = json.loads(json.dumps(SEARCHED))
    config["genotype"]["stages"][0].update(changes.pop("stage", {}))
    config["genotype"]["stages"][0]["cell"][0].update(changes.pop("node", {}))
    return {**config, **changes}


@pytest.mark.parametrize("config, expected", [
    (searched(node={"inputs": [0.0]}), "genotype.stages[0].cell[0].inputs[0] must be an integer, got 0.0."),
    (searched(stage={"width": True}), "genotype.stages[0].width must be an integer, got true."),
    (searched(stage={"width": 10**7}), "genotype.stages[0].width must be in 1..2048, got 10000000."),
    (searched(stage={"width": 2048, "cells": 64}), "genotype has 2,415,919,104 binary-conv weights, more than the "
                                                   "64,000,000"),
    (searched(input_shape=[28, 28]), "input_shape must have 3 items [height, width, channels], got [28, 28]."),
    (searched(classes="10"), 'classes must be an integer, got "10".'),
    (searched(node={"ops": []}), "genotype.stages[0].cell[0].ops must have 1 to 8 items, got []."),
    (searched(genotype={"stages": []}), "genotype lacks stem."),
    (searched(search={"a": {"b": {"c": {"d": {}}}}}), "search nests deeper than 3 levels."),
], ids=["float-index", "bool-width", "huge-width", "too-many-weights", "2d-input", "text-classes", "no-ops",
        "no-stem", "deep-provenance"])
def test_a_searched_architecture_file_is_checked_against_its_schema(config, expected, tmp_path, isolated_registry,
                                                                      capsys):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(config))
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"zoo info: error: {path}: {expected}") and err.count("\n") == 1, err


def test_a_searched_architecture_nested_200_000_deep_is_refused_in_one_line(tmp_path, isolated_registry, capsys):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(SEARCHED)[:-1] + ', "search": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert cli.main(["info", str(path)]) == 2
    assert capsys.readouterr().err == f"zoo info: error: {path} nests too deeply to be a searched architecture.\n"


def test_a_registered_name_is_not_silently_replaced(tmp_path, isolated_registry):
    genotype = Genotype("conv3x3_s2", (Stage(8, 1, (Node((0,), ("bconv3x3",)),)),))
    config = {"format": "zoo-searched-architecture", "version": 1, "name": "mine", "scheme": "bnn",
              "input_shape": [16, 16, 1], "classes": 4, "genotype": genotype.to_dict()}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(config))
    assert zoo.register_searched(path) == zoo.register_searched(config) == "bnn_mine"
    other = {**config, "genotype": {**config["genotype"], "stem": "conv3x3"}}
    with pytest.raises(ValueError, match="'mine' is already registered"):
        zoo.register_searched(other)
    with pytest.raises(ValueError, match="not found"):
        zoo.load(str(tmp_path / "missing.json"))


def test_a_searched_architecture_trains_with_zoo_train_named_after_itself(tmp_path, fashion_mnist_data_dir,
                                                                           isolated_registry, monkeypatch):
    genotype = Genotype("conv3x3_s2", (Stage(8, 1, (Node((0,), ("bconv3x3",)),)),))
    config = {"format": "zoo-searched-architecture", "version": 1, "name": "mine", "scheme": "bnn",
              "input_shape": [28, 28, 1], "classes": 10, "genotype": genotype.to_dict()}
    path = tmp_path / "searched" / "best.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    status = cli.main(["train", str(path), "--dataset", "fashion_mnist", "--epochs", "1", "--batch-size", "32",
                       "--train-images", "64", "--test-images", "32", "--data-dir", fashion_mnist_data_dir, "--quiet"])
    assert status == 0
    run = tmp_path / "runs" / "bnn_mine-fashion_mnist"
    entry = json.loads((run / "manifest_entry.json").read_text())
    assert entry["name"] == "bnn_mine" and entry["file"] == "bnn_mine-fashion_mnist.h5"
    assert (run / "bnn_mine-fashion_mnist.tflite").stat().st_size > 0
    assert op_histogram((run / "bnn_mine-fashion_mnist.tflite").read_bytes())["LceBconv2d"] == 1
    reloaded = zoo.load(str(path), weights=str(run / entry["file"]))
    assert reloaded.output_shape == (None, 10)
