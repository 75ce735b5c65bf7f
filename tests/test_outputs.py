"""Files named with --out / --json: a folder, a wrong extension, a run's own file or folder, a file as a parent folder
are one line and exit code 2 before any work (a probe that ran for minutes then failed on them, a report overwrote
encoder.json)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_retrieval import make_run

from sslkit.cli import main
from sslkit.errors import UserError
from sslkit.evaluation import probe
from sslkit.outputs import FIGURE_SUFFIXES, check_output


def test_check_output_accepts_a_file_name_and_refuses_what_would_fail_or_destroy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    other = tmp_path / "other"
    (other / "features").mkdir(parents=True)
    (other / "encoder.json").write_text("{}")
    assert check_output(other / "notes.json", "--json", (".json",), run) == other / "notes.json"  # not a run file
    project = tmp_path / "project"  # a folder with a recipe.yaml of its own is not a run
    project.mkdir()
    (project / "recipe.yaml").write_text("name: mine\n")
    assert check_output(project / "probe.json", "--json", (".json",), run) == project / "probe.json"
    assert check_output(tmp_path / "new" / "grid.PNG", "--out", FIGURE_SUFFIXES, run) == tmp_path / "new" / "grid.PNG"
    assert check_output(run / "probe.json", "--json", (".json",), run, own="probe.json") == run / "probe.json"
    refusals = [
        ((tmp_path, "--out", (".html",)), f"--out {tmp_path} is a folder — give a file name, such as "
                                          f"{tmp_path / 'out.html'}"),
        ((tmp_path / "grid.txt", "--out", FIGURE_SUFFIXES), "has the extension '.txt' — give a .png, .pdf, .svg, "
                                                            ".jpg or .jpeg file"),
        ((tmp_path / "grid", "--out", FIGURE_SUFFIXES), f"has no extension — give a .png, .pdf, .svg, .jpg or .jpeg "
                                                        f"file, such as {tmp_path / 'grid.png'}"),
        ((tmp_path / "a-file" / "x.png", "--out", FIGURE_SUFFIXES), f"{tmp_path / 'a-file'} is a file, not a folder"),
        ((run / "encoder.json", "--json", (".json",), run, "probe.json"), "would overwrite the run's own encoder.json"),
        ((run / "report.html", "--out", (".html",), run), "would overwrite the run's own report.html"),
        ((run / "checkpoints" / "x.png", "--out", FIGURE_SUFFIXES, run), "inside the run's checkpoints/ folder"),
        ((other / "encoder.json", "--json", (".json",), run, "probe.json"),
         f"would overwrite the encoder.json of another run, {other}"),
        ((other / "probe.json", "--json", (".json",), run, "probe.json"),  # own is this run's, not the other's
         f"would overwrite the probe.json of another run, {other}"),
        ((other / "features" / "x.png", "--out", FIGURE_SUFFIXES, run), f"inside the features/ folder of another "
                                                                          f"run, {other}"),
    ]
    for args, message in refusals:
        with pytest.raises(UserError) as info:
            check_output(*args)
        assert message in str(info.value), (args, str(info.value))


def refuse_data_reads(monkeypatch: pytest.MonkeyPatch, checked: str) -> None:
    """Makes any read of a run's data fail, to show that a command checked ``checked`` before reading it."""

    def no_data(*args, **kwargs):
        raise AssertionError(f"data were read before {checked} was checked")

    monkeypatch.setattr(probe, "labeled_splits", no_data)
    monkeypatch.setattr("sslkit.evaluation.retrieval.load_splits", no_data)  # load_split and SplitMemo read by it


@pytest.mark.parametrize(("argv", "message"), [
    (["probe", "{run}", "--json", "{tmp}"], "--json {tmp} is a folder"),
    (["neighbors", "{run}", "--query", "3", "--out", "grid.txt"], "--out grid.txt has the extension '.txt'"),
    (["umap", "{run}", "--out", "{run}/features/map.png"], "inside the run's features/ folder"),
    (["report", "{run}", "--out", "{run}/encoder.json"], "has the extension '.json' — give a .html or .htm file"),
])
def test_commands_refuse_a_bad_output_before_reading_any_data(tmp_path: Path, capsys, monkeypatch, argv: list[str],
                                                              message: str) -> None:
    run = make_run(tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    refuse_data_reads(monkeypatch, "the output")
    fill = {"run": str(run), "tmp": str(tmp_path)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**fill) in err and len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("argv", [
    ["probe", "{run}"],
    ["neighbors", "{run}", "--query", "3"],
    ["neighbors", "{run}", "--query", "3", "--out", "{tmp}/grid.png"],
    ["umap", "{run}"],
    ["report", "{run}"],
])
@pytest.mark.parametrize("problem", ["read-only", "figures-file"])
def test_commands_refuse_a_run_they_cannot_write_in_before_reading_any_data(tmp_path: Path, capsys, monkeypatch,
                                                                          argv: list[str], problem: str) -> None:
    """A read-only run (or a file where its figures/ folder goes) failed with an OSError traceback, exit 1, after
    the features, the probe or the map had been computed (33 s for the quickstart probe)."""
    import os

    run = make_run(tmp_path / "run")
    if problem == "read-only":  # as root, chmod does not stop writes: the check asks os.access, so that is faked
        access = os.access
        monkeypatch.setattr("sslkit.outputs.os.access",
                            lambda p, mode: False if Path(p) == run else access(p, mode))
        message = f"{str(run)!r} is not writable (read-only)"
    else:
        (run / "figures").write_text("not a folder")
        message = "is a file, where the run's figures/ folder must be"
        if argv[0] == "neighbors":  # neighbours never write in figures/
            message = None
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    refuse_data_reads(monkeypatch, "the run")
    fill = {"run": str(run), "tmp": str(tmp_path)}
    if message is None:
        with pytest.raises(AssertionError, match="data were read"):
            main([a.format(**fill) for a in argv])
        return
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_outputs_in_a_read_only_folder_are_refused(tmp_path: Path, monkeypatch) -> None:
    """--out / --json in a read-only folder, and a pretraining run directory there, are one line before any work."""
    import os

    from sslkit.outputs import check_out_folder

    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr("sslkit.outputs.os.access", lambda p, mode: False if Path(p) == locked else access(p, mode))
    with pytest.raises(UserError, match=f"--json {locked / 'p.json'}: {locked} is not writable"):
        check_output(locked / "p.json", "--json", (".json",))
    with pytest.raises(UserError, match="is not writable"):
        check_output(locked / "new" / "map.png", "--out", FIGURE_SUFFIXES)
    with pytest.raises(UserError, match=f"--out '{locked / 'run'}': '{locked}' is not writable"):
        check_out_folder(locked / "run", "choose another --out for the run directory")
    assert check_output(tmp_path / "p.json", "--json", (".json",)) == tmp_path / "p.json"


@pytest.mark.parametrize("command", [["probe"], ["neighbors", "--query", "random:3"], ["umap"], ["report"]])
@pytest.mark.parametrize("seed", ["-1", "2147483648", "99999999999999999999"])
def test_a_seed_out_of_range_is_refused_before_any_work(tmp_path: Path, capsys, monkeypatch, command: list[str],
                                                        seed: str) -> None:
    """umap and report died with numpy's "Seed must be between 0 and 2**32 - 1", neighbors and probe with torch's
    "Overflow when unpacking long long" (FAISS's k-means: an OverflowError above 2**31 - 1), tracebacks with exit
    code 1 after the features had been computed."""
    run = make_run(tmp_path / "run")

    refuse_data_reads(monkeypatch, "the seed")
    with pytest.raises(SystemExit) as info:
        main([command[0], str(run), *command[1:], "--seed", seed])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --seed: {seed} is out of range — give a seed from 0 to 2,147,483,647" in err
