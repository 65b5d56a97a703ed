"""The README's shell blocks, pasted in order, each into a new shell, on a fresh copy of the repository.

Every ```bash block of README.md runs in a new ``bash`` (a minimal PATH: ``softdistill`` is there only
once a block activates the ``.venv``), in README order, in a copy of the repository that holds what
the set-up command ``make quickstart`` leaves behind: a ``.venv`` whose ``bin/activate`` puts
``softdistill``, ``python`` and ``torchrun`` of the source under test on the PATH.  Each command must
exit with status 0.  The commands run as written, with two documented changes so that the suite can
afford them:

* :data:`SHRINK`: every recipe of the copy trains one epoch, with a tenth of its Fashion-MNIST
  validation split and images per class, and Fashion-MNIST is its first :data:`TRAIN_IMAGES`
  training and :data:`TEST_IMAGES` test images (``$SOFTDISTILL_DATA``);
* :data:`SUBSTITUTES`: the commands that install software or run the test suite itself run as the
  command given there, for the reason given there.  A substitute whose command is no longer in the
  README fails the test, so the table cannot go stale.

``SOFTDISTILL_README_TRANSCRIPT=FILE`` writes a transcript: each block, each command as the README
has it (and what ran instead), its exit status.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from softdistill.data.readers import load_split

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
SHELL_FENCES = ("bash", "sh", "shell")
TRAIN_IMAGES, TEST_IMAGES = 2_000, 1_000  # 500 of the training images are the shrunk validation split
SHRINK = ((re.compile(r"(?m)^epochs: \d+$"), "epochs: 1"), (re.compile(r"\bval_size: 5000\b"), "val_size: 500"),
          (re.compile(r"\bper_class: 300\b"), "per_class: 30"))
MARK = "__readme_exit__"
BLOCK_TIMEOUT = 1200  # seconds for one block on a busy 2-core machine

# normalised command (comments dropped) -> (what runs instead, why)
SUBSTITUTES = {
    "make quickstart": (".venv/bin/softdistill quickstart",
                        "the Makefile's recipe without its install and data steps, which need the network and "
                        "root; the copy holds the .venv and the data they make"),
    "make test": ("true", "the test suite is what runs this test"),
    "python3 -m venv .venv": ("true", "the copy's .venv stands for the one make made"),
    "pip install -e .": ("true", "installs from PyPI; the Makefile's install step does the same"),
    "pip install -e '.[test]'": ("true", "installs from PyPI; the Makefile's install step does the same"),
    "pip install -e '.[vision]'": ("true", "installs torchvision from PyPI (optional extra)"),
    "pip install -e '.[timm]'": ("true", "installs timm from PyPI (optional extra)"),
}


@dataclass
class Block:
    line: int  # of the opening fence in README.md
    commands: list[str]  # as the README has them, continuation lines joined


def normalised(command: str) -> str:
    """``command`` without comments and with canonical quoting: the key of :data:`SUBSTITUTES`."""
    return shlex.join(shlex.split(command, comments=True))


def shell_blocks(text: str) -> list[Block]:
    """The README's shell blocks in order, each with its commands (comment-only and blank lines dropped)."""
    blocks, current, pending = [], None, ""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if current is not None:
                blocks.append(current)
                current = None
            elif line[3:].strip() in SHELL_FENCES:
                current = Block(number, [])
            continue
        if current is None:
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


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> tuple[list[int], str]:
    """Paste ``block`` into a new bash; the exit status of each command and everything it printed."""
    script = "".join(f"{SUBSTITUTES.get(normalised(c), (c,))[0]}\nprintf '\\n{MARK} %s\\n' $?\n"
                     for c in block.commands)
    done = subprocess.run(["bash", "--noprofile", "--norc"], input=script, cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT)
    return [int(code) for code in re.findall(rf"^{MARK} (\d+)$", done.stdout, re.M)], done.stdout


def transcript_entry(block: Block, index: int, codes: list[int]) -> str:
    lines = [f"README.md block {index} (line {block.line}), pasted into a new bash:"]
    for command, code in zip(block.commands, codes):
        lines.append(f"  $ {command}")
        if normalised(command) in SUBSTITUTES:
            instead, why = SUBSTITUTES[normalised(command)]
            lines.append(f"    (ran as: {instead}; {why})")
        lines.append(f"    exit {code}")
    return "\n".join(lines)


def test_the_substitutes_are_readme_commands():
    commands = {normalised(c) for block in shell_blocks(README.read_text()) for c in block.commands}
    assert set(SUBSTITUTES) <= commands, f"not in README.md any more: {sorted(set(SUBSTITUTES) - commands)}"


def test_shell_blocks_are_read_with_their_continuation_lines():
    text = "x\n```bash\n# a comment\nmake a   # why\n\nrun b \\\n    --c\n```\n```yaml\nk: v\n```\n"
    assert [(b.line, b.commands) for b in shell_blocks(text)] == [(2, ["make a   # why", "run b \\\n    --c"])]
    assert normalised("make a   # why") == "make a"


def test_every_readme_shell_block_runs_in_a_new_shell(tmp_path):
    clone, data = tmp_path / "clone", tmp_path / "data"
    clone.mkdir()
    fresh_copy(clone)
    small_fashion_mnist(data / "fashion-mnist")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "SOFTDISTILL_DATA": str(data), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    blocks = shell_blocks(README.read_text())
    assert len(blocks) >= 3 and all(b.commands for b in blocks)
    transcript = os.environ.get("SOFTDISTILL_README_TRANSCRIPT")
    entries = []
    for index, block in enumerate(blocks, start=1):
        codes, output = run_block(block, clone, env)
        entries.append(transcript_entry(block, index, codes))
        if transcript:
            Path(transcript).write_text("\n\n".join(entries) + "\n")
        failed = [(c, code) for c, code in zip(block.commands, codes) if code != 0]
        assert len(codes) == len(block.commands) and not failed, (
            f"README.md block at line {block.line}: {failed or 'a command ended the shell'}\n{output[-6000:]}")
