"""Files the user names with ``--out`` or ``--json``: checked before any work, so that a bad name costs nothing.

A command that has computed for minutes must not then fail on a folder given as a file name or an extension that
cannot be written, and must never write over a file of the run that another command made (a report written over
``encoder.json`` would break the run).
"""

from __future__ import annotations

import os
from pathlib import Path

from sslkit.errors import UserError

#: What ``sslkit pretrain``, ``probe`` and ``finetune`` leave in a run directory, which other commands read.
RUN_FILES = frozenset({"encoder.safetensors", "encoder.json", "recipe.yaml", "metrics.jsonl", "probe.json",
                       "finetune.json", "report.html"})
#: Run files that a command writes once per evaluation split: the test split's under these names, any other split's
#: beside them (:func:`split_file`), so that checking a choice on ``val`` never overwrites the test split's numbers.
SPLIT_FILES = ("probe.json", "report.html")
#: Folders of a run that hold files of its own (checkpoints, cached features and indexes).
RUN_FOLDERS = ("checkpoints", "features")
#: The figure formats the commands write (matplotlib picks the format from the extension).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def split_file(name: str, split: str) -> str:
    """The name of a file a command writes per evaluation split: ``name`` itself for ``test``, the split the
    published numbers are of, else ``name`` with ``-<split>`` before its extension (``probe-val.json``,
    ``.probe_predictions-val.pt``)."""
    if split == "test":
        return name
    path = Path(name)
    return f"{path.stem}-{split}{path.suffix}"


def is_run_file(name: str) -> bool:
    """Whether ``name`` is one of :data:`RUN_FILES`, or one of :data:`SPLIT_FILES` of a split a probe or report can
    be of (``probe-val.json``, ``report-extra.html``; not ``report-final.html``, a name of the user's own)."""
    if name in RUN_FILES:
        return True
    from sslkit.data import SPLITS
    from sslkit.evaluation.probe import HELD_OUT  # here, not above: the probe imports this module

    splits = {s for names in SPLITS.values() for s in names} | {HELD_OUT}
    return any(name == split_file(f, s) for f in SPLIT_FILES for s in splits)


def file_in_the_way(folder: Path) -> Path | None:
    """The first of ``folder`` and the folders above it that exists as something other than a folder (a file
    where a folder must be made), or None."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def check_out_folder(folder: Path, fix: str) -> None:
    """A ``UserError`` when ``--out`` ``folder`` is, or lies inside, a file; ``fix`` ends the message."""
    blocker = file_in_the_way(folder)
    if blocker is not None:
        inside = "" if blocker == folder else f" lies inside {str(blocker)!r}, which"
        raise UserError(f"--out {str(folder)!r}{inside} is a file, not a folder — {fix}")
    unwritable = not_writable(folder)
    if unwritable is not None:
        raise UserError(f"--out {str(folder)!r}: {str(unwritable)!r} is not writable (read-only) — {fix}")


def not_writable(folder: Path) -> Path | None:
    """The nearest of ``folder`` and the folders above it that exists, when files cannot be made in it (a read-only
    folder or file system), else None."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing if existing is not None and not os.access(existing, os.W_OK | os.X_OK) else None


def check_run_writable(run: str | Path, folders: tuple[str, ...], writes: str) -> None:
    """A ``UserError`` when a reading command could not write its files in the run directory ``run``: the run, or
    one of its subfolders ``folders`` the command writes in, is read-only, or is a file where a folder must be.

    Checked before any work: the features are cached in the run, so a command on a read-only run would otherwise
    compute for minutes and then fail on its first write. ``writes`` says what the command writes, for the message.
    """
    run = Path(run)
    for folder in (run, *(run / f for f in folders)):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{str(folder)!r} is a file, where the run's {folder.name}/ folder must be — move it away")
        if folder.is_dir() and not_writable(folder) is not None:
            raise UserError(f"{str(folder)!r} is not writable (read-only), and this command writes {writes} there — "
                            "make it writable, or copy the run to a writable folder")


def check_output(path: str | Path, option: str, suffixes: tuple[str, ...], run: str | Path | None = None,
                 own: str | None = None) -> Path:
    """``path`` as a file the command may write, else a ``UserError`` saying what is wrong and what to give instead.

    Args:
        path: the name the user gave.
        option: the option that named it (``--out``), for the message.
        suffixes: the extensions the command can write, the usual one first.
        run: the run directory the command reads; its files (:data:`RUN_FILES`, except ``own``) and folders
            (:data:`RUN_FOLDERS`) are refused, and so are those of any other run (a folder with an
            ``encoder.json``, or a ``recipe.yaml`` with ``metrics.jsonl`` or ``checkpoints/``), ``own`` included;
            a split's probe or report (``probe-val.json``) is a run file too.
        own: the run file this command itself writes by default (writing it again is what the user asked for).

    Returns:
        The path, with ``~`` expanded.
    """
    p = Path(path).expanduser()
    example = p / f"out{suffixes[0]}" if p.is_dir() else p.with_suffix(suffixes[0])
    if p.is_dir():
        raise UserError(f"{option} {path} is a folder — give a file name, such as {example}")
    if p.suffix.lower() not in suffixes:
        got = f"the extension {p.suffix!r}" if p.suffix else "no extension"
        kinds = f"{', '.join(suffixes[:-1])} or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise UserError(f"{option} {path} has {got} — give a {kinds} file, such as {example}")
    blocker = file_in_the_way(p.parent)
    if blocker is not None:
        raise UserError(f"{option} {path}: {blocker} is a file, not a folder — give another path")
    unwritable = not_writable(p.parent)
    if unwritable is not None:
        raise UserError(f"{option} {path}: {unwritable} is not writable (read-only) — give another path")
    if run is not None:  # the files and folders of the run read here, or of any other run, are not written over
        folder, where = Path(run).resolve(), p.resolve()
        owner = where.parent
        if is_run_file(where.name) and (where.name != own if owner == folder else is_run(owner)):
            whose = f"the run's own {where.name}" if owner == folder else f"the {where.name} of another run, {owner}"
            raise UserError(f"{option} {path} would overwrite {whose} — give another name")
        inside = next((d for d in where.parents if d.name in RUN_FOLDERS and (d.parent == folder or is_run(d.parent))),
                      None)
        if inside is not None:
            whose = (f"the run's {inside.name}/ folder, which holds the run's own files" if inside.parent == folder
                     else f"the {inside.name}/ folder of another run, {inside.parent}")
            raise UserError(f"{option} {path} is inside {whose} — give another path")
    return p


def is_run(folder: Path) -> bool:
    """A run directory: an exported encoder, or a recipe beside what pretraining writes (a project folder with a
    recipe.yaml of its own is not one)."""
    return (folder / "encoder.json").is_file() or ((folder / "recipe.yaml").is_file() and (
        (folder / "metrics.jsonl").is_file() or (folder / "checkpoints").is_dir()))
