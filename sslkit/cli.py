"""The ``sslkit`` command: each subcommand parses its arguments and calls the library; no logic of its own.

Exit codes: 0 success; 2 a mistake in the input (one line on stderr says what, where and how to fix it);
3 training stopped on a non-finite loss; 74 a file could not be written (a full disk, a read-only folder: one line
names the file, the reason and, for pretrain, the checkpoint to resume from); 130 stopped by SIGINT/SIGTERM after
saving a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence

from sslkit.errors import SslkitWarning, UserError, WriteError

LOG_COLUMNS = 160  # rich's width when no standard stream is a terminal (its default, 80, wraps sslkit's tables)


@contextlib.contextmanager
def log_width(columns: int = LOG_COLUMNS) -> Iterator[None]:
    """Gives rich ``columns`` characters per line for the command when its output goes to files or pipes only.

    Rich takes its width from a terminal on stdin, stdout or stderr, else from ``COLUMNS``, else 80, at which the
    probe and fine-tuning tables wrap their cells in a log (``nohup sslkit … > log``); the widest, the
    fine-tuning table, needs about 150. A terminal, or a ``COLUMNS`` the user set, is left alone; the environment
    is restored afterwards.
    """
    def is_terminal(fd: int) -> bool:  # as rich asks: file descriptors 0, 1 and 2
        try:
            return os.get_terminal_size(fd).columns > 0
        except (OSError, ValueError):
            return False

    if "COLUMNS" in os.environ or any(is_terminal(fd) for fd in (0, 1, 2)):
        yield
        return
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        os.environ.pop("COLUMNS", None)


def _pretrain(args: argparse.Namespace) -> int:
    from sslkit.trainer import pretrain_from_file

    pretrain_from_file(args.recipe, out=args.out, overrides=tuple(args.set or ()), resume=args.resume)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from sslkit.evaluation.probe import run_probe

    run_probe(args.run, split=args.split, compare=tuple(args.compare or ()), json_path=args.json, seed=args.seed,
              fractions=tuple(args.fractions), data_root=args.data_root)
    return 0


def _neighbors(args: argparse.Namespace) -> int:
    from sslkit.evaluation.retrieval import find_neighbors

    find_neighbors(args.run, args.query, k=args.k, split=args.split, out=args.out, seed=args.seed, index=args.index,
                   data_root=args.data_root)
    return 0


def _umap(args: argparse.Namespace) -> int:
    from sslkit.report import run_map

    run_map(args.run, method=args.method, split=args.split, out=args.out, thumbnails=args.thumbnails,
            max_points=args.max_points, seed=args.seed, data_root=args.data_root)
    return 0


def _report(args: argparse.Namespace) -> int:
    from sslkit.report import build_report

    build_report(args.run, split=args.split, method=args.method, out=args.out, seed=args.seed,
                 max_points=args.max_points, data_root=args.data_root)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from sslkit.evaluation.finetune import finetune_from_file

    finetune_from_file(args.recipe, out=args.out, overrides=tuple(args.set or ()))
    return 0


SEED_LIMIT = 2**31 - 1  # FAISS's k-means takes a C int; numpy's legacy seeding (UMAP, t-SNE) no negative seed


def seed_value(text: str) -> int:
    """A ``--seed``: an integer from 0 to 2**31 - 1 (a negative or larger one failed with a traceback after the
    features were computed)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= seed <= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{seed} is out of range — give a seed from 0 to {SEED_LIMIT:,}")
    return seed


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The run a reading command works on, and where its data is now."""
    p.add_argument("run", help="run directory made by `sslkit pretrain`")
    p.add_argument("--data-root", metavar="DIR", help="where the run's data is now, if not where it was pretrained "
                   "(data moved, or a run made on another machine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslkit", description="Self-supervised pretraining (SimCLR) and "
                                     "honest evaluation of the encoder.")
    from sslkit import __version__

    parser.add_argument("--version", action="version", version=f"sslkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain an encoder from a recipe", description="Pretrain an encoder "
                       "with SimCLR. RECIPE is a YAML file (see recipes/), or a run directory with --resume.")
    p.add_argument("recipe", help="recipe YAML file, or a run directory to resume")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=0.1 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run from its newest checkpoint: sslkit pretrain RUN --resume (or RECIPE --out RUN "
                        "--resume)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("probe", help="linear probe, k-NN and k-means of a run's encoder against baselines",
                       description="Score a run's frozen encoder against raw pixels and a random encoder: linear "
                       "probe (all labels and fractions), weighted and majority k-NN, k-means (silhouette, NMI, ARI). "
                       "Writes RUN/probe.json and RUN/figures/ (another --split than test: RUN/probe-<split>.json and "
                       "figures of its own, so that the test split's are kept).")
    _run_arguments(p)
    p.add_argument("--split", default="test", help="evaluation split (default: test); val: a fixed sixth of the "
                   "labeled train split held out of the probes, to compare runs without looking at test")
    p.add_argument("--compare", action="append", metavar="RUN2", help="another run to put in the table")
    p.add_argument("--json", metavar="PATH", help="also write the results here (RUN/probe.json, or "
                   "RUN/probe-<split>.json, is always written)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0],
                   help="labeled fractions for the label-efficiency probe (default: 0.01 0.1 1.0)")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed of the validation split, label fractions and k-means (default: 0)")
    p.set_defaults(func=_probe)

    p = sub.add_parser("neighbors", help="nearest-neighbour grid of query images in a run's feature space",
                       description="Show each query image's k most similar images of a split (cosine similarity "
                       "of the encoder's features, the query itself excluded) as a PNG grid and a table.")
    _run_arguments(p)
    p.add_argument("--query", nargs="+", required=True, metavar="I",
                   help="image indices into the split, or random:N for N seeded random queries")
    p.add_argument("-k", type=int, default=8, help="neighbours per query (default: 8); queries × k at most 10,000, one "
                   "table line each (the grid draws the first of them)")
    p.add_argument("--split", default="test", help="split to search (default: test); val: the part of train that "
                   "`sslkit probe --split val` scores on (indices into it, in train's order)")
    p.add_argument("--out", metavar="PNG",
                   help="where to write the grid (default: RUN/neighbors/<split>-<queries>-k<k>.png)")
    p.add_argument("--index", default="flat", metavar="KIND",
                   help="FAISS index: flat (exact, the default), or auto, ivf-flat, hnsw, ivf-pq (approximate, for "
                   "splits of millions); built once and kept beside the features")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of random:N (default: 0)")
    p.set_defaults(func=_neighbors)

    p = sub.add_parser("umap", aliases=["map"], help="2-D UMAP or t-SNE map of a run's features, coloured by class",
                       description="Map a split's encoder features to 2-D with UMAP or t-SNE (cosine distances) "
                       "and draw them coloured by class, optionally with image thumbnails. `sslkit map` is the "
                       "same command.")
    _run_arguments(p)
    p.add_argument("--method", choices=("umap", "tsne"), default="umap", help="map method (default: umap)")
    p.add_argument("--split", default="test", help="split to map (default: test); val: the part of train that "
                   "`sslkit probe --split val` scores on")
    p.add_argument("--out", metavar="PNG", help="default: RUN/figures/<method>-<split>.png")
    p.add_argument("--thumbnails", type=int, default=0, metavar="N",
                   help="draw up to N image thumbnails on the map, as many as fit without covering each other")
    p.add_argument("--max-points", type=int, default=10_000, metavar="N",
                   help="map a seeded subset of N images when the split is larger (default: 10000)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the map and of the subset (default: 0)")
    p.set_defaults(func=_umap)

    p = sub.add_parser("report", help="one self-contained HTML page of a run (RUN/report.html)",
                       description="Gather a run's recipe, training curves, augmentations, probe results, map, "
                       "neighbours, clusters and fine-tuning into one HTML page with the figures inlined.")
    _run_arguments(p)
    p.add_argument("--split", default="test", help="split of the probe results, map, neighbours and clusters "
                   "(default: test); val: the part of train that `sslkit probe --split val` scores on")
    p.add_argument("--method", choices=("umap", "tsne"), default="umap", help="map method (default: umap)")
    p.add_argument("--out", metavar="HTML", help="default: RUN/report.html (RUN/report-<split>.html for another "
                   "split than test)")
    p.add_argument("--max-points", type=int, default=10_000, metavar="N",
                   help="most images on the map (default: 10000)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the map, neighbours and clusters (default: 0)")
    p.set_defaults(func=_report)

    p = sub.add_parser("finetune", help="fine-tune the SSL encoder against a supervised baseline on the same labels",
                       description="Fine-tune a run's encoder (arm ssl) and the same architecture from random init "
                       "(arm supervised) with identical labeled data, augmentation, schedule and seeds; report test "
                       "accuracy (mean ± std over seeds), the difference, and FGSM robustness.")
    p.add_argument("recipe", help="fine-tune recipe YAML (e.g. recipes/fashion_mnist_finetune.yaml), or a run "
                   "directory to fine-tune with the default recipe")
    p.add_argument("--out", help="folder for finetune.json and figures/ (default: the run directory)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set labeled.size=600 (repeatable)")
    p.set_defaults(func=_finetune)
    return parser


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """sslkit's own warnings (``SslkitWarning``: skipped images, a read-only cache folder) printed as one plain line,
    ``sslkit COMMAND: warning: …``, instead of Python's file, line number and source line; others as Python
    prints them. Only the text changes (``warnings.formatwarning``): filters and recorders work as before."""
    default = warnings.formatwarning

    def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 line: str | None = None) -> str:
        if issubclass(category, SslkitWarning):
            return f"sslkit {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = default


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sslkit`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from sslkit.host_memory import keep_freed_memory

    keep_freed_memory()  # training and evaluation reuse the large blocks they free (glibc; see sslkit.host_memory)
    from sslkit.data import data_root_option
    from sslkit.trainer import Interrupted, NonFiniteLoss

    # Missing or damaged data is reported in the command's terms: --data-root for the commands that read a run
    # (_run_arguments), the recipe's data.root and data.download for pretrain and finetune.
    option = "--data-root" if "data_root" in vars(args) else None

    # SIGTERM outside the training loop (which checkpoints on it) stops the command like Ctrl-C: exit 130.
    try:
        old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        old_term = None
    try:
        with log_width(), one_line_warnings(args.command), data_root_option(option):
            return args.func(args)
    except KeyboardInterrupt as e:  # a command may say what its interruption kept (finetune: its ended trainings)
        print(f"sslkit {args.command}: {str(e) or 'interrupted; files already written are complete'}", file=sys.stderr)
        return 130
    except (UserError, WriteError) as e:
        print(f"sslkit {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except NonFiniteLoss as e:
        print(f"sslkit {args.command}: stopped: {e}", file=sys.stderr)
        return e.exit_code  # 3
    except Interrupted as e:
        print(f"sslkit {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
