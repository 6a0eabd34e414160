"""The README and the docs site: every shell and Python block is run by a test or says why not, every
command line in them parses against the real commands, and the site builds strictly and renders.

A block is marked on the line right before its fence:

- ``<!-- run by: tests/test_x.py::test_name -->``: that test runs it (it reads the page), or
  ``<!-- run by: .ci/run -->``: CI runs each of its commands as written;
- ``<!-- not run: the reason -->``: it cannot run offline or cheaply here (a download, a server for minutes).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml

from emotion_exp.cli import cli
from tests.conftest import REPO_ROOT

PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", *(REPO_ROOT / "docs").glob("*.md")])
CODE_LANGUAGES = {"", "bash", "sh", "shell", "console", "python", "py", "pycon"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")
MARK = re.compile(r"^<!--\s*(?P<kind>run by|not run):\s*(?P<what>.*?)\s*-->$")
THIS_TEST = "tests/test_docs.py::test_the_cheap_blocks_run_as_written"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    mark: tuple[str, str] | None

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with the mark on the line before its opening fence."""
    found = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        closing = re.compile(rf"^ *{re.escape(opening['fence'])}\s*$")
        end = next((i for i in range(index + 1, len(lines)) if closing.match(lines[i])), len(lines))
        indent = len(opening["indent"])
        code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        mark = MARK.match(lines[index - 1].strip()) if index else None
        language = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        found.append(Block(page, index + 1, language, code, (mark["kind"], mark["what"]) if mark else None))
        index = end + 1
    return found


def code_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page) if block.language in CODE_LANGUAGES]


def marked(target: str) -> list[Block]:
    return [block for block in code_blocks() if block.mark == ("run by", target)]


def commands(block: Block) -> list[list[str]]:
    """The block's shell commands as argument lists: continuations joined, comments dropped, split at && and |."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    found = []
    pending = ""
    for line in joined.splitlines():
        pending += line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote that continues on the next line, as `python -c '...'` does
            pending += "\n"
            continue
        pending = ""
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", "|", ";"):
                if command:
                    found.append(command)
                command = []
            else:
                command.append(word)
    return found


def test_the_pages_have_code_blocks_to_check() -> None:
    """The parser finds the blocks (a parser that found none would pass every test below)."""
    found = code_blocks()
    assert len(found) >= 20, [str(block) for block in found]
    assert {block.language for block in found} >= {"bash", "python"}
    assert any(block.page.name == "README.md" for block in found)


def test_every_shell_and_python_block_is_run_by_a_test_or_says_why_not() -> None:
    unmarked = [str(block) for block in code_blocks() if block.mark is None]
    assert not unmarked, (
        "blocks with neither '<!-- run by: tests/test_x.py::test_name -->' nor '<!-- not run: reason -->' "
        f"on the line before them: {unmarked}"
    )
    no_reason = [str(block) for block in code_blocks() if block.mark and not block.mark[1]]
    assert not no_reason, f"marks without a reason or a test: {no_reason}"


def test_each_run_by_mark_names_a_test_that_reads_the_page() -> None:
    """A 'run by' mark is checked, not trusted: the test exists and reads that page (or CI runs the commands)."""
    ci = {line.strip() for line in (REPO_ROOT / ".ci/run").read_text().splitlines()}
    wrong = []
    for block in code_blocks():
        if block.mark is None or block.mark[0] != "run by":
            continue
        target = block.mark[1]
        if target == ".ci/run":
            missing = [shlex.join(c) for c in commands(block) if shlex.join(c) not in ci and " ".join(c) not in ci]
            if missing:
                wrong.append(f"{block}: .ci/run has no line {missing}")
            continue
        path, _, name = target.partition("::")
        test_file = REPO_ROOT / path
        if not test_file.is_file() or not re.search(rf"^def {re.escape(name)}\(", test_file.read_text(), re.MULTILINE):
            wrong.append(f"{block}: no test {target}")
        elif target != THIS_TEST and str(block.page.relative_to(REPO_ROOT)) not in test_file.read_text():
            wrong.append(f"{block}: {path} does not read {block.page.relative_to(REPO_ROOT)}")
    assert not wrong, wrong


def test_the_cheap_blocks_run_as_written(tmp_path: Path) -> None:
    """The blocks marked for this test run in a fresh folder, as a user would type them."""
    cheap = marked(THIS_TEST)
    assert cheap, f"no block is marked '<!-- run by: {THIS_TEST} -->'"
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in cheap:
        if block.language in ("python", "py"):
            argv = [sys.executable, "-c", block.code]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", block.code]
        result = subprocess.run(
            argv, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{block} failed:\n{block.code}\n{result.stdout}\n{result.stderr}"


def _emotion_exp_arguments(command: list[str]) -> list[str] | None:
    """The arguments after the program: `emotion-exp ...`, `python -m emotion_exp ...`, torchrun's `-m emotion_exp`."""
    if command[0] == "emotion-exp":
        return command[1:]
    if "-m" in command and command[command.index("-m") + 1 : command.index("-m") + 2] == ["emotion_exp"]:
        return command[command.index("-m") + 2 :]
    return None


def test_every_emotion_exp_command_in_the_docs_parses(capsys) -> None:
    """Every `emotion-exp` line of every block, run or not, names a real stage and real options of the right types."""
    wrong = []
    for block in code_blocks():
        for command in commands(block):
            arguments = _emotion_exp_arguments(command)
            if arguments is None or "--help" in arguments:
                continue
            while arguments and arguments[0] in ("--verbose", "--debug"):
                arguments = arguments[1:]
            stage = cli.commands.get(arguments[0]) if arguments else None
            if stage is None:
                wrong.append(f"{block}: {shlex.join(command)}: no such stage")
                continue
            try:
                stage.make_context(arguments[0], arguments[1:])
            except click.ClickException as error:
                wrong.append(f"{block}: {shlex.join(command)}: {error.format_message()}")
    assert not wrong, wrong


def test_every_mlflow_run_in_the_docs_names_a_real_entry_point_and_parameters() -> None:
    entry_points = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]
    wrong = []
    for block in code_blocks():
        for command in commands(block):
            if command[:2] != ["mlflow", "run"]:
                continue
            entry = command[command.index("-e") + 1] if "-e" in command else "main"
            parameters = [command[i + 1].split("=", 1)[0] for i, word in enumerate(command) if word == "-P"]
            if entry not in entry_points:
                wrong.append(f"{block}: {shlex.join(command)}: no entry point {entry}")
                continue
            unknown = [name for name in parameters if name not in entry_points[entry].get("parameters", {})]
            if unknown:
                wrong.append(f"{block}: {shlex.join(command)}: {entry} has no parameter {unknown}")
    assert not wrong, wrong


def indented_code(page: Path) -> list[int]:
    """Lines that open an indented code block: 4 spaces after a blank line that follows a plain paragraph."""
    found, in_fence, previous = [], False, ""
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            in_fence = not in_fence
        after_paragraph = previous and not previous.startswith(" ") and not re.match(r"([-*+]|\d+\.)\s", previous)
        if not in_fence and after_paragraph and not lines[number - 2].strip() and re.match(r" {4,}\S", line):
            found.append(number)
        if line.strip():
            previous = line
    return found


def test_code_is_fenced_so_that_it_can_be_marked() -> None:
    indented = [f"{page.relative_to(REPO_ROOT)}:{line}" for page in PAGES for line in indented_code(page)]
    assert not indented, f"indented code blocks (use a fenced ```bash or ```python block with its mark): {indented}"


def test_the_readme_stays_short() -> None:
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 150


def readme_section(name: str) -> str:
    """A section of the README between its snippet markers, which the quickstart includes."""
    text = (REPO_ROOT / "README.md").read_text()
    start, end = f"<!-- --8<-- [start:{name}] -->\n", f"<!-- --8<-- [end:{name}] -->"
    assert start in text and end in text, f"README.md has no section {name} to include"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_every_stage_has_a_row_in_the_readmes_stage_table() -> None:
    rows = [re.match(r"\| `([^`]+)` \|", line) for line in readme_section("stages").splitlines()[2:]]
    assert all(rows), "a row of the README's stage table does not start with | `stage` |"
    assert sorted(row[1] for row in rows if row) == sorted(cli.commands), "one row per stage"


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, missing anchors or pictures, and pages outside the nav fail the build (as in .ci/run)."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reference = {path.stem for path in (tmp_path / "site" / "reference").glob("*.html")}
    assert reference == set(cli.commands), "one reference page per entry point"
    probe = (tmp_path / "site" / "reference" / "probe.html").read_text()
    assert "--pooling" in probe and "mlflow run . -e probe" in probe
    # The quickstart shows the README's stage and results tables, included from the one copy.
    home = (tmp_path / "site" / "index.html").read_text()
    assert "<td><code>learning-curve</code></td>" in home and "0.845 [0.785, 0.890]" in home
    assert "--8&lt;--" not in home and "--8<--" not in home
    # Opened from disk (file://), every link of every page leads to a page, not to a folder's listing.
    for page in (tmp_path / "site").rglob("*.html"):
        if page.name == "404.html":  # a server's page for a missing address, with absolute links
            continue
        for link in re.findall(r'href="([^"#?]+)', page.read_text()):
            if "://" not in link and not link.startswith(("mailto:", "data:")):
                assert (page.parent / link).is_file(), f"{page.relative_to(tmp_path)} links to {link}"


@pytest.mark.slow
def test_the_built_site_home_page_renders_in_chromium(tmp_path: Path) -> None:
    """The screenshot script builds the site and Chromium draws its home page: the theme and pictures load."""
    import matplotlib.image

    output = tmp_path / "home.png"
    subprocess.run(
        [sys.executable, "-m", "docs.screenshot_site", "--output", str(output)],
        cwd=REPO_ROOT,
        check=True,
        timeout=600,
    )
    pixels = matplotlib.image.imread(output)
    assert pixels.shape[:2] == (3000, 1280)
    assert pixels.std() > 0.05, "a blank page"
    # The Material header's indigo (63, 81, 181) is drawn: the theme's stylesheet loaded.
    indigo = (abs(pixels[..., 0] - 63 / 255) < 0.02) & (abs(pixels[..., 2] - 181 / 255) < 0.02)
    assert indigo.mean() > 0.01
