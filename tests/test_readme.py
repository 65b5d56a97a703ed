"""The shell blocks of the README and of docs/getting-started.md, pasted in order, each into a new shell,
on a fresh copy of the repository.

Every ```bash block of a page runs in a new ``bash`` (a minimal PATH: ``softdistill`` is there only
once a block activates the ``.venv``), in the page's order, in a copy of the repository that holds
what the page's set-up command (``make quickstart``, ``make test``) leaves behind: a ``.venv`` whose
``bin/activate`` puts ``softdistill``, ``python`` and ``torchrun`` of the source under test on the
PATH.  Each command must exit with status 0.  The commands run as written, with two documented
changes so that the suite can afford them:

* :data:`SHRINK`: every recipe of the copy trains one epoch, with a tenth of its Fashion-MNIST
  validation split and images per class, and Fashion-MNIST is its first :data:`TRAIN_IMAGES`
  training and :data:`TEST_IMAGES` test images (``$SOFTDISTILL_DATA``);
* :data:`SUBSTITUTES`: the commands that install software, run the test suite itself, or need a
  download and GPUs run as the command given there, for the reason given there.  A substitute
  whose command is no longer in the pages fails the test, so the table cannot go stale.

The README's Install block makes an environment of its own: it runs in a test of its own
(:func:`test_the_install_block_keeps_torch_in_an_environment_of_its_own`), for real but for its
``pip install`` lines.  Its ``python3 -m venv`` and ``source`` lines run as written; its ``pip
install torch`` line, which would fetch several GB, is stood in for by the packages of the
environment under test (a ``.pth`` file puts them on the new environment's path, so that torch
is installed there, as after that line); its ``pip install -e`` lines are resolved by pip against
the package index (``--dry-run --report``), not installed.  The test checks pip's answer: no line
changes the torch installed, and the vision extra resolves to a torchvision made for it.  What
it does not check: that the packages pip resolved install and import (a CUDA torch is several
GB), and the torch build the first line would fetch.

``SOFTDISTILL_README_TRANSCRIPT=FILE`` writes a transcript: each block, each command as the page
has it (and what ran instead), its exit status.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from softdistill.data.readers import load_split

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = (README, ROOT / "docs" / "getting-started.md")
OWN_ENVIRONMENT = "Install"  # the README section whose block makes an environment of its own
SHELL_FENCES = ("bash", "sh", "shell")
TRAIN_IMAGES, TEST_IMAGES = 2_000, 1_000  # 500 of the training images are the shrunk validation split
SHRINK = ((re.compile(r"(?m)^epochs: \d+$"), "epochs: 1"), (re.compile(r"\bval_size: 5000\b"), "val_size: 500"),
          (re.compile(r"\bper_class: 300\b"), "per_class: 30"))
MARK = "__readme_exit__"
BLOCK_TIMEOUT = 1200  # seconds for one block on a busy 2-core machine
NO_NETWORK = re.compile(r"Failed to establish a new connection|Temporary failure in name resolution|"
                        r"Network is unreachable|No route to host")

DRY_RUN = "resolved by pip against the package index and reported ({report}), not installed"
# normalised command (comments dropped) -> (what runs instead, why); {report} and {site_packages}
# are filled in by run_block
SUBSTITUTES = {
    "make quickstart": (".venv/bin/softdistill quickstart",
                        "the Makefile's recipe without its install and data steps, which need the network and "
                        "root; the copy holds the .venv and the data they make"),
    "make test": ("true", "the test suite is what runs this test"),
    "pip install torch": ("python -c \"import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], "
                          "'under-test.pth').write_text('{site_packages}')\"",
                          "the environment under test's packages (its torch among them) are put on the new "
                          "environment's path instead of fetching a torch of several GB"),
    "pip install -e '.[test]' '$keep_torch'": ("pip install --dry-run --quiet --report {report} -e '.[test]' "
                                                 "\"$keep_torch\"", DRY_RUN),
    "pip install -e '.[vision]' '$keep_torch'": ("pip install --dry-run --quiet --report {report} -e '.[vision]' "
                                                   "\"$keep_torch\"", DRY_RUN),
    "pip install -e '.[timm]' '$keep_torch'": ("pip install --dry-run --quiet --report {report} -e '.[timm]' "
                                                 "\"$keep_torch\"", DRY_RUN),
    "softdistill train recipes/cifar100/resnet18-baseline.yaml -o data.download=true -o train.amp=bf16": (
        "true", "downloads CIFAR-100 (161 MB) and trains a ResNet-18 for 200 epochs, meant for a GPU"),
    "torchrun --nproc_per_node=4 -m softdistill train recipes/cifar100/resnet18-tfkd-self.yaml": (
        "true", "four processes, one per GPU, on the CIFAR-100 that the line before downloads"),
}


@dataclass
class Block:
    line: int  # of the opening fence in its page
    commands: list[str]  # as the page has them, continuation lines joined
    section: str = ""  # the heading (## ...) above it


def normalised(command: str) -> str:
    """``command`` without comments and with canonical quoting: the key of :data:`SUBSTITUTES`."""
    return shlex.join(shlex.split(command, comments=True))


def shell_blocks(text: str) -> list[Block]:
    """A page's shell blocks in order, each with its commands (comment-only and blank lines dropped)."""
    blocks, current, pending, section = [], None, "", ""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if current is not None:
                blocks.append(current)
                current = None
            elif line[3:].strip() in SHELL_FENCES:
                current = Block(number, [], section)
            continue
        if current is None:
            if line.startswith("## "):
                section = line[3:].strip()
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            current.commands.append(pending.rstrip("\n"))
        pending = ""
    return blocks


def _write_idx(path: Path, array, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.numpy().tobytes())


def small_fashion_mnist(folder: Path) -> None:
    """The first images of each Fashion-MNIST split, as the IDX files the data module reads."""
    folder.mkdir(parents=True)
    for split, prefix, count in (("train", "train", TRAIN_IMAGES), ("test", "t10k", TEST_IMAGES)):
        raw = load_split("fashion-mnist", split)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", raw.images[:count, 0], 0x803)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", raw.labels[:count].to(dtype=raw.images.dtype), 0x801)


def fresh_copy(target: Path) -> None:
    """What a clone holds that the README's commands use, its recipes shrunk by :data:`SHRINK`, and the
    .venv that make leaves, as shims that run the source of the copy."""
    for name in ("README.md", "Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, target / name)
    shutil.copytree(ROOT / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (target / "recipes").symlink_to(os.readlink(ROOT / "recipes"))
    for recipe in (target / "src" / "softdistill" / "recipes").rglob("*.yaml"):
        text = recipe.read_text()
        for pattern, replacement in SHRINK:
            text = pattern.sub(replacement, text)
        recipe.write_text(text)
    bin_dir = target / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export VIRTUAL_ENV={shlex.quote(str(bin_dir.parent))}\n'
                                      'export PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    source = f"PYTHONPATH={shlex.quote(str(target / 'src'))} exec {shlex.quote(sys.executable)}"
    for name, run in (("python", ""), ("softdistill", "-m softdistill"), ("torchrun", "-m torch.distributed.run")):
        (bin_dir / name).write_text(f'#!/bin/sh\n{source} {run} "$@"\n')
        (bin_dir / name).chmod(0o755)


def run_block(block: Block, cwd: Path, env: dict[str, str], reports: Path | None = None) -> tuple[list[int], str]:
    """Paste ``block`` into a new bash; the exit status of each command and everything it printed
    (``reports``: the folder of pip's reports, ``N.json`` for the block's command N)."""
    script = ""
    for number, command in enumerate(block.commands):
        instead = SUBSTITUTES.get(normalised(command), (command,))[0]
        if instead != command:
            instead = instead.format(report=shlex.quote(str((reports or cwd) / f"{number}.json")),
                                     site_packages=sysconfig.get_paths()["purelib"])
        script += f"{instead}\nprintf '\\n{MARK} %s\\n' $?\n"
    done = subprocess.run(["bash", "--noprofile", "--norc"], input=script, cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT)
    return [int(code) for code in re.findall(rf"^{MARK} (\d+)$", done.stdout, re.M)], done.stdout


def transcript_entry(page: Path, block: Block, index: int, codes: list[int]) -> str:
    lines = [f"{page.relative_to(ROOT)} block {index} (line {block.line}), pasted into a new bash:"]
    for command, code in zip(block.commands, codes):
        lines.append(f"  $ {command}")
        if normalised(command) in SUBSTITUTES:
            instead, why = SUBSTITUTES[normalised(command)]
            lines.append(f"    (ran as: {instead}; {why})")
        lines.append(f"    exit {code}")
    return "\n".join(lines)


def new_shell_environment(home: Path, data: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "SOFTDISTILL_DATA": str(data),
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def install_block() -> Block:
    (block,) = [b for b in shell_blocks(README.read_text()) if b.section == OWN_ENVIRONMENT]
    return block


def test_the_substitutes_are_commands_of_the_pages():
    commands = {normalised(c) for page in PAGES for block in shell_blocks(page.read_text()) for c in block.commands}
    stale = sorted(set(SUBSTITUTES) - commands)
    assert not stale, f"not in {[p.name for p in PAGES]} any more: {stale}"


def test_shell_blocks_are_read_with_their_continuation_lines_and_section():
    text = "x\n## A\n```bash\n# a comment\nmake a   # why\n\nrun b \\\n    --c\n```\n```yaml\nk: v\n```\n"
    assert [(b.line, b.commands, b.section) for b in shell_blocks(text)] == [
        (3, ["make a   # why", "run b \\\n    --c"], "A")]
    assert normalised("make a   # why") == "make a"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_shell_block_runs_in_a_new_shell(tmp_path, page):
    clone, data = tmp_path / "clone", tmp_path / "data"
    clone.mkdir()
    fresh_copy(clone)
    small_fashion_mnist(data / "fashion-mnist")
    env = new_shell_environment(tmp_path, data)
    blocks = [b for b in shell_blocks(page.read_text()) if b.section != OWN_ENVIRONMENT or page != README]
    assert len(blocks) >= 3 and all(b.commands for b in blocks)
    transcript = os.environ.get("SOFTDISTILL_README_TRANSCRIPT")
    entries = []
    for index, block in enumerate(blocks, start=1):
        codes, output = run_block(block, clone, env)
        entries.append(transcript_entry(page, block, index, codes))
        if transcript:
            Path(transcript).write_text("\n\n".join(entries) + "\n")
        failed = [(c, code) for c, code in zip(block.commands, codes) if code != 0]
        assert len(codes) == len(block.commands) and not failed, (
            f"{page.name} block at line {block.line}: {failed or 'a command ended the shell'}\n{output[-6000:]}")
    # the pages' commands share the quickstart's teacher: trained once, found by every later recipe
    assert sorted(clone.glob("runs/**/fmnist-teacher")) == [clone / "runs" / "quickstart" / "fmnist-teacher"]


def test_the_install_block_keeps_torch_in_an_environment_of_its_own(tmp_path):
    """The README's Install block, pasted into a new shell: a new environment (not the .venv), torch
    first, then the extras, which pip resolves without touching that torch (see the module docstring)."""
    python3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    version = subprocess.run([python3 or "python3", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"python3 is Python {version}, the suite runs on {sys.version_info[:2]}: the new environment "
                    "cannot import the suite's packages, which stand in for its torch")
    clone, reports = tmp_path / "clone", tmp_path / "reports"
    clone.mkdir()
    reports.mkdir()
    fresh_copy(clone)
    block = install_block()
    unplanned = [c for c in block.commands if c.startswith("pip ") and normalised(c) not in SUBSTITUTES]
    assert not unplanned, f"a pip line without a substitute would install for real: {unplanned}"
    codes, output = run_block(block, clone, new_shell_environment(tmp_path, tmp_path / "data"), reports)
    if NO_NETWORK.search(output):
        pytest.skip(f"pip cannot reach the package index: {NO_NETWORK.search(output).group(0)}")
    failed = [(c, code) for c, code in zip(block.commands, codes) if code != 0]
    assert len(codes) == len(block.commands) and not failed, (
        f"{failed or 'a command ended the shell'}\n{output[-6000:]}")
    assert not (clone / ".venv" / "lib").exists() and (tmp_path / ".venvs").is_dir()  # its own, not make's .venv
    planned = {}
    for number, command in enumerate(block.commands):
        if (report := reports / f"{number}.json").is_file():
            items = json.loads(report.read_text())["install"]
            planned[command] = {item["metadata"]["name"]: item["metadata"]["version"] for item in items}
    assert len(planned) == 3, sorted(planned)
    changed = {command: names["torch"] for command, names in planned.items() if "torch" in names}
    assert not changed, f"these lines would replace torch {torch.__version__}: {changed}"
    vision = next(names for command, names in planned.items() if "[vision]" in command)
    assert "torchvision" in vision and "softdistill" in vision, vision
