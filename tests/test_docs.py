"""README.md and docs/ work as written: snippets run, command lines parse, links resolve.

Every fenced ```python block runs (the blocks of one page in order, in one namespace, in a
fresh interpreter in a temporary directory); every command line of a ```bash block parses
against the argument parser of the program it calls (``zoo``, ``python -m ...``,
``python path.py``), with the model and dataset names it gives checked against the registry.
A block is skipped only when the line before its fence says ``<!-- no-test: reason -->``;
``<!-- slow -->`` moves a python block to the slow test. The README's model table must be
``scripts/model_table.py``'s output, and every docs page (and heading anchor) the code cites
must exist.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo import registry
from zoo.data import SUPPORTED_DATASETS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: programs a documented command line may call that are not this project's (not parsed)
EXTERNAL = {"adb", "apt-get", "sudo", "tfds", "tensorboard", "pip", "source", "cd", "git", "tail", "cat"}
#: modules run with ``python -m`` that are not this project's
EXTERNAL_MODULES = {"pytest", "pip", "venv"}
README_LIMIT_BYTES = 10 * 1024
TABLE_START, TABLE_END = "<!-- model-table:start -->", "<!-- model-table:end -->"

_FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
_ANNOTATION = re.compile(r"^<!--\s*(no-test|slow)\s*(?::\s*(.+?))?\s*-->$")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CITATION = re.compile(r"docs/[\w/.-]+\.md(?:#[\w-]+)?")
#: the documents the project was written from, which are not in the repository
_OUTSIDE = re.compile(r"(?<![\w/-])(methods|stack-notes)\.md")


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    annotation: str | None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page, each with the annotation on the line before."""
    blocks, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        before = lines[index - 1].strip() if index else ""
        annotation = _ANNOTATION.match(before)
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{index + 1}: unclosed code block"
        blocks.append(Block(page, index + 1, opening.group(1).lower(), "\n".join(lines[index + 1:end]),
                            annotation.group(1) if annotation else None))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]


def test_skipped_blocks_say_why():
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.strip().startswith("<!-- no-test"):
                assert _ANNOTATION.match(line.strip()).group(2), f"{page}:{number}: no-test without a reason"


# -- python snippets ----------------------------------------------------------------------
RUNNER = r"""
import json, sys, traceback
pages = json.loads(sys.argv[1])
failures = []
for page in pages:
    namespace = {"__name__": "__doc_snippet__"}
    for where, code in page:
        try:
            exec(compile(code, where, "exec"), namespace)
        except BaseException:
            failures.append(where + "\n" + traceback.format_exc(limit=-3))
            break  # later blocks of the page build on this one
print("\n@@FAILURES@@" + json.dumps(failures))
"""


def run_snippets(blocks: list[Block], cwd: Path, env: dict, timeout: float) -> list[str]:
    """Runs the python blocks, page by page, in one fresh interpreter; returns the failures."""
    pages: dict[Path, list[tuple[str, str]]] = {}
    for block in blocks:
        pages.setdefault(block.page, []).append((str(block), block.code))
    result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(list(pages.values()))], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert "@@FAILURES@@" in result.stdout, f"the snippet runner died:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.rsplit("@@FAILURES@@", 1)[1])


@pytest.fixture
def snippet_env(tmp_path, fashion_mnist_data_dir):
    for folder in ("benchmarks", "pretrained", "scripts"):  # paths the pages name, relative to the repository
        (tmp_path / folder).symlink_to(ROOT / folder)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TFDS_DATA_DIR": fashion_mnist_data_dir, "ZOO_HOME": str(tmp_path / "zoo_home"),
            "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}


def _python_blocks(slow: bool) -> list[Block]:
    runnable = [b for b in ALL_BLOCKS if b.language == "python" and b.annotation != "no-test"]
    pages_with_slow = {b.page for b in runnable if b.annotation == "slow"}
    if slow:  # a slow block's page runs whole: it may build on the blocks before it
        return [b for b in runnable if b.page in pages_with_slow]
    return [b for b in runnable if b.annotation != "slow"]


def test_python_snippets_run(tmp_path, snippet_env):
    blocks = _python_blocks(slow=False)
    assert blocks
    failures = run_snippets(blocks, tmp_path, snippet_env, timeout=600)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_slow_python_snippets_run(tmp_path, snippet_env):
    blocks = _python_blocks(slow=True)
    if not blocks:
        pytest.skip("no block is marked slow")
    failures = run_snippets(blocks, tmp_path, snippet_env, timeout=1800)
    assert not failures, "\n\n".join(failures)


# -- command lines ------------------------------------------------------------------------
class Parsed(Exception):
    """Raised by the patched ``ArgumentParser.parse_args`` once a command line has parsed."""

    def __init__(self, namespace):
        super().__init__()
        self.namespace = namespace


def command_lines(block: Block) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    text = block.code.replace("\\\n", " ")
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


def _without_keywords(model: str) -> str:
    return model.split(":", 1)[0]  # a benchmark's "bnn_resnet20:width_multiplier=4"


def _is_file_argument(value: str) -> bool:
    return "/" in value or value.endswith((".json", ".tflite", ".h5"))


def check_names(namespace: argparse.Namespace) -> None:
    """The registered models and datasets a parsed command names exist."""
    known = set(zoo.list_models())
    names = []
    is_zoo = getattr(namespace, "command", None) is not None  # elsewhere --name / --recipe mean other things
    for key in ("model", "name", "teacher") if is_zoo else ("model", "teacher"):
        value = getattr(namespace, key, None)
        if isinstance(value, str) and not _is_file_argument(value):
            names.append(value)
    for key in ("models", "vs"):
        names += [_without_keywords(v) for v in getattr(namespace, key, None) or [] if not _is_file_argument(v)]
    unknown = [n for n in names if n not in known]
    assert not unknown, f"unknown model(s) {unknown}"
    dataset = getattr(namespace, "dataset", None)
    assert dataset is None or dataset in SUPPORTED_DATASETS, f"unknown dataset {dataset!r}"
    recipe = getattr(namespace, "recipe", None) if is_zoo else None
    assert recipe is None or recipe in {s.name for s in registry.schemes()}, f"unknown recipe {recipe!r}"


def parse_command(words: list[str], monkeypatch) -> argparse.Namespace | None:
    """Parses one documented command line with the parser of the program it runs (None:
    an external program). Fails the test when it does not parse."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    program, args = words[0], words[1:]
    if program == "zoo":
        from zoo import cli

        run, argv = (lambda: cli.main(args)), ["zoo", *args]
    elif program == "bash":
        assert (ROOT / args[0]).is_file(), f"no script {args[0]}"
        subprocess.run(["bash", "-n", str(ROOT / args[0])], check=True)
        return None
    elif program in ("python", "python3") and args[:1] == ["-m"]:
        module = args[1]
        if module.split(".")[0] in EXTERNAL_MODULES:
            return None
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        run, argv = (lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)), [module, *args[2:]]
    elif program in ("python", "python3"):
        path = ROOT / args[0]
        assert path.is_file(), f"no script {args[0]}"
        run, argv = (lambda: runpy.run_path(str(path), run_name="__main__")), [str(path), *args[1:]]
    else:
        assert program in EXTERNAL, f"{program!r} is neither this project's program nor a known external one"
        return None
    monkeypatch.setattr(sys, "argv", argv)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            run()
    except Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return None
        pytest.fail(f"{' '.join(words)}: does not parse (exit {exit_.code}): {stderr.getvalue().strip()}")
    pytest.fail(f"{' '.join(words)}: ran without parsing any arguments")


BASH_BLOCKS = [b for b in ALL_BLOCKS if b.language in ("bash", "sh", "shell") and b.annotation != "no-test"]


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=str)
def test_command_lines_parse(block, monkeypatch):
    for words in command_lines(block):
        namespace = parse_command(words, monkeypatch)
        if namespace is not None:
            try:
                check_names(namespace)
            except AssertionError as err:
                pytest.fail(f"{block}: {' '.join(words)}: {err}")


def test_the_parse_check_catches_a_wrong_flag(monkeypatch):
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse_command(["zoo", "train", "bnn_resnet20", "--dataset", "fashion_mnist", "--no-such-flag"], monkeypatch)
    namespace = parse_command(["zoo", "train", "bnn_resnt20", "--dataset", "fashion_mnist"], monkeypatch)
    with pytest.raises(AssertionError, match="unknown model"):
        check_names(namespace)


# -- links, citations, the README ---------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(page: Path) -> set[str]:
    headings, inside_code = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside_code = not inside_code
        elif not inside_code and line.startswith("#"):
            headings.append(slug(line.lstrip("#")))
    return set(headings)


def check_reference(target: Path, anchor: str | None, where: str) -> None:
    assert target.exists(), f"{where}: {target.relative_to(ROOT)} does not exist"
    if anchor:
        assert anchor in anchors(target), f"{where}: no heading #{anchor} in {target.relative_to(ROOT)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for link in _LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", link):
            continue
        path, _, anchor = link.partition("#")
        check_reference((page.parent / path).resolve() if path else page, anchor or None, str(page.relative_to(ROOT)))


def test_code_cites_only_docs_in_the_repository():
    sources = [p for folder in ("zoo", "training", "benchmarks", "scripts", "tests")
               for p in (ROOT / folder).rglob("*.py") if p.is_file()]
    stale = [f"{p.relative_to(ROOT)}" for p in sources if _OUTSIDE.search(p.read_text())]
    assert not stale, f"cite docs/methods/<method>.md, not the spec outside the repository: {stale}"
    for source in sources:
        for citation in _CITATION.findall(source.read_text()):
            path, _, anchor = citation.partition("#")
            check_reference(ROOT / path, anchor or None, str(source.relative_to(ROOT)))


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_model_table_is_the_generated_one(monkeypatch):
    monkeypatch.setenv("ZOO_MANIFEST", str(ROOT / "pretrained" / "manifest.json"))
    spec = importlib.util.spec_from_file_location("model_table", ROOT / "scripts" / "model_table.py")
    model_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_table)
    readme = (ROOT / "README.md").read_text()
    assert TABLE_START in readme and TABLE_END in readme
    shown = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == model_table.manifest_table(registry.manifest_entries()), (
        "README.md's model table is stale: paste the output of `python scripts/model_table.py` between its markers")
