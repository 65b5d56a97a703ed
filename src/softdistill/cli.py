"""The ``softdistill`` command: train, train-vae, label, verify, store, data, eval, compare, quickstart, inspect.

Also reachable as ``python -m softdistill`` (which is what torchrun needs:
``torchrun --nproc_per_node=2 -m softdistill train RECIPE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser"]

OVERRIDE_HELP = "override a recipe value with a dotted key, e.g. -o optim.lr=0.05 -o method.temperature=8 (repeatable)"


def _recipe_arguments(parser: argparse.ArgumentParser, recipe_help: str, *, override_help: str = OVERRIDE_HELP,
                      seed_help: str = "shortcut for -o seed=N", resume: bool = True,
                      quiet_help: str = "no progress bars or per-epoch lines") -> None:
    """The arguments of a command that runs one recipe: RECIPE, -o, --seed, [--resume,] --quiet."""
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=override_help)
    parser.add_argument("--seed", type=int, help=seed_help)
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in its folder from last.pt; the result equals an uninterrupted run")
    parser.add_argument("--quiet", action="store_true", help=quiet_help)


def _verify_parser(sub: Any, name: str, folder_help: str) -> None:
    """The ``verify`` command (also ``store verify`` and ``data verify``): one handler for either folder."""
    verify = sub.add_parser(name, help="check a store or shard folder: every file's sha256 and every manifest rule",
                            description="Check FOLDER (a store written by 'softdistill label' or shards written by "
                                        "'softdistill data pack', recognised by its manifest): the manifest's own "
                                        "hash and rules, every file's size and sha256. Exit status 2 with every "
                                        "problem named when one is found.")
    verify.add_argument("folder", metavar="FOLDER", help=folder_help)
    verify.set_defaults(handler=_cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    from softdistill.enums import ON_CORRUPT

    parser = argparse.ArgumentParser(
        prog="softdistill",
        description="Knowledge distillation built around the soft label. Every command takes YAML recipes "
                    "(see docs/recipes.md) and writes run folders with metrics, checkpoints and summaries.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of short error messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a teacher or distil a student from a recipe",
                           description="Train what RECIPE describes into OUTPUT_DIR/NAME/seedSEED (default runs/...). "
                                       "Run under torchrun for several processes (DDP).")
    _recipe_arguments(train, "path of a YAML recipe")

    vae = sub.add_parser("train-vae", help="train the VAE image generator of learned augmentation (HARD)",
                         description="Train the convolutional VAE that RECIPE describes into OUTPUT_DIR/NAME/seedSEED: "
                                     "vae.pt (the frozen generator), last.pt, metrics.jsonl, reconstructions.png, "
                                     "summary.json.")
    _recipe_arguments(vae, "path of a YAML VAE recipe, e.g. recipes/hard/vae.yaml",
                      override_help="override a recipe value with a dotted key, e.g. -o beta=0.5 -o epochs=20 "
                                    "(repeatable)")

    lab = sub.add_parser("label", help="label a store: a teacher's soft labels of every view, written once",
                         description="Write the store RECIPE describes into OUTPUT_DIR/NAME/seedSEED: the soft labels "
                                     "of every (sample, view) of its view plan, in memory-mapped shards with a "
                                     "manifest (docs/store.md). An interrupted run continues where it stopped. Run "
                                     "under torchrun to label disjoint shards per process.")
    _recipe_arguments(lab, "path of a YAML label recipe", resume=False, quiet_help="no progress bar",
                      seed_help="shortcut for -o seed=N (the view seed unless data.view_seed is set)")
    lab.add_argument("--verify", action="store_true",
                     help="hash every file of a store that is already complete (without it: sizes and headers) and "
                          "label its damaged shards again")

    _verify_parser(sub, "verify", "a store or shard folder")
    st = sub.add_parser("store", help="check a store", description="Commands on a store folder.")
    st_sub = st.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    _verify_parser(st_sub, "verify", "a store folder (the same as 'softdistill verify STORE')")

    dat = sub.add_parser("data", help="pack an image folder into shards, check shards",
                         description="Commands on data sets (docs/data.md).")
    dat_sub = dat.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    pack = dat_sub.add_parser("pack", help="pack an image folder into shards (data.name: shards)",
                              description="Write the images of SRC_FOLDER/train/<class>/* and SRC_FOLDER/val/<class>/* "
                                          "(or test/) into OUT: tar shards of the files' own bytes, an index per "
                                          "shard and manifest.json (sizes, sha256). OUT must be new or empty, and "
                                          "outside SRC_FOLDER. Every file is written atomically; a stopped pack "
                                          "continues where it stopped when run again.")
    pack.add_argument("source", metavar="SRC_FOLDER", help="an image folder: train/<class>/*, val/<class>/*")
    pack.add_argument("out", metavar="OUT", help="the folder the shards go to")
    pack.add_argument("--shard-size", default="1000", metavar="SIZE",
                      help="images per shard (e.g. 1000), or source bytes per shard with a unit (e.g. 256MB, 1GiB); "
                           "default 1000")
    pack.add_argument("--on-corrupt", choices=ON_CORRUPT, default="fail",
                      help="an image Pillow cannot decode: fail (default; the error names the file) or skip it, "
                           "count it and list it in the manifest")
    pack.add_argument("--workers", type=int, default=0,
                      help="processes that read, check and write shards (default 0: this process)")
    pack.add_argument("--quiet", action="store_true", help="no progress bar")
    _verify_parser(dat_sub, "verify", "a folder written by softdistill data pack (the same as 'softdistill verify "
                                      "FOLDER')")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a data split",
                        description="Top-1 accuracy and cross-entropy of a checkpoint. The data set, validation split "
                                    "and normalisation are taken from the checkpoint unless given.")
    ev.add_argument("checkpoint", help="a .pt file written by softdistill (best.pt, last.pt, epoch_N.pt)")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test", help="which split (default: test)")
    ev.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    ev.add_argument("--root", help="data folder (default: look-up order of the data module)")
    ev.add_argument("--batch-size", type=int, default=1024)
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ev.add_argument("--ood", action="append", default=[], metavar="KIND:AMOUNT",
                    help="also evaluate an out-of-domain version of the split: shift:K (random offsets in [-K, K] px), "
                         "rotate:D (random angles in [-D, D] degrees), noise:S (Gaussian pixel noise, std S in [0, 1] "
                         "units), blur:S (Gaussian blur, std S px) (repeatable)")
    ev.add_argument("--ood-seed", type=int, default=0, help="seed of the random shifts of --ood (default 0)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")

    cmp = sub.add_parser("compare", help="run recipes over seeds and tabulate mean ± std",
                         description="Run every RECIPE for every seed (skipping finished runs and resuming "
                                     "interrupted ones), then write the report to OUTPUT/report: table.md (the "
                                     "tables, the teachers' accuracy and the figures), table.csv, results.json "
                                     "(every number), curves.png (test accuracy per epoch), diagnostics.png (the "
                                     "per-epoch soft-label diagnostics, when a method logs any) and the figures "
                                     "that methods draw in seed 0's run folder (HARD: hard-augmentations.png).")
    cmp.add_argument("recipes", nargs="+", help="YAML recipes to compare")
    cmp.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    cmp.add_argument("--epochs", type=int, help="override the epochs of every recipe")
    cmp.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)
    cmp.add_argument("--output", default="runs/compare", help="output folder (default runs/compare)")
    cmp.add_argument("--baseline", help="recipe name gains are measured against (default: first 'ce' recipe)")
    cmp.add_argument("--report", help="report folder (default OUTPUT/report)")
    cmp.add_argument("--jobs", type=int, default=1,
                     help="runs side by side, each in its own process with its share of the CPU cores as threads "
                          "(default 1: one after the other; at most the number of cores)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")

    qs = sub.add_parser("quickstart", help="a teacher, then a student per method on Fashion-MNIST, over seeds",
                        description="Train a teacher on Fashion-MNIST once, then run every recipe of "
                                    "recipes/quickstart over several seeds (a cross-entropy baseline, label "
                                    "smoothing, KD, Tf-KD self and reg in both modes, WSL, IDA KD-i and KD-p, "
                                    "HARD), print the table and write the report folder that compare writes.")
    qs.add_argument("--tiny", action="store_true",
                    help="recipes/tiny instead: digits, baseline, label smoothing, KD and HARD (small enough for "
                         "the tests)")
    qs.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    qs.add_argument("--output", help="output folder (default runs/quickstart or runs/tiny)")
    qs.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)
    qs.add_argument("--jobs", type=int, help="runs side by side (default: one per CPU core, one thread each)")
    qs.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")

    ins = sub.add_parser("inspect", help="report on the quality of soft labels: a teacher's, several teachers' and "
                                         "their ensemble's",
                         description="Write a report folder (report.md, report.json, PNG figures) on the soft labels of "
                                     "SOURCE: accuracy, NLL, ECE with a reliability diagram, entropy histogram, the "
                                     "unreliability / ambiguity indicators for k = 1..5 (Yuan et al., NeurIPS 2023), "
                                     "mixed-sample order diagnostics, and with --student the teacher-student "
                                     "agreement and regularization-sample share. Several SOURCEs (or an ensemble "
                                     "recipe): every member's indicators beside the ensemble's, and which members "
                                     "they judge able to teach.")
    ins.add_argument("source", nargs="+",
                     help="a teacher checkpoint (.pt written by softdistill), a soft-label file ({'soft_labels': N x K, "
                          "'labels': N, ...}; see docs/inspect.md), a store folder, a recipe (its soft_labels section, "
                          "any source), or several checkpoints and soft-label files (their ensemble)")
    ins.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                     help="override a value of the recipe given as SOURCE, e.g. -o output_dir=runs/x (repeatable)")
    ins.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    ins.add_argument("--split", choices=["train", "val", "test"], default="train",
                     help="which split's soft labels (default: train, what a student learns from)")
    ins.add_argument("--student", help="a student checkpoint to compare with the teacher on the same images")
    ins.add_argument("--output", help="report folder (default: SOURCE_FOLDER/inspect-SPLIT)")
    ins.add_argument("--root", help="data folder (default: look-up order of the data module)")
    ins.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ins.add_argument("--batch-size", type=int, default=1024)
    ins.add_argument("--seed", type=int, default=0, help="seed of the mixed-sample pairs and weights")
    ins.add_argument("--quiet", action="store_true", help="no stage lines or progress bars")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    """The command's ``-o`` overrides, and ``--seed`` as one."""
    return args.override + ([f"seed={args.seed}"] if args.seed is not None else [])


def _cmd_train(args: argparse.Namespace) -> int:
    from softdistill.config import load_recipe
    from softdistill.runtime import shutdown_distributed
    from softdistill.runtime.distributed import lost_rank_errors
    from softdistill.runner import run_recipe

    recipe = load_recipe(args.recipe, _overrides(args), kind="train")
    try:
        with lost_rank_errors():
            summary = run_recipe(recipe, resume=args.resume, quiet=args.quiet)
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: test accuracy last {summary['test_acc_last']:.2f}%, best {summary['test_acc_best']:.2f}% "
              f"(epoch {summary['best_test_epoch']}), at best {summary['selection']} "
              f"{summary['test_acc_selected']:.2f}%; {summary['seconds']:.1f}s -> {recipe.run_dir}")
    return 0


def _cmd_train_vae(args: argparse.Namespace) -> int:
    from softdistill.config import load_recipe
    from softdistill.runner import run_recipe

    recipe = load_recipe(args.recipe, _overrides(args), kind="vae")
    summary = run_recipe(recipe, resume=args.resume, quiet=args.quiet)
    print(f"done: test recon {summary['test_recon']:.2f}, negative ELBO {summary['test_nelbo_last']:.2f} nats per image; "
          f"{summary['seconds']:.1f}s -> {recipe.run_dir / 'vae.pt'}")
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from softdistill.config import load_recipe
    from softdistill.runtime import shutdown_distributed
    from softdistill.runner import run_recipe

    recipe = load_recipe(args.recipe, _overrides(args), kind="label")
    try:
        run_recipe(recipe, quiet=args.quiet, verify=args.verify)
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: store {recipe.run_dir}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from softdistill.data.shards import PACK
    from softdistill.sharded import verify_folder
    from softdistill.store.format import STORE

    result = verify_folder(args.folder, (STORE, PACK))
    fmt = result.fmt
    if result.problems:
        raise fmt.error(f"{args.folder}: {len(result.problems)} problem(s) found:\n  " + "\n  ".join(result.problems)
                        + f"\n{fmt.redo if result.edited else fmt.repair}.")
    unsealed = "" if result.sealed else (f"; its manifest ({result.manifest['format']}, written by an earlier version) "
                                         "carries no hash of its own, so an edit that keeps every rule of the format "
                                         "would go unnoticed")
    print(f"{args.folder}: intact; {fmt.describe(result.manifest)}{unsealed}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from softdistill.data.shards import describe, pack_imagefolder, parse_shard_size
    from softdistill.runs import RunInterrupted, interruption

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    kept = f"the shards finished so far are kept in {args.out} (the one being written is not)"
    with interruption(lambda: RunInterrupted(kept, resume=False)):
        manifest = pack_imagefolder(args.source, args.out, parse_shard_size(args.shard_size),
                                    on_corrupt=args.on_corrupt, workers=args.workers, quiet=args.quiet)
    skipped = f"; skipped {len(manifest['skipped'])} unreadable image(s), listed in the manifest" \
        if manifest["skipped"] else ""
    print(f"done: {args.out}: {describe(manifest)}{skipped}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from softdistill.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, split=args.split, data=args.data, root=args.root,
                                 batch_size=args.batch_size, device=args.device, ood=args.ood, ood_seed=args.ood_seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.checkpoint}: {result['model']} on {result['data']} {result['split']} "
              f"({result['samples']} images): accuracy {result['acc']:.2f}%, cross-entropy {result['loss']:.4f}")
        for name, shifted in result["ood"].items():
            print(f"  {name}: accuracy {shifted['acc']:.2f}% (in-domain {result['acc']:.2f}%), "
                  f"cross-entropy {shifted['loss']:.4f}")
    return 0


def _print_result(result) -> None:
    print()
    print(result.markdown)
    print(f"report: {result.report_dir}/ {', '.join(result.files)}  ({result.seconds:.0f}s)")


def _cmd_compare(args: argparse.Namespace) -> int:
    from softdistill.experiments import compare

    _print_result(compare(args.recipes, seeds=args.seeds, epochs=args.epochs, overrides=args.override,
                          output_dir=args.output, baseline=args.baseline, quiet=args.quiet, report_dir=args.report,
                          jobs=args.jobs))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from softdistill.experiments import quickstart

    _print_result(quickstart(tiny=args.tiny, seeds=args.seeds, output_dir=args.output, overrides=args.override,
                             quiet=args.quiet, jobs=args.jobs))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from softdistill.report.inspect import inspect_soft_labels

    result = inspect_soft_labels(args.source, data=args.data, split=args.split, student=args.student,
                                 output_dir=args.output, root=args.root, device=args.device,
                                 batch_size=args.batch_size, seed=args.seed, overrides=args.override,
                                 quiet=args.quiet)
    summary = result.summary
    b = summary["soft_labels"]
    what = args.source[0] if len(args.source) == 1 else "the ensemble"
    print(f"{what}: {b['samples']} soft labels, top-1 accuracy {b['accuracy']:.2f}%, NLL {b['nll']:.4f}, "
          f"ECE {100 * b['ece']:.2f}%")
    for r in summary["indicators"]:
        print(f"  k={r['k']}: unreliability {r['unreliability']:.4f}  ambiguity {r['ambiguity']:.4f}  "
              f"sum {r['sum']:.4f}  condition {'holds' if r['condition'] else 'fails'}")
    for member in summary.get("members", []):
        holds = ", ".join(map(str, member["condition_holds_at"])) or "no k"
        print(f"  member {member['name']}: top-1 accuracy {member['soft_labels']['accuracy']:.2f}%, condition holds "
              f"at {holds}: {'able' if member['able_to_teach'] else 'not able'} to teach")
    print(f"report: {result.output_dir}/report.md ({', '.join(result.files)})")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from softdistill.atomic import FileWriteError
    from softdistill.checkpoint import CheckpointError
    from softdistill.config import ConfigError
    from softdistill.data.samples import DatasetFormatError, DatasetNotFoundError
    from softdistill.data.workers import DataWorkerError
    from softdistill.engine import NonFiniteLossError, NonFiniteStateError
    from softdistill.runs import RunStateError
    from softdistill.runtime.distributed import DistributedError
    from softdistill.engine.wrap import CompileError

    return (ConfigError, CheckpointError, DatasetNotFoundError, DatasetFormatError, RunStateError,
            NonFiniteLossError, NonFiniteStateError, FileWriteError, DistributedError, CompileError, DataWorkerError,
            ValueError, ImportError)


def _reports_errors(exc: BaseException) -> bool:
    """Whether this process prints its error: process 0 does, and so does any process whose contact with the
    others failed (its own error); under torchrun another process prints others only once it has joined the
    others (before, every process meets the same error, and one message is enough)."""
    from softdistill.runtime.distributed import DistributedError, joined_others

    return int(os.environ.get("RANK", "0")) == 0 or isinstance(exc, DistributedError) or joined_others()


def _interrupted_message(command: str, argv: Sequence[str], exc: KeyboardInterrupt) -> str:
    """The one message of an interrupted command: what was kept and the command that continues."""
    from softdistill.runs import RunInterrupted

    again = shlex.join(["softdistill", *argv])
    if not isinstance(exc, RunInterrupted):
        return (f"softdistill {command}: interrupted before it finished (it keeps nothing partial); "
                f"run it again: {again}")
    if exc.resume:
        return (f"softdistill {command}: interrupted; {exc.kept}. Continue it exactly with: "
                f"{again if '--resume' in argv else again + ' --resume'}")
    return f"softdistill {command}: interrupted; {exc.kept}. Run the same command again to continue: {again}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handlers = {"train": _cmd_train, "train-vae": _cmd_train_vae, "label": _cmd_label, "data": _cmd_data,
                "eval": _cmd_eval, "compare": _cmd_compare, "quickstart": _cmd_quickstart, "inspect": _cmd_inspect}
    try:
        return getattr(args, "handler", handlers.get(args.command))(args)
    except _user_errors() as exc:
        if args.debug:
            raise
        if _reports_errors(exc):
            print(f"softdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(_interrupted_message(args.command, argv, exc), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
