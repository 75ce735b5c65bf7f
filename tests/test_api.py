"""The public Python API as a user's own code meets it: wrong inputs get one clear error, and what load_encoder
returns describes sslkit's preprocessing, not timm's ImageNet weights."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import sslkit
from sslkit import UserError, export_encoder, extract_features, load_encoder, load_recipe, nt_xent, pretrain
from sslkit.augment import preprocess
from sslkit.cli import main
from sslkit.models import build_encoder

ROOT = Path(__file__).resolve().parent.parent
META = dict(encoder="resnet18", stem="imagenet", in_chans=1, num_features=512, image_size=28, mean=[0.3],
            std=[0.35], dataset="fashion-mnist-mini")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    export_encoder(build_encoder("resnet18", "imagenet", 1), folder, META)
    return folder


def images(n: int = 4, c: int = 1, size: int = 28) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_extract_features_takes_uint8_tensors_and_arrays_and_refuses_the_rest(run: Path) -> None:
    encoder = load_encoder(run)
    x = images()
    features = extract_features(encoder, x, device="cpu")
    assert features.shape == (4, 512) and not features.requires_grad
    torch.testing.assert_close(extract_features(encoder, x.numpy(), device="cpu"), features, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(encoder(preprocess(x, [0.3], [0.35])), features)
    for bad, pattern in [
        (x.float() / 255, r"takes uint8 images \(N, C, H, W\) in 0\.\.255, got torch\.float32 of shape \(4, 1, 28, 28\)"
                          r" — convert floats in \[0, 1\] with \(x \* 255\)\.round\(\)\.to\(torch\.uint8\)"),
        (x[0], r"got one of shape \(1, 28, 28\) — pass x\[None\] for a single image"),
        ([x[0], x[1]], r"takes images as a uint8 tensor or array \(N, C, H, W\), or an ImageSource, not a list"),
        (x.repeat(1, 3, 1, 1), r"^the images, of shape \(4, 3, 28, 28\) read as \(N, C, H, W\), have 3 channel\(s\) "
                               r"but the encoder takes 1$"),  # not channels-last: no hint about it
    ]:
        with pytest.raises(UserError, match=pattern):
            extract_features(encoder, bad, device="cpu")
    with pytest.raises(UserError, match=r"^the images have 1 channel\(s\) but mean and std have 3 and 3 values$"):
        extract_features(encoder, x, mean=[0.5] * 3, std=[0.2] * 3, device="cpu")
    for bad_std in ([0.0], [-0.35], [float("nan")]):  # a 0 gave NaN features, blamed on the encoder and optim.lr
        with pytest.raises(UserError, match=r"^mean and std must be finite and std > 0, got mean \(0\.3,\) and std"):
            extract_features(encoder, x, mean=[0.3], std=bad_std, device="cpu")
    with pytest.raises(UserError, match=r"^the images have 1 channel\(s\) but the encoder's pretrained_cfg gives 3 "
                                        r"mean and 3 std values \(timm's defaults: load_encoder sets a run's own\) — "
                                        r"pass mean= and std=, one value per channel$"):
        extract_features(build_encoder("resnet18", "imagenet", 1), x, device="cpu")
    with pytest.raises(ValueError, match="batch_size must be ≥ 1, got 0"):
        extract_features(encoder, x, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="preprocess takes uint8 images in 0..255, got torch.float32"):
        preprocess(x.float(), [0.3], [0.35])
    # a numpy array, as extract_features takes one (it was refused as "takes uint8 images …, got uint8")
    torch.testing.assert_close(preprocess(x.numpy(), [0.3], [0.35]), preprocess(x, [0.3], [0.35]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="preprocess takes uint8 images in 0..255, got torch.float32"):
        preprocess(x.numpy().astype(np.float32) / 255, [0.3], [0.35])


def gpus(monkeypatch: pytest.MonkeyPatch, count: int, mps: bool = False) -> None:
    """Makes torch see ``count`` CUDA devices (0: none) and MPS or not, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_a_device_this_machine_lacks_or_torch_does_not_know_is_one_line(run: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """'gpu' and 'cuda:x' raised torch's RuntimeError ("Expected one of cpu, cuda, … device type at start of device
    string: gpu"), 'cuda:7' on a machine with fewer GPUs and 'mps' off a Mac failed at the first tensor moved."""
    from sslkit.evaluation.features import random_encoder

    gpus(monkeypatch, 0)
    with pytest.raises(UserError, match=r"^device is 'cuda' but no CUDA device is available — use auto or cpu$"):
        load_encoder(run, device="cuda")
    with pytest.raises(UserError, match=r"^device is 'cuda:0' but no CUDA device"):  # a torch.device too
        load_encoder(run, device=torch.device("cuda", 0))
    with pytest.raises(UserError, match=r"^device is 'cuda' but no CUDA device"):
        extract_features(load_encoder(run), images(), device="cuda")
    for bad in ("gpu", "cuda:x", "meta", 1.5):
        with pytest.raises(UserError, match=rf"^device must be auto, cpu, cuda, cuda:N or mps, got {bad!r}$"):
            load_encoder(run, device=bad)
        with pytest.raises(UserError, match=rf"^device must be auto, cpu, cuda, cuda:N or mps, got {bad!r}$"):
            extract_features(load_encoder(run), images(), device=bad)
    with pytest.raises(UserError, match=r"^device is 'mps' but MPS \(Apple's GPU\) is not available here — use auto "
                                        r"or cpu$"):
        extract_features(load_encoder(run), images(), device="mps")
    with pytest.raises(UserError, match=r"^device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'$"):
        random_encoder(META, images(), device="gpu")
    gpus(monkeypatch, 2)
    with pytest.raises(UserError, match=r"^device is 'cuda:7' but this machine has 2 CUDA device\(s\), cuda:0 to "
                                        r"cuda:1 — use one of them, or auto$"):
        extract_features(load_encoder(run), images(), device="cuda:7")
    gpus(monkeypatch, 0)
    assert load_encoder(run, device="auto").conv1.weight.device.type == "cpu", "auto: the CPU without CUDA"


def test_a_bad_device_on_the_command_line_exits_2_with_one_line_before_any_data(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """pretrain and finetune take the device as --set train.device=…; cuda:x and cuda:7 (two GPUs) got past the
    recipe's check and failed in torch once training started."""
    import sslkit.evaluation.finetune as finetune
    import sslkit.trainer as trainer

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(trainer, "prepare_data", no_data)
    monkeypatch.setattr(finetune, "prepare_data", no_data)
    gpus(monkeypatch, 2)
    quickstart = str(ROOT / "recipes" / "quickstart.yaml")
    out = tmp_path / "out"
    for device, says in [("gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
                         ("cuda:x", "train.device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
                         ("cuda:7", "train.device is 'cuda:7' but this machine has 2 CUDA device(s), cuda:0 to cuda:1 "
                                    "— use one of them, or auto")]:
        assert main(["pretrain", quickstart, "--out", str(out), "--set", f"train.device={device}"]) == 2
        assert capsys.readouterr().err == f"sslkit pretrain: error: --set train.device={device}: {says}\n"
        assert main(["finetune", str(run), "--out", str(out), "--set", "labeled.disjoint_from_pool=false",
                     "--set", f"train.device={device}"]) == 2
        assert capsys.readouterr().err == f"sslkit finetune: error: --set train.device={device}: {says}\n"
        assert not out.exists()


def test_load_encoder_describes_sslkits_preprocessing_to_timm(run: Path) -> None:
    from timm.data import create_transform, resolve_model_data_config

    encoder = load_encoder(run)
    for use_test_size in (False, True):
        cfg = resolve_model_data_config(encoder, use_test_size=use_test_size)
        assert cfg["input_size"] == (1, 28, 28) and cfg["crop_pct"] == 1.0
        assert cfg["mean"] == (0.3,) and cfg["std"] == (0.35,)
    assert encoder.default_cfg["input_size"] == (1, 28, 28)
    assert not {"hf_hub_id", "url", "test_input_size"} & set(encoder.pretrained_cfg)
    transform = create_transform(**resolve_model_data_config(encoder))
    from PIL import Image

    picture = Image.fromarray(images(1)[0, 0].numpy())
    assert tuple(transform(picture).shape) == (1, 28, 28)  # no resize to 29 and crop back: the whole image


def test_damaged_or_mismatched_records_are_one_line(run: Path, tmp_path: Path) -> None:
    record = json.loads((run / "encoder.json").read_text())
    (tmp_path / "encoder.safetensors").write_bytes((run / "encoder.safetensors").read_bytes())
    for change, pattern in [
        ([1, 2], r"holds a JSON list, not the object `sslkit pretrain` writes"),
        (dict(record, image_size="abc"), r"has a malformed in_chans, image_size, mean or std"),
        (dict(record, in_chans=3, mean=[0.3] * 3, std=[0.35] * 3),
         r"does not match a resnet18 \(imagenet stem, 3 channel\(s\)\) as encoder\.json describes it: 0 missing, 0 "
         r"unexpected and 1 differently shaped tensors \(first: conv1\.weight\)"),
        (dict(record, mean=[0.3, 0.3]), r"gives 2 mean and 1 std values for 1 channel\(s\)"),
    ]:
        (tmp_path / "encoder.json").write_text(json.dumps(change))
        with pytest.raises(UserError, match=pattern):
            load_encoder(tmp_path)


def test_export_needs_the_keys_load_encoder_reads_and_writes_readable_files(tmp_path: Path) -> None:
    encoder = build_encoder("resnet18", "imagenet", 1)
    with pytest.raises(ValueError, match=r"meta lacks stem, image_size — load_encoder needs encoder, stem"):
        export_encoder(encoder, tmp_path / "a", {k: v for k, v in META.items() if k not in ("stem", "image_size")})
    assert not (tmp_path / "a").exists()
    import timm

    for module, meta, first in [  # each exported, then refused by load_encoder: found at export time instead
        (encoder, dict(META, in_chans=3, mean=[0.3] * 3, std=[0.35] * 3), r"0 missing, 0 unexpected and 1 "
                                                                          r"differently shaped tensors \(first: conv1"),
        (timm.create_model("resnet18", num_classes=10, in_chans=1), META,  # a classifier left on
         r"0 missing, 2 unexpected and 0 differently shaped tensors \(first: fc\.bias\)"),
    ]:
        with pytest.raises(ValueError, match=r"^export_encoder: the module is not the resnet18 \(imagenet stem, \d "
                                             r"channel\(s\)\) that meta describes, so load_encoder could not rebuild "
                                             f"it: {first}"):
            export_encoder(module, tmp_path / "c", meta)
        assert not (tmp_path / "c").exists()
    export_encoder(timm.create_model("resnet18", num_classes=0, in_chans=1), tmp_path / "d", META)  # timm's own
    assert load_encoder(tmp_path / "d").num_features == 512
    old = os.umask(0o022)
    try:
        export_encoder(encoder, tmp_path / "b", META)
    finally:
        os.umask(old)
    for name in ("encoder.safetensors", "encoder.json"):  # safetensors alone would make the weights 0600
        assert stat.S_IMODE((tmp_path / "b" / name).stat().st_mode) == 0o644, name


def test_misused_entry_points_say_what_they_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = ROOT / "recipes" / "quickstart.yaml"
    with pytest.raises(TypeError, match=r"pretrain takes a Recipe, e\.g\. sslkit\.load_recipe\(.*\), not a str"):
        pretrain(str(recipe), tmp_path / "run")
    with pytest.raises(TypeError, match=r"overrides must be a list of KEY=VALUE strings, e\.g\. \['train\.epochs=1'\]"):
        load_recipe(recipe, "train.epochs=1")
    with pytest.raises(TypeError, match=r"^overrides must be a list of KEY=VALUE strings, e\.g\. "
                                        r"\['train\.epochs=1'\], not a dict — or load the recipe, then "
                                        r"\.replace\(\*\*\{'train\.epochs': 1\}\)$"):
        load_recipe(recipe, {"train.epochs": 1})
    z = torch.randn(4, 8)
    for t in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="needs a temperature τ > 0"):
            nt_xent(z, z, t)
    with pytest.raises(ValueError, match="with B ≥ 1"):
        nt_xent(z[:0], z[:0])
    assert {"load_encoder", "extract_features", "pretrain"} <= set(dir(sslkit))
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"sslkit {sslkit.__version__}"
    weights = tmp_path / "encoder.safetensors"  # a binary file given where a recipe goes
    weights.write_bytes(bytes(range(256)) * 4)
    for command in ("pretrain", "finetune"):
        assert main([command, str(weights)]) == 2
        assert f"{weights} is not a text file — give a" in capsys.readouterr().err


def test_images_of_another_size_than_the_runs_are_warned_about(run: Path) -> None:
    import warnings

    from sslkit.data import resize
    from sslkit.errors import SslkitWarning

    encoder = load_encoder(run)
    with pytest.warns(SslkitWarning, match=r"^the images are 56×56 but the encoder was pretrained and evaluated on "
                                           r"28×28 images — resize them first, e\.g\. sslkit\.data\.resize\(images, "
                                           r"28\)$") as caught:
        extract_features(encoder, images(size=56), device="cpu")  # a CNN takes it: nothing else would say so
    assert caught[0].filename == __file__, "names the caller's line"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(encoder, resize(images(size=56), 28), device="cpu")
        # a module of the user's own has no run size to compare with
        extract_features(build_encoder("resnet18", "imagenet", 1), images(size=56), [0.3], [0.35], device="cpu")


def test_numpy_images_read_backwards_are_taken() -> None:
    bgr = images(4, 3).numpy()
    rgb = bgr[:, ::-1]  # OpenCV's BGR to RGB: negative strides, which torch refused with a ValueError
    encoder = build_encoder("resnet18", "imagenet", 3).eval()
    mean, std = [0.5] * 3, [0.25] * 3
    expected = extract_features(encoder, np.ascontiguousarray(rgb), mean, std, device="cpu")
    torch.testing.assert_close(extract_features(encoder, rgb, mean, std, device="cpu"), expected, rtol=0, atol=0)
    torch.testing.assert_close(preprocess(rgb, mean, std), preprocess(np.ascontiguousarray(rgb), mean, std))


def test_numpy_images_of_the_wrong_layout_are_refused(run: Path) -> None:
    hwc = np.zeros((4, 28, 28, 1), np.uint8)  # as PIL or matplotlib hold them: channels last
    with pytest.raises(UserError, match=r"the images, of shape \(4, 28, 28, 1\) read as \(N, C, H, W\), have 28 "
                                        r"channel\(s\) but the encoder takes 1 — they look channels-last \(N, H, W, "
                                        r"C\): pass x\.permute\(0, 3, 1, 2\) \(numpy: x\.transpose\(0, 3, 1, 2\)\)$"):
        extract_features(load_encoder(run), hwc, device="cpu")


def test_the_cli_prints_sslkit_warnings_as_one_line() -> None:
    import warnings

    from sslkit.cli import one_line_warnings
    from sslkit.errors import SslkitWarning

    text = "skipped 1 unreadable image(s) of 81 in /data: dog/bad.png"
    with one_line_warnings("pretrain"):
        assert warnings.formatwarning(text, SslkitWarning, "/x/trainer.py", 162, "source = load_source(…)") == \
            f"sslkit pretrain: warning: {text}\n"
        assert "torch.py:162: UserWarning" in warnings.formatwarning(text, UserWarning, "/x/torch.py", 162), "others"
    assert "trainer.py:162" in warnings.formatwarning(text, SslkitWarning, "/x/trainer.py", 162), "restored after"


def test_transient_progress_leaves_nothing_in_a_log() -> None:
    import io

    from rich.console import Console

    from sslkit.evaluation.features import progress_bar

    log = io.StringIO()
    with progress_bar(Console(file=log)) as bar:
        bar.advance(bar.add_task("features", total=2), 2)
    assert log.getvalue() == "", "no blank line where the bar could not be drawn"
    shown = io.StringIO()
    with progress_bar(Console(file=shown, force_terminal=True)) as bar:
        bar.advance(bar.add_task("features", total=2), 2)
    assert "features" in shown.getvalue(), "a terminal still gets the bar"


def test_a_recipe_built_or_edited_in_code_is_checked_by_pretrain(tmp_path: Path) -> None:
    import dataclasses

    from sslkit.config import Recipe, TrainConfig

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    for bad, pattern in [  # load_recipe and Recipe.replace check these; a dataclass built in code skipped it
        (Recipe(train=TrainConfig(epochs=0)), r"^recipe: train\.epochs must be ≥ 1, got 0$"),  # exported untrained
        (dataclasses.replace(recipe, seed="x"), r"^recipe: seed must be an integer, got 'x' \(str\)$"),  # a TypeError
        (dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, lr=-1.0)),
         r"^recipe: optim\.lr must be > 0, got -1$"),  # torch's "Invalid learning rate: -0.125"
    ]:
        with pytest.raises(UserError, match=pattern):
            pretrain(bad, tmp_path / "run")
        assert not (tmp_path / "run").exists(), "refused before the run directory is made"


def test_pretrain_from_python_names_its_arguments_beside_the_options(tmp_path: Path) -> None:
    """pretrain(…) refused a folder with "drop --resume" or "choose another --out", options a caller in Python
    never passed."""
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=rf"^resuming {str(empty)!r}: it holds no checkpoint — drop --resume "
                                        r"\(resume=False from Python\) to start a new run there$"):
        pretrain(recipe, empty, resume=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "recipe.yaml").write_text("name: mine\n")
    with pytest.raises(UserError, match=r"— choose another --out \(out= from Python\)$"):
        pretrain(recipe, mine)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"is a file, not a folder — choose another --out for the run directory "
                                        r"\(out= from Python\)$"):
        pretrain(recipe, tmp_path / "file")


def test_the_readme_builds_a_recipe_in_code_with_the_exported_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example runs as written (pretrain itself stubbed: it would train): the section classes come
    from ``sslkit``, and the recipe that reaches pretrain passes the checks pretrain makes."""
    import re

    import sslkit.trainer as trainer
    from sslkit.config import recipe_from_dict

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (example,) = [b for b in blocks if "Recipe(" in b]
    given = {}
    monkeypatch.setattr(trainer, "pretrain", lambda recipe, out, **kw: given.update(recipe=recipe, out=out))
    monkeypatch.chdir(ROOT)
    names: dict = {}
    exec(compile(example, "README.md", "exec"), names)
    quickstart = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    longer = given["recipe"]
    assert (longer.optim.name, longer.optim.lr, longer.train.epochs) == ("sgd", 0.1, 3)
    assert longer.optim.momentum == sslkit.OptimConfig().momentum, "a whole section: the defaults"
    assert longer.train.log_every == quickstart.train.log_every != sslkit.TrainConfig().log_every, "the recipe's"
    assert recipe_from_dict(longer.to_dict(), check_root=False) == longer
    assert names["tiny"].train.max_steps == 2 and names["tiny"].model == sslkit.ModelConfig()
    configs = {"AugmentConfig", "DataConfig", "LossConfig", "ModelConfig", "MonitorConfig", "OptimConfig",
               "TrainConfig"}
    assert configs <= set(sslkit.__all__) and configs <= set(dir(sslkit))
