"""Installing and importing zoo: the wheel serves its weights, install.sh picks a supported
Python, ``import zoo`` works after TensorFlow or Keras, and starts without noise."""

import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from zoo import _env, registry

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, cwd, env=None, python=sys.executable, timeout=600) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter whose environment is not yet set up by zoo."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([python, "-c", textwrap.dedent(code)], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_serves_every_pretrained_entry_offline(tmp_path):
    source = tmp_path / "source"  # built from a copy: an in-tree build would write build/ into the repo
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=900)
    wheel, = (tmp_path / "dist").glob("zoo-*.whl")
    entries = registry.manifest_entries()
    packed = set(zipfile.ZipFile(wheel).namelist())
    assert {f"zoo/pretrained/{e.file}" for e in entries} | {"zoo/pretrained/manifest.json"} <= packed

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # TensorFlow and the rest come from this environment (nothing is downloaded); zoo from the wheel.
    Path(purelib, "this_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = _python(f"""
        import numpy as np, zoo
        from pathlib import Path
        assert Path(zoo.__file__).is_relative_to({str(venv)!r}), zoo.__file__
        for entry in zoo.registry.manifest_entries():
            zoo.weights.fetch(entry.source, entry.sha256)  # the sha256 of every shipped file
        model = zoo.load("bnn_resnet20")
        np.save("stem.npy", model.get_layer("stem_conv").get_weights()[0])
    """, cwd=elsewhere, python=python, env={"ZOO_OFFLINE": "1", "ZOO_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr
    assert "zoo: bnn_resnet20: pretrained weights 'fashion_mnist'" in run.stderr
    with h5py.File(REPO / "pretrained" / "bnn_resnet20-fashion_mnist.h5", "r") as shipped:
        kernel = shipped["stem_conv"]["stem_conv"]["kernel:0"][()]
    np.testing.assert_array_equal(np.load(elsewhere / "stem.npy"), kernel)


def _fake_python(directory: Path, name: str, version: str, externally_managed: bool = False) -> None:
    """An executable answering install.sh's probe as a Python ``version`` would."""
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version} {int(externally_managed)}'\n")
    path.chmod(0o755)


def _install_plan(tmp_path, *interpreters, flag="--plan") -> subprocess.CompletedProcess:
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    bin_dir.mkdir(parents=True)
    tools.mkdir()
    for tool in ("dirname", "cat"):
        (tools / tool).symlink_to(shutil.which(tool))
    for interpreter in interpreters:
        _fake_python(bin_dir, *interpreter)
    return subprocess.run(["/bin/bash", str(REPO / "scripts" / "install.sh"), flag],
                          env={"PATH": f"{bin_dir}:{tools}"}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("interpreters, expected", [
    ([("python3", "3.11")], "current python3"),
    ([("python3", "3.13"), ("python", "3.12")], "current python"),
    ([("python3", "3.12", True)], "venv python3"),  # PEP 668: pip may not install into it
    ([("python3", "3.13"), ("python3.11", "3.11"), ("python3.10", "3.10")], "venv python3.11"),
    ([("python3.13", "3.13"), ("python3.10", "3.10")], "venv python3.10"),
])
def test_install_picks_a_supported_python(tmp_path, interpreters, expected):
    plan = _install_plan(tmp_path, *interpreters)
    assert plan.returncode == 0, plan.stderr
    mode, python = plan.stdout.split()
    assert f"{mode} {Path(python).name}" == expected and Path(python).parent == tmp_path / "bin"
    # .ci/run and quickstart.sh run zoo with this one
    installed_for = _install_plan(tmp_path / "again", *interpreters, flag="--python").stdout.strip()
    assert installed_for == str(REPO / ".venv" / "bin" / "python") if mode == "venv" else installed_for.endswith(
        f"again/bin/{Path(python).name}")


def test_install_without_a_supported_python_says_what_to_do(tmp_path):
    plan = _install_plan(tmp_path, ("python3", "3.13"), ("python3.9", "3.9"))
    assert plan.returncode == 1 and plan.stdout == ""
    assert "zoo needs CPython 3.10, 3.11 or 3.12" in plan.stderr
    assert "found python3 3.13 on PATH" in plan.stderr
    assert "sudo apt-get install python3.12 python3.12-venv" in plan.stderr and "pyenv install 3.12" in plan.stderr


def test_setup_states_the_supported_pythons():
    setup = (REPO / "setup.cfg").read_text()
    assert "python_requires = >=3.10,<3.13" in setup
    assert all(f"Python :: 3.{minor}\n" in setup for minor in (10, 11, 12))


@pytest.mark.parametrize("first", ["import tensorflow as tf", "import keras"])
def test_zoo_imported_after_tensorflow_or_keras_uses_tf_keras(tmp_path, first):
    run = _python(f"""
        {first}
        import numpy as np, tensorflow as tf, tf_keras, zoo
        assert tf.keras.layers.Dense is tf_keras.layers.Dense
        model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(np.zeros((2, 28, 28, 1)), np.zeros(2), verbose=0)
        import keras
        print(keras.__version__, keras.layers.Dense(2)(np.ones((1, 3), np.float32)).shape)
    """, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0].startswith("3.") and "(1, 2)" in run.stdout


@pytest.mark.parametrize("first", ["import tensorflow as tf; tf.keras.layers", "from tensorflow.keras import layers"])
def test_zoo_after_keras_3_is_bound_as_tf_keras_fails_at_once_saying_what_to_do(tmp_path, first):
    run = _python(f"{first}\nimport zoo", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == f"ImportError: {_env.KERAS_3_ALREADY_BOUND}"
    assert "set TF_USE_LEGACY_KERAS=1 before importing tensorflow" in _env.KERAS_3_ALREADY_BOUND


def test_start_up_prints_only_zoos_line_and_can_be_silenced(tmp_path):
    run = _python("""
        import logging, sys, zoo
        zoo.load("bnn_resnet20", weights=None)
        print("-- pretrained", file=sys.stderr, flush=True)
        zoo.load("bnn_resnet20")
        print("-- silenced", file=sys.stderr, flush=True)
        logging.getLogger("zoo").setLevel(logging.WARNING)
        zoo.load("bnn_resnet20")
        print("-- application logging", file=sys.stderr, flush=True)
        logging.getLogger("zoo").setLevel(logging.NOTSET)
        logging.basicConfig()
        zoo.load("bnn_resnet18", input_shape=(32, 32, 3))
    """, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == "-- pretrained"
    assert lines[1].startswith("zoo: bnn_resnet20: pretrained weights 'fashion_mnist' (trained on fashion_mnist")
    assert lines[2:] == [
        "-- silenced", "-- application logging",
        "WARNING:zoo:no pretrained weights for bnn_resnet18 yet; using random initialisation.",
    ]


def test_reading_a_dataset_or_converting_leaves_the_applications_logging_unconfigured(tmp_path, fashion_mnist_data_dir):
    """TFDS and TF's converter log through absl, which configures root logging when it has no handler: after
    zoo's data layer the root logger must be as the application left it, and zoo's own
    line keep its form (it was printed as ``INFO:zoo:...`` in the main job)."""
    run = _python(f"""
        import logging, sys, zoo
        for images, labels in zoo.load_dataset("fashion_mnist", "test", batch_size=8, take=8,
                                               data_dir={fashion_mnist_data_dir!r}):
            pass
        print("root handlers:", logging.getLogger().handlers, file=sys.stderr, flush=True)
        zoo.convert("fp_resnet20", {str(tmp_path / "fp.tflite")!r}, verify_samples=8, progress=None,
                    data_dir={fashion_mnist_data_dir!r})
        print("root handlers:", logging.getLogger().handlers, file=sys.stderr, flush=True)
        zoo.load("bnn_resnet20")
    """, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == "root handlers: []"
    assert lines[-2] == "root handlers: []"  # nor does a conversion (TF's converter logs through absl)
    assert lines[-1].startswith("zoo: bnn_resnet20: pretrained weights 'fashion_mnist'")


def test_native_log_lines_below_the_level_are_dropped():
    stamp = "0000 00:00:1796518217.880514    5358"
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        f"I{stamp} port.cc:153] oneDNN custom operations are on.\n"
        f"W{stamp} loader.cc:7] a warning\n"
        f"E{stamp} cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        f"E{stamp} other.cc:1] a real error\n"
        "text that is not a native log line\n"
    )
    assert _env.kept_native_log(text, 2, cuda_driver_installed=False) == (
        f"E{stamp} other.cc:1] a real error\ntext that is not a native log line\n"
    )
    assert _env.kept_native_log(text, 2, cuda_driver_installed=True).count("cuInit") == 1
    assert _env.kept_native_log(text, 0, cuda_driver_installed=True) == text
