"""Atomic checkpoints, safe loading, fallback past corrupt files, and the exported encoder."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from sslkit.checkpoint import (
    clean_temp_files,
    export_encoder,
    load_checkpoint,
    load_encoder,
    load_latest,
    resume_point,
    save_checkpoint,
    step_checkpoints,
)
from sslkit.errors import UserError
from sslkit.models import build_encoder


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "step": int(v), "rng": {"torch": torch.get_rng_state()}}


def test_keep_last_k_and_last_points_at_newest(tmp_path: Path) -> None:
    for s in range(1, 6):
        save_checkpoint(_state(s), tmp_path, s, keep=2)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [4, 5]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_corrupt_last_falls_back_with_a_warning(tmp_path: Path) -> None:
    for s in (1, 2):
        save_checkpoint(_state(s), tmp_path, s, keep=3)
    (tmp_path / "last.pt").unlink()  # break the hard link before truncating, like a torn write would
    (tmp_path / "last.pt").write_bytes(b"\x80\x02garbage")
    (tmp_path / "step-2.pt").write_bytes((tmp_path / "step-2.pt").read_bytes()[:100])
    with pytest.warns(UserWarning, match="last.pt"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 1 and path.name == "step-1.pt"


@pytest.mark.parametrize("last", ["hard-link", "copy"])
def test_a_step_file_newer_than_last_is_resumed_from(tmp_path: Path, last: str) -> None:
    """A process killed after step-3.pt was renamed into place but before last.pt pointed at it: last.pt is at
    step 2. --resume took last.pt, and trained step 3 again."""
    for s in (1, 2):
        save_checkpoint(_state(s), tmp_path, s, keep=3)
    if last == "copy":  # a file system without hard links: save_checkpoint writes last.pt as a copy
        (tmp_path / "last.pt").unlink()
        (tmp_path / "last.pt").write_bytes((tmp_path / "step-2.pt").read_bytes())
    torch.save(_state(3), tmp_path / "step-3.pt")  # the kill's leftover, complete
    state, path = load_latest(tmp_path)
    assert state["step"] == 3 and path.name == "step-3.pt"
    assert resume_point(tmp_path) == (3, tmp_path / "step-3.pt")
    (tmp_path / "step-3.pt").write_bytes((tmp_path / "step-3.pt").read_bytes()[:100])  # torn: last.pt is next
    with pytest.warns(UserWarning, match="step-3.pt"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 2 and path.name == "last.pt"
    assert resume_point(tmp_path) == (2, tmp_path / "last.pt")


@pytest.mark.parametrize("loads", [True, False])
def test_resume_point_reads_a_copied_last_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: bool) -> None:
    """On a file system without hard links last.pt is a copy, read for its step to place it among the step files;
    resume_point then read it again for the step it returns, or, when it does not load, to fail a second time."""
    for s in (1, 2):
        save_checkpoint(_state(s), tmp_path, s, keep=3)
    (tmp_path / "last.pt").unlink()
    (tmp_path / "last.pt").write_bytes((tmp_path / "step-2.pt").read_bytes() if loads else b"\x80\x02garbage")
    real, read = torch.load, []

    def counted(f: Path, *args: object, **kwargs: object) -> object:
        read.append(Path(f).name)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    assert resume_point(tmp_path) == (2, tmp_path / ("last.pt" if loads else "step-2.pt"))
    assert read.count("last.pt") == 1, read


def test_all_corrupt_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no checkpoint .* could be loaded"):
        load_latest(tmp_path)
    assert load_latest(tmp_path / "empty") is None


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    torch.save({"model": Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(UserError, match="evil"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_temp_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".tmp-step-3.pt.1234").write_bytes(b"partial")
    assert [p.name for p in clean_temp_files(tmp_path)] == [".tmp-step-3.pt.1234"]
    assert not list(tmp_path.iterdir())


def test_encoder_export_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_encoder("resnet18", "cifar", 1).eval()
    meta = dict(encoder="resnet18", stem="cifar", in_chans=1, num_features=512, image_size=28, mean=[0.3],
                std=[0.35], dataset="fashion-mnist-mini", data_root=None)
    export_encoder(enc, tmp_path, meta)
    info = json.loads((tmp_path / "encoder.json").read_text())
    assert len(info["sha256"]) == 64
    loaded = load_encoder(tmp_path)
    assert not loaded.training
    assert loaded.pretrained_cfg["input_size"] == (1, 28, 28) and loaded.pretrained_cfg["mean"] == (0.3,)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc(x))
    assert load_encoder(tmp_path / "encoder.safetensors").sslkit_meta["stem"] == "cifar"


def test_run_without_encoder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no exported encoder"):
        load_encoder(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_encoder(tmp_path / "nope")


def test_load_encoder_refuses_changed_damaged_or_incomplete_exports_in_one_line(tmp_path: Path) -> None:
    """Weights that are not the ones encoder.json hashes, a damaged safetensors file, a record without image_size,
    a checkpoint of junk bytes: each a UserError naming the file, never a load of the wrong weights or a
    traceback of safetensors, KeyError or torch."""
    from safetensors.torch import load_file, save_file

    enc = build_encoder("resnet18", "cifar", 1).eval()
    meta = dict(encoder="resnet18", stem="cifar", in_chans=1, num_features=512, image_size=28, mean=[0.3],
                std=[0.35], dataset="fashion-mnist-mini", data_root=None)
    export_encoder(enc, tmp_path, meta)
    weights = tmp_path / "encoder.safetensors"
    state = load_file(str(weights))
    state["conv1.weight"] = state["conv1.weight"] + 1
    save_file(state, str(weights))
    with pytest.raises(UserError, match=r"encoder\.safetensors has sha256 .* but encoder\.json records"):
        load_encoder(tmp_path)
    weights.write_bytes(bytes(20))
    record = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps(dict(record, sha256=None)))
    with pytest.raises(UserError, match=r"encoder\.safetensors is not a readable safetensors file"):
        load_encoder(tmp_path)
    del record["image_size"]
    (tmp_path / "encoder.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"lacks the key 'image_size'"):
        load_encoder(tmp_path)
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) + bytes(44))
    with pytest.raises(UserError, match=r"junk\.pt' is unreadable .* truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_an_unreadable_checkpoint_is_named_with_torchs_reason_cut_at_a_word(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's reasons run to hundreds of characters; the one line keeps the first 120 or so, cut between words
    (it was cut mid-word: '… If yo) — it is truncated or corrupt')."""
    reason = "Weights only load failed. " + " ".join(["This file can still be loaded if you trust its source"] * 5)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(reason)

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(UserError) as caught:
        load_checkpoint(tmp_path / "bad.pt")
    shown = re.fullmatch(r"checkpoint '.*bad\.pt' is unreadable \((.*) …\) — it is truncated or corrupt",
                         str(caught.value))
    assert shown, str(caught.value)
    assert len(shown.group(1)) <= 120 and reason.startswith(shown.group(1) + " "), shown.group(1)
