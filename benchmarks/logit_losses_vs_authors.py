"""Our logit-distillation losses against the authors' official code, in float64.

For each method, random logits (3 N(0, 1), B = 64) at K = 10, 100, 1000 and several temperatures
(or TTM's gamma) go through our function and through the authors' loss, imported at run time from
their repositories; the table gives the largest absolute and relative difference of the values and
of the gradients with respect to the student's logits (and, for CTKD, to the temperature parameter).
A second table runs both on saturated logits (+-1e4, float32), where the authors' code is not
always finite.

The repositories are read from ``--repos DIR``, one folder per repository as cloned (none of their
code is part of softdistill)::

    DIR/mdistiller                       github.com/megvii-research/mdistiller           (DKD)
    DIR/DIST_KD/classification           github.com/hunto/DIST_KD --recurse-submodules   (DIST)
    DIR/cls_KD                           github.com/yzd-v/cls_KD                          (NKD, USKD)
    DIR/logit-standardization-KD         github.com/sunshangquan/logit-standardization-KD
    DIR/TTM                              github.com/zkxufo/TTM                            (TTM, WTTM)
    DIR/CTKD                             github.com/zhengli97/CTKD
    DIR/Multi-Level-Logit-Distillation   github.com/Jin-Ying/Multi-Level-Logit-Distillation (MLKD)

Their loss files are imported by path. Where a file imports siblings (``from ._base import
Distiller``), it is imported as a member of a package object made here, so the siblings are their
real files but the package's ``__init__`` (which imports their whole training stack) never runs.
The only stand-ins are: ``mmcls.registry.MODELS`` (cls_KD's registry decorator, made the identity),
``Tensor.cuda`` (the identity while their code runs: their losses move tensors to the GPU), CTKD's
``CosineDecay`` class taken from their training script by parsing it (the script itself imports the
training stack), and replay networks that return the given logits where their ``forward_train``
calls the student and the teacher (DKD's warm-up, MLKD). USKD's weak head (their ``fc``) is
replaced by the identity so that both take the same weak logits.

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/logit_losses_vs_authors.py --repos /path/to/authors
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from softdistill import losses as ours

CLASSES = (10, 100, 1000)
BATCH = 64
SCALE = 3.0


# ----------------------------------------------------------------------------- importing their code

def import_file(path: Path, name: str) -> types.ModuleType:
    """Import one Python file under a private module name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_from_package(folder: Path, package: str, module: str) -> types.ModuleType:
    """Import ``folder/module.py`` as ``package.module``; its relative imports reach the real sibling files,
    and ``folder/__init__.py`` is not run."""
    if package not in sys.modules:
        shell = types.ModuleType(package)
        shell.__path__ = [str(folder)]
        sys.modules[package] = shell
    return importlib.import_module(f"{package}.{module}")


def import_class_from_script(path: Path, class_name: str) -> type:
    """The class ``class_name`` of a script, executed alone (the script's own imports are not run)."""
    tree = ast.parse(path.read_text())
    definition = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    namespace: dict[str, object] = {"math": math}
    exec(compile(ast.Module(body=[definition], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[class_name]


def stub_mmcls_registry() -> None:
    """cls_KD's losses register themselves with ``mmcls.registry.MODELS``; the decorator is the identity here."""
    registry = types.ModuleType("mmcls.registry")
    registry.MODELS = SimpleNamespace(register_module=lambda *args, **kwargs: (lambda cls: cls))
    sys.modules.setdefault("mmcls", types.ModuleType("mmcls"))
    sys.modules["mmcls.registry"] = registry


@contextlib.contextmanager
def authors_code_on_cpu() -> Iterator[None]:
    """``Tensor.cuda`` as the identity and float64 as the default dtype, while their code runs."""
    cuda, dtype = torch.Tensor.cuda, torch.get_default_dtype()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda
        torch.set_default_dtype(dtype)


class Replay(nn.Module):
    """Stands for a network in the authors' ``forward_train``: returns the logits given for each input."""

    def __init__(self, logits: dict[str, Tensor]) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, view: str) -> tuple[Tensor, dict]:
        return self.logits[view], {}


def config(**sections: dict[str, object]) -> SimpleNamespace:
    """A stand-in for the authors' yacs config: nested attributes from nested dicts."""
    def build(value: object) -> object:
        return SimpleNamespace(**{k: build(v) for k, v in value.items()}) if isinstance(value, dict) else value
    return build(sections)


# ----------------------------------------------------------------------------- the comparisons

class Comparison:
    """The largest differences of values and gradients over all cases of one method."""

    def __init__(self, method: str) -> None:
        self.method, self.cases = method, 0
        self.value_abs = self.value_rel = self.grad_rel = 0.0

    def add(self, ours_value: Tensor, theirs_value: Tensor, inputs: list[Tensor]) -> None:
        """Compare two scalar losses of the same ``inputs`` (leaf tensors that require grad)."""
        ours_grads = torch.autograd.grad(ours_value, inputs, allow_unused=True, retain_graph=True)
        theirs_grads = torch.autograd.grad(theirs_value.sum(), inputs, allow_unused=True, retain_graph=True)
        difference = (ours_value - theirs_value.reshape(())).abs().item()
        self.value_abs = max(self.value_abs, difference)
        self.value_rel = max(self.value_rel, difference / max(abs(theirs_value.sum().item()), 1e-300))
        for mine, theirs in zip(ours_grads, theirs_grads):
            if mine is None and theirs is None:
                continue
            scale = theirs.abs().max().item()
            self.grad_rel = max(self.grad_rel, (mine - theirs).abs().max().item() / max(scale, 1e-300))
        self.cases += 1

    def add_number(self, ours_value: float, theirs_value: float) -> None:
        """Compare two numbers that have no gradient to compare."""
        difference = abs(ours_value - theirs_value)
        self.value_abs = max(self.value_abs, difference)
        self.value_rel = max(self.value_rel, difference / abs(theirs_value) if theirs_value else difference)
        self.cases += 1

    def row(self) -> str:
        return (f"| {self.method} | {self.cases} | {self.value_abs:.1e} | {self.value_rel:.1e} "
                f"| {self.grad_rel:.1e} |")


def random_logits(gen: torch.Generator, classes: int, *shape_prefix: int) -> Tensor:
    return (SCALE * torch.randn(*shape_prefix, BATCH, classes, generator=gen, dtype=torch.float64)).requires_grad_()


def random_labels(gen: torch.Generator, classes: int) -> Tensor:
    return torch.randint(0, classes, (BATCH,), generator=gen)


def compare_all(repos: Path) -> list[Comparison]:
    stub_mmcls_registry()
    mdistiller_dkd = import_from_package(repos / "mdistiller/mdistiller/distillers", "_mdistiller", "DKD")
    dist = import_file(repos / "DIST_KD/classification/lib/models/losses/dist_kd.py", "_dist_kd")
    nkd = import_file(repos / "cls_KD/mmcls/models/dis_losses/nkd.py", "_cls_kd_nkd")
    uskd = import_file(repos / "cls_KD/mmcls/models/dis_losses/uskd.py", "_cls_kd_uskd")
    ls_folder = repos / "logit-standardization-KD"
    ls_kd = import_from_package(ls_folder / "mdistiller/distillers", "_ls_mdistiller", "KD")
    ls_dkd = import_from_package(ls_folder / "mdistiller/distillers", "_ls_mdistiller", "DKD")
    ls_mlkd = import_from_package(ls_folder / "mdistiller/distillers", "_ls_mdistiller", "MLKD")
    ls_ctkd = import_file(ls_folder / "CTKD/distiller_zoo/KD.py", "_ls_ctkd_kd")
    ttm = import_file(repos / "TTM/distiller_zoo/ttm.py", "_ttm")
    wttm = import_file(repos / "TTM/distiller_zoo/wttm.py", "_wttm")
    ctkd_kd = import_file(repos / "CTKD/distiller_zoo/KD.py", "_ctkd_kd")
    ctkd_temp = import_file(repos / "CTKD/models/temp_global.py", "_ctkd_temp_global")
    cosine_decay = import_class_from_script(repos / "CTKD/train_student.py", "CosineDecay")
    mlkd = import_from_package(repos / "Multi-Level-Logit-Distillation/mdistiller/distillers", "_mlkd", "KD_ours")

    gen = torch.Generator().manual_seed(0)
    rows = {name: Comparison(name) for name in (
        "DKD", "DKD x warm-up (forward_train, epochs 1-30)", "DKD + standardization (LS repo)", "DIST",
        "NKD", "USKD", "logit_standardize (LS normalize)", "KD + standardization (kd_ls_loss)", "TTM", "WTTM",
        "CTKD KD term at learnable T", "CTKD + standardization (LS repo)",
        "CTKD d loss / d theta through the reversal (value column: the gradient)",
        "CTKD lambda curriculum, epochs -1 to 15 (ours = -theirs)", "MLKD (4 terms)", "MLKD + standardization (LS repo)")}
    with authors_code_on_cpu(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their size_average=False etc.
        for classes in CLASSES:
            for temperature in (1.0, 2.0, 4.0, 8.0):
                s, t, y = random_logits(gen, classes), random_logits(gen, classes).detach(), random_labels(gen, classes)
                rows["DKD"].add(ours.dkd_loss(s, t, y, 1.0, 8.0, temperature),
                                mdistiller_dkd.dkd_loss(s, t, y, 1.0, 8.0, temperature), [s])
                rows["DKD + standardization (LS repo)"].add(
                    ours.dkd_loss(s, t, y, 9.0, 72.0, temperature, standardize=True),
                    ls_dkd.dkd_loss(s, t, y, 9.0, 72.0, temperature, True), [s])
                rows["DIST"].add(ours.dist_loss(s, t, 1.0, 2.0, temperature),
                                 dist.DIST(beta=1.0, gamma=2.0, tau=temperature)(s, t), [s])
                rows["NKD"].add(ours.nkd_loss(s, t, y, temperature, 1.5),
                                nkd.NKDLoss("nkd", True, temp=temperature, gamma=1.5)(s, t, y), [s])
                rows["KD + standardization (kd_ls_loss)"].add(ours.kd_ls_loss(s, t, temperature),
                                                              ls_kd.kd_loss(s, t, temperature, True), [s])
                compare_ctkd(rows, s, t, ctkd_kd, ctkd_temp, ls_ctkd, lambda_=0.5 * temperature / 8)
                compare_mlkd(rows, gen, classes, temperature, mlkd, ls_mlkd)
            for epoch in (1, 10, 20, 30):
                s, t, y = random_logits(gen, classes), random_logits(gen, classes).detach(), random_labels(gen, classes)
                distiller = mdistiller_dkd.DKD(Replay({"x": s}), Replay({"x": t}), config(
                    DKD={"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20}))
                _, theirs = distiller.forward_train(image="x", target=y, epoch=epoch)
                rows["DKD x warm-up (forward_train, epochs 1-30)"].add(
                    ours.dkd_warmup_factor(epoch, 20) * ours.dkd_loss(s, t, y), theirs["loss_kd"], [s])
            for gamma in (0.1, 0.2, 0.5, 1.0):
                s, t = random_logits(gen, classes), random_logits(gen, classes).detach()
                rows["TTM"].add(ours.ttm_loss(s, t, gamma=gamma), ttm.TTM(gamma)(s, t), [s])
                rows["WTTM"].add(ours.wttm_loss(s, t, gamma=gamma), wttm.WTTM(gamma)(s, t), [s])
            s, weak, y = random_logits(gen, classes), random_logits(gen, classes), random_labels(gen, classes)
            theirs_uskd = uskd.USKDLoss("uskd", True, channel=classes, num_classes=classes)
            theirs_uskd.fc = nn.Identity()
            rows["USKD"].add(ours.uskd_loss(s, weak, y), theirs_uskd(weak, s, y), [s, weak])
            z, weights = random_logits(gen, classes), torch.randn(BATCH, classes, generator=gen, dtype=torch.float64)
            rows["logit_standardize (LS normalize)"].add((ours.logit_standardize(z) * weights).sum(),
                                                         (ls_kd.normalize(z) * weights).sum(), [z])
        schedule = cosine_decay(max_value=0.0, min_value=-1.0, num_loops=10)
        for epoch in range(-1, 16):
            rows["CTKD lambda curriculum, epochs -1 to 15 (ours = -theirs)"].add_number(
                ours.ctkd_grl_lambda(epoch), -schedule.get_value(epoch))
    return list(rows.values())


def compare_ctkd(rows: dict[str, Comparison], s: Tensor, t: Tensor, ctkd_kd: types.ModuleType,
                 ctkd_temp: types.ModuleType, ls_ctkd: types.ModuleType, lambda_: float) -> None:
    """CTKD's KD term at its learnable global temperature, gradients into the student and the temperature
    parameter included (their layer takes lambda with the opposite sign)."""
    for name, theirs_loss, standardize in (("CTKD KD term at learnable T", ctkd_kd.DistillKL(), False),
                                           ("CTKD + standardization (LS repo)", ls_ctkd.DistillKL_logit_stand(), True)):
        theirs_module = ctkd_temp.Global_T()
        theirs_value = theirs_loss(s, t, 1.0 + 20.0 * torch.sigmoid(theirs_module(t, s, -lambda_)))
        ours_module = ours.CTKDLoss(1.0, 20.0, standardize=standardize).double()
        ours_value = ours_module(s, t, lambda_)
        rows[name].add(ours_value, theirs_value, [s])
        ours_grad = torch.autograd.grad(ours_value, ours_module.theta)[0]
        theirs_grad = torch.autograd.grad(theirs_value.sum(), theirs_module.global_T)[0]
        rows["CTKD d loss / d theta through the reversal (value column: the gradient)"].add_number(
            ours_grad.item(), theirs_grad.item())


def compare_mlkd(rows: dict[str, Comparison], gen: torch.Generator, classes: int, temperature: float,
                 mlkd: types.ModuleType, ls_mlkd: types.ModuleType) -> None:
    """MLKD's four terms from the authors' ``forward_train`` on replayed weak and strong logits."""
    for name, distiller_class, standardize, kd_weight in (
            ("MLKD (4 terms)", mlkd.KD_ours, False, 0.9),
            ("MLKD + standardization (LS repo)", ls_mlkd.MLKD, True, 9.0)):
        s_weak, s_strong = random_logits(gen, classes), random_logits(gen, classes)
        t_weak, t_strong = random_logits(gen, classes).detach(), random_logits(gen, classes).detach()
        y = random_labels(gen, classes)
        distiller = distiller_class(
            Replay({"weak": s_weak, "strong": s_strong}), Replay({"weak": t_weak, "strong": t_strong}),
            config(KD={"TEMPERATURE": temperature, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": kd_weight}},
                   EXPERIMENT={"LOGIT_STAND": standardize}))
        _, theirs = distiller.forward_train(image_weak="weak", image_strong="strong", target=y)
        mine = ours.mlkd_loss(s_weak, t_weak, s_strong, t_strong, y, temperature, kd_weight=kd_weight,
                              standardize=standardize)
        for term in ("loss_ce", "loss_kd", "loss_cc", "loss_bc"):
            rows[name].add(mine[term], theirs[term], [s_weak, s_strong])


# ----------------------------------------------------------------------------- saturated logits

LossCall = Callable[[Tensor, Tensor, Tensor], Tensor]


def saturated_cases() -> list[tuple[str, LossCall, LossCall]]:
    """(method, ours, theirs), each called as ``loss(student, teacher, labels)``."""
    mdistiller_dkd, dist = sys.modules["_mdistiller.DKD"], sys.modules["_dist_kd"]
    nkd, ttm = sys.modules["_cls_kd_nkd"], sys.modules["_ttm"]
    return [
        ("DKD, T = 4", lambda s, t, y: ours.dkd_loss(s, t, y),
         lambda s, t, y: mdistiller_dkd.dkd_loss(s, t, y, 1.0, 8.0, 4.0)),
        ("DKD, T = 4, ours with target_offset = inf", lambda s, t, y: ours.dkd_loss(s, t, y, target_offset=math.inf),
         lambda s, t, y: mdistiller_dkd.dkd_loss(s, t, y, 1.0, 8.0, 4.0)),
        ("DIST, T = 1", lambda s, t, y: ours.dist_loss(s, t), lambda s, t, y: dist.DIST()(s, t)),
        ("NKD, T = 1", lambda s, t, y: ours.nkd_loss(s, t, y), lambda s, t, y: nkd.NKDLoss("nkd", True)(s, t, y)),
        ("TTM, gamma = 0.1", lambda s, t, y: ours.ttm_loss(s, t, gamma=0.1), lambda s, t, y: ttm.TTM(0.1)(s, t)),
    ]


def saturated_outcome(loss: LossCall, classes: int = 10) -> str:
    """Value and whether the student's gradient is finite, on float32 logits of +-1e4: each teacher row puts
    one class (the label) at +1e4 and the others at -1e4, the student does the same for the next class."""
    labels = torch.arange(BATCH) % classes
    teacher = torch.full((BATCH, classes), -1e4)
    teacher[torch.arange(BATCH), labels] = 1e4
    student = teacher.roll(1, dims=1).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = loss(student, teacher, labels).sum()
        grad = torch.autograd.grad(value, student)[0]
    return f"{value.item():.6g}, gradient {'finite' if torch.isfinite(grad).all() else 'NOT finite'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=Path, required=True, help="folder with one subfolder per repository")
    args = parser.parse_args()
    torch.set_num_threads(1)
    comparisons = compare_all(args.repos.resolve())
    print(f"float64, B = {BATCH}, logits {SCALE:g} N(0, 1), K in {CLASSES}\n")
    print("| method | cases | max abs diff (value) | max rel diff (value) | max rel diff (gradient) |")
    print("|---|---|---|---|---|")
    for comparison in comparisons:
        print(comparison.row())
    print("\nsaturated float32 logits (+-1e4, student confident on another class than the teacher)\n")
    print("| method | ours | authors' code |")
    print("|---|---|---|")
    with authors_code_on_cpu():
        torch.set_default_dtype(torch.float32)
        for method, mine, theirs in saturated_cases():
            print(f"| {method} | {saturated_outcome(mine)} | {saturated_outcome(theirs)} |")


if __name__ == "__main__":
    main()
