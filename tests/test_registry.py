"""Registry, manifest, info and CLI: names, errors, costs."""

import json

import pytest
import zoo
from helpers import manifest_entry, write_manifest
from zoo import cli, registry

ARCHS = ("resnet18", "resnet34", "resnet18_cifar", "resnet20", "vgg_small")
SCHEMES = ("fp", "fp_bireal", "bnn", "xnor", "bireal", "rbnn", "bonn", "rbcn", "cbcn")


def test_every_scheme_architecture_pair_is_registered():
    from zoo.architectures import ARCHITECTURES

    restricted = {a.name: a.schemes for a in ARCHITECTURES if a.schemes is not None}
    assert restricted["resnet20_bireal"] == ("rbnn",) and restricted["wrn22"] == ("bonn",)
    only_theirs = {f"{s}_{a}" for a, schemes in restricted.items() for s in schemes}
    assert set(zoo.list_models()) == {f"{s}_{a}" for s in SCHEMES for a in ARCHS} | only_theirs
    assert zoo.list_models("bnn_*") == sorted(f"bnn_{a}" for a in ARCHS)
    assert zoo.list_models("*_resnet20") == sorted(f"{s}_resnet20" for s in SCHEMES)
    assert zoo.list_models("nothing*") == []


def test_unknown_model_names_close_matches():
    with pytest.raises(registry.UnknownModelError, match="bnn_resnet18") as err:
        zoo.load("bnn_resnet81")
    assert "Unknown model 'bnn_resnet81'" in str(err.value)
    with pytest.raises(registry.UnknownModelError):
        zoo.info("resnet18")


def test_pretrained_filter_and_tags_follow_the_manifest(tmp_path, monkeypatch):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"placeholder: only the manifest is read here")
    write_manifest(tmp_path / "manifest.json", [
        manifest_entry("xnor_resnet20", weights, tag="fashion_mnist"),
        manifest_entry("xnor_resnet20", weights, tag="cifar10", input_shape=(32, 32, 3)),
    ])
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    assert zoo.list_models(pretrained=True) == ["xnor_resnet20"]
    assert zoo.list_models("bnn_*", pretrained=True) == []
    assert [e.tag for e in zoo.pretrained_entries("xnor_resnet20")] == ["fashion_mnist", "cifar10"]
    with pytest.raises(registry.UnknownTagError, match="'fashion_mnist', 'cifar10'"):
        zoo.load("xnor_resnet20", weights="imagenet")


def test_malformed_manifest_is_reported(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    monkeypatch.setenv("ZOO_MANIFEST", str(path))
    write_manifest(path, [{"name": "bnn_resnet20", "tag": "x"}])
    with pytest.raises(registry.ManifestError, match="lacks dataset"):
        zoo.list_models(pretrained=True)
    path.write_text("{not json")
    with pytest.raises(registry.ManifestError, match="malformed"):
        registry.manifest_entries()


def _conv_macs(out_hw, k, cin, cout):
    return out_hw * out_hw * k * k * cin * cout


def test_info_costs_match_the_architecture_by_hand():
    details = zoo.info("bnn_resnet20")
    # 18 binary 3x3 convs: 6 at 32x32 (16->16), 6 at 16x16 (first 16->32), 6 at 8x8 (first 32->64)
    binary = (
        6 * _conv_macs(32, 3, 16, 16)
        + _conv_macs(16, 3, 16, 32) + 5 * _conv_macs(16, 3, 32, 32)
        + _conv_macs(8, 3, 32, 64) + 5 * _conv_macs(8, 3, 64, 64)
    )
    assert details["binary_macs"] == binary
    assert details["float_macs"] == _conv_macs(32, 3, 3, 16) + 64 * 10
    assert details["binary_convs"] == 18
    assert details["input_shape"] == [32, 32, 3]
    assert "[0, 255]" in details["input"]
    assert details["method"].startswith("BNN") and details["paper"]

    fp = zoo.info("fp_resnet20")
    assert fp["binary_macs"] == 0 and fp["float_macs"] == binary + details["float_macs"]
    assert fp["parameters"] == details["parameters"]


def test_info_of_imagenet_resnet18():
    details = zoo.info("xnor_resnet18")
    assert details["binary_convs"] == 16
    assert details["binary_macs"] == pytest.approx(1.68e9, rel=0.01)  # Bi-Real ResNet-18 BOPs
    assert details["classes"] == 1000 and details["input_shape"] == [224, 224, 3]


def test_cli_list_and_info(capsys):
    assert cli.main(["list", "xnor_*"]) == 0
    out = capsys.readouterr().out
    assert "xnor_resnet18" in out and "bnn_resnet18" not in out and "XNOR" in out

    assert cli.main(["info", "bnn_resnet20", "--input-shape", "28,28,1", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["input_shape"] == [28, 28, 1] and details["binary_convs"] == 18

    assert cli.main(["info", "bireal_vgg_small"]) == 0
    assert "binary MACs" in capsys.readouterr().out


def test_cli_reports_bad_input(capsys):
    assert cli.main(["info", "rbnn_resnet99"]) == 2
    assert "Unknown model" in capsys.readouterr().err
    assert cli.main(["list", "zzz*"]) == 1
    assert cli.main(["info", "bnn_resnet18", "--input-shape", "8,8,3"]) == 2
    assert "too small" in capsys.readouterr().err


def test_summary_is_larqs(capsys):
    zoo.summary(zoo.to_inference(zoo.load("xnor_resnet20", weights=None, input_shape=(28, 28, 1))))
    out = capsys.readouterr().out
    assert "stage1_block1_conv1" in out and "Ratio of MACs that are binarized" in out


def test_reported_numbers_come_with_their_source():
    reported = zoo.info("bireal_resnet18_cifar")["reported"]
    assert [r["top1"] for r in reported] == [54.92, 63.11, 63.81]
    assert all("Table 3.3" in r["source"] and r["note"].startswith("widths=") for r in reported)
    assert zoo.info("bnn_resnet20")["reported"] == []


def test_keras_applications_style_functions():
    from zoo import models

    model = models.xnor_resnet20(include_top=True, weights=None, input_shape=(28, 28, 1), classes=3)
    assert model.output_shape == (None, 3) and model.name == "xnor_resnet20"
    assert "xnor_resnet20" in dir(models)
    with pytest.raises(AttributeError, match="xnor_resnet20"):
        models.xnor_resnet02


def test_a_manifest_that_cannot_be_found_is_an_error_not_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "missing.json"))
    with pytest.raises(registry.ManifestError, match=r"\$ZOO_MANIFEST names .*missing.json, which is not a file"):
        zoo.load("bnn_resnet20")
    monkeypatch.delenv("ZOO_MANIFEST")
    monkeypatch.setattr(registry, "DEFAULT_MANIFEST", tmp_path / "pretrained" / "manifest.json")
    with pytest.raises(registry.ManifestError, match="is missing: this zoo installation is incomplete"):
        zoo.load("rbnn_resnet18")
    assert zoo.load("rbnn_resnet18", weights=None, input_shape=(32, 32, 3)).name == "rbnn_resnet18"


def test_a_pretrained_entry_whose_file_is_missing_raises(tmp_path, monkeypatch):
    from zoo import weights as weights_io

    weights = tmp_path / "w.h5"
    weights.write_bytes(b"gone before loading")
    write_manifest(tmp_path / "manifest.json", [manifest_entry("bnn_resnet20", weights)])
    weights.unlink()
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    with pytest.raises(weights_io.WeightsError, match="does not exist"):
        zoo.load("bnn_resnet20")


@pytest.mark.parametrize("sha256", [None, "", "abc", "A" * 64])
def test_a_manifest_entry_without_a_valid_sha256_is_refused(tmp_path, monkeypatch, sha256):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"only the manifest is read here")
    write_manifest(tmp_path / "manifest.json", [manifest_entry("bnn_resnet20", weights, sha256=sha256)])
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    with pytest.raises(registry.ManifestError, match="bnn_resnet20/fashion_mnist has no valid sha256"):
        zoo.load("bnn_resnet20")


def test_shipped_manifest_is_inside_the_package():
    assert registry.DEFAULT_MANIFEST.parent == registry.Path(zoo.__file__).resolve().parent / "pretrained"
    assert registry.DEFAULT_MANIFEST.is_file() and registry.manifest_entries()


def test_load_says_which_weights_it_loaded_in_one_line(caplog):
    with caplog.at_level("INFO", logger="zoo"):
        zoo.load("bnn_resnet20")
        zoo.load("bnn_resnet20", include_top=False)
        zoo.load("bnn_resnet20", classes=3)
        zoo.load("bnn_resnet18", input_shape=(32, 32, 3))
        zoo.load("bnn_resnet20", weights=None)
    top1 = next(e for e in registry.manifest_entries() if e.name == "bnn_resnet20").metrics["top1"]
    loaded = (
        "bnn_resnet20: pretrained weights 'fashion_mnist' (trained on fashion_mnist, input_shape=(28, 28, 1), "
        f"10 classes, measured top-1 {top1} %, sha256 verified)"
    )
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("zoo", "INFO", loaded),
        ("zoo", "INFO", loaded + "; feature extractor (include_top=False)"),
        ("zoo", "INFO", loaded + "; new randomly initialised 3-class head"),
        ("zoo", "WARNING", "no pretrained weights for bnn_resnet18 yet; using random initialisation."),
    ]


def test_a_shape_the_weights_do_not_fit_names_the_one_they_need():
    from zoo.loading import WeightsMismatchError

    with pytest.raises(WeightsMismatchError, match=r"need input_shape=\(28, 28, 1\), got \(32, 32, 3\).*weights=None"):
        zoo.load("bnn_resnet20", input_shape=(32, 32, 3))
    with pytest.raises(WeightsMismatchError, match=r"need input_shape=\(28, 28, 1\), got \(32, 32, 1\)"):
        zoo.load("bnn_resnet20", input_shape=(32, 32, 1))
    with pytest.raises(WeightsMismatchError, match=r"need 1-channel input, got input_shape=\(32, 32, 3\)"):
        zoo.load("bnn_resnet20", input_shape=(32, 32, 3), include_top=False)
    assert zoo.load("bnn_resnet20", input_shape=(32, 32, 1), include_top=False).input_shape == (None, 32, 32, 1)
    assert zoo.load("bnn_resnet20", input_shape=(36, 36, 1), classes=4).output_shape == (None, 4)


def test_info_puts_the_papers_numbers_beside_the_shipped_weights_with_their_datasets(capsys):
    accuracy = zoo.info("rbnn_resnet18")["accuracy"]
    paper = [a for a in accuracy if a["source"] == "paper"]
    shipped = [a for a in accuracy if a["source"] == "shipped weights 'fashion_mnist'"]
    assert paper and all(a["dataset"] != "fashion_mnist" for a in paper)
    assert shipped == [{
        "source": "shipped weights 'fashion_mnist'", "dataset": "fashion_mnist", "input_shape": [28, 28, 1],
        "classes": 10, "top1": zoo.pretrained_entries("rbnn_resnet18")[0].metrics["top1"],
        "note": "measured on 10000 test images",
    }]
    assert cli.main(["info", "rbnn_resnet18"]) == 0
    out = capsys.readouterr().out
    assert "compare only within a dataset" in out
    assert any(line.split()[:5] == ["shipped", "weights", "'fashion_mnist'", "fashion_mnist", "(28,"]
               for line in out.splitlines())


def test_pretrained_entries_name_their_outputs_in_order(tmp_path, monkeypatch, capsys):
    entry = registry.pretrained_entry("bnn_resnet20", "fashion_mnist")
    from zoo.data import dataset_info

    assert entry.class_names == dataset_info("fashion_mnist")["class_names"]
    assert zoo.info("bnn_resnet20")["pretrained"][0]["class_names"][9] == "Ankle boot"
    assert cli.main(["info", "bnn_resnet20"]) == 0
    assert "0 T-shirt/top, 1 Trouser" in capsys.readouterr().out

    weights = tmp_path / "w.h5"
    weights.write_bytes(b"only the manifest is read here")
    write_manifest(tmp_path / "manifest.json", [manifest_entry("bnn_resnet20", weights, class_names=["a", "b"])])
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    with pytest.raises(registry.ManifestError, match="class_names must be a list of 10 names"):
        registry.pretrained_entries("bnn_resnet20")
