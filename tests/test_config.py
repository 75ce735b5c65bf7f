"""Strict recipe loading: every bad key or value is one line naming it, before any data is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sslkit.config import SEED_MAX, Recipe, load_recipe, recipe_from_dict, save_recipe
from sslkit.errors import UserError
from sslkit.evaluation.finetune_config import is_finetune_recipe

RECIPES = [p for p in sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
           if not is_finetune_recipe(p)]  # pretraining recipes; tests/test_finetune.py runs the others


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_round_trip(tmp_path: Path) -> None:
    r = Recipe()
    save_recipe(r, tmp_path / "recipe.yaml")
    assert load_recipe(tmp_path / "recipe.yaml") == r


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_loads(path: Path) -> None:
    r = load_recipe(path)
    assert r.train.batch_size >= 2 and r.loss.temperature > 0


def test_override_applies_and_types_are_checked(tmp_path: Path) -> None:
    p = write(tmp_path, "optim:\n  lr: 0.5\n")
    assert load_recipe(p, ["optim.lr=0.1", "train.epochs=4"]).optim.lr == 0.1
    assert load_recipe(p, ["augment.crop_scale=[0.3, 0.9]"]).augment.crop_scale == (0.3, 0.9)
    with pytest.raises(UserError, match=r"--set optim\.lrr=1: unknown key 'optim\.lrr' — did you mean 'optim\.lr'"):
        load_recipe(p, ["optim.lrr=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe(p, ["optim.lr"])


@pytest.mark.parametrize(("override", "pattern"), [
    ("Train.epochs=2", r"^--set Train\.epochs=2: unknown key 'Train' — did you mean 'train'\?$"),
    ("train..epochs=2", r"^--set train\.\.epochs=2: unknown key 'train\.' — did you mean 'train\.epochs'\?$"),
    ("monitor.kk=3", r"^--set monitor\.kk=3: unknown key 'monitor\.kk' — did you mean 'monitor\.k'\?$"),
])
def test_bad_override_keys_name_the_override(tmp_path: Path, override: str, pattern: str) -> None:
    # 'Train' and 'train.' are sections the override made, not keys of the file.
    with pytest.raises(UserError, match=pattern):
        load_recipe(write(tmp_path, "train:\n  epochs: 1\n"), [override])


def test_a_bad_key_of_the_file_still_names_the_file_under_overrides(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^\S*r\.yaml:2: unknown key 'train\.epohcs' — did you mean 'train\.epochs'"):
        load_recipe(write(tmp_path, "train:\n  epohcs: 1\n"), ["train.batch_size=8", "Optim.lr=1"])


def test_seed_is_bounded_so_every_derived_seed_fits(tmp_path: Path) -> None:
    p = write(tmp_path, "seed: 3\n")
    with pytest.raises(UserError, match=rf"^--set seed=100000000000000: seed must be ≤ {SEED_MAX}, "
                                        r"got 100000000000000$"):
        load_recipe(p, ["seed=100000000000000"])
    with pytest.raises(UserError, match=rf"r\.yaml:1: seed must be ≥ -{SEED_MAX}, got -{SEED_MAX + 1}$"):
        load_recipe(write(tmp_path, f"seed: {-SEED_MAX - 1}\n"))
    assert load_recipe(p, [f"seed={SEED_MAX}"]).seed == SEED_MAX and load_recipe(p, ["seed=-3"]).seed == -3


def test_exponent_floats_are_numbers(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads an unquoted 1e-4 as the string '1e-4'; recipes read it as YAML 1.2 does.
    p = write(tmp_path, "optim:\n  weight_decay: 1e-4\n  lr: 3E-1\n")
    r = load_recipe(p, ["loss.temperature=5e-2"])
    assert (r.optim.weight_decay, r.optim.lr, r.loss.temperature) == (1e-4, 0.3, 0.05)
    with pytest.raises(UserError, match=r"optim\.weight_decay must be a finite number, got '1e-4' \(str\)"):
        load_recipe(write(tmp_path, "optim:\n  weight_decay: '1e-4'\n"))  # quoted: still a string


def test_safe_load_is_yaml_safe_load_plus_exponent_floats(tmp_path: Path) -> None:
    import yaml

    from sslkit.config import safe_load

    text = "a: [1, 2.5, '1e-4', x]\nb: {c: null, d: true}\ne: 1.0e-4\n"
    assert safe_load(text) == yaml.safe_load(text)
    assert safe_load("") is None and safe_load("w: 1e-4") == {"w": 1e-4}
    marker = tmp_path / "pwned"
    with pytest.raises(yaml.constructor.ConstructorError):
        safe_load(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    assert not marker.exists()
    with pytest.raises(yaml.composer.ComposerError):
        safe_load("a: 1\n---\nb: 2\n")


@pytest.mark.parametrize(("text", "pattern"), [
    ("optim:\n  lrr: 0.1\n", r"r\.yaml:2: unknown key 'optim\.lrr' — did you mean 'optim\.lr'\?"),
    ("optimm:\n  lr: 0.1\n", r"r\.yaml:1: unknown key 'optimm' — did you mean 'optim'\?"),
    ("train:\n  epochs: two\n", r"train\.epochs must be an integer, got 'two'"),
    ("train:\n  batch_size: '256'\n", r"train\.batch_size must be an integer, got '256' \(str\)"),
    ("train:\n  epochs: -1\n", r"train\.epochs must be ≥ 1, got -1"),
    ("loss:\n  temperature: 0\n", r"loss\.temperature must be > 0, got 0"),
    ("loss:\n  temperature: .inf\n", r"loss\.temperature must be a finite number"),
    ("train:\n  batch_size: 1\n", r"train\.batch_size must be ≥ 2, got 1"),
    ("augment:\n  flip_p: 1.5\n", r"augment\.flip_p must be ≤ 1, got 1\.5"),
    ("augment:\n  crop_scale: [0.9, 0.2]\n", r"augment\.crop_scale must be \[low, high\]"),
    ("augment:\n  crop_scale: 0.5\n", r"augment\.crop_scale must be a list of 2 numbers"),
    ("optim:\n  name: adam\n", r"optim\.name must be one of 'lars', 'sgd', 'adamw', got 'adam'"),
    ("optim:\n  name: sgd\n  compile: true\n", r"r\.yaml:3: optim\.compile fuses the LARS update only"),
    ("data:\n  dataset: fashion-mnst\n", r"unknown data set 'fashion-mnst' \(data\.dataset\) — did you mean"),
    ("data:\n  root: /no/such/folder\n", r"data\.root '/no/such/folder' is not a folder"),
    ("data:\n  dataset: imagefolder\n", r"needs data\.root"),
    ("data:\n  dataset: stl10\n  split: test\n", r"r\.yaml:3: data\.split 'test' of stl10 is where the probes "
     r"score the encoder, so pretraining on it would inflate every score — use train, unlabeled, train\+unlabeled$"),
    ("data:\n  dataset: stl10\n  split: unlabelled\n", r"r\.yaml:3: stl10 has no split 'unlabelled' \(data\.split\) "
     r"\(did you mean 'unlabeled'\?\) — use train, unlabeled, train\+unlabeled$"),
    ("data:\n  split: extra\n", r"fashion-mnist-mini has no split 'extra' \(data\.split\) — use train$"),
    ("data:\n  dataset: stl10\n  split: tests\n", r"stl10 has no split 'tests' \(data\.split\) — use train, "),
    ("model:\n  encoder: resnet19\n", r"unknown model 'resnet19' \(model\.encoder\) — did you mean"),
    ("model:\n  stem: tiny\n", r"model\.stem must be one of 'imagenet', 'cifar'"),
    ("train:\n  precision: fp8\n", r"train\.precision must be one of"),
    ("train: 5\n", r"section 'train' must be a mapping"),
    ("[1, 2]\n", r"a recipe must be a mapping"),
    ("train:\n  epochs: 1\n   bad: indentation\n", r"r\.yaml:\d+: not valid YAML"),
    ("optim:\n  lr: 0.1\ntrain:\n  epochs: 2\noptim:\n  lr: 0.5\n",
     r"r\.yaml:5: not valid YAML \(key 'optim' appears twice in one mapping \(lines 1 and 5\) — keep one\)"),
    ("train:\n  epochs: 2\n  epochs: 3\n", r"r\.yaml:3: .*key 'epochs' appears twice in one mapping \(lines 2 and 3\)"),
    # Two spellings of one loaded key: both named as written (the loaded 0.1 or True matched only one of them).
    ("train:\n  0.1: 1\n  .1: 2\n", r"r\.yaml:3: not valid YAML \(keys '0\.1' \(line 2\) and '\.1' \(line 3\) of one "
     r"mapping load as the same key — keep one\)"),
    ("train:\n  1: 1\n  true: 2\n", r"r\.yaml:3: .*keys '1' \(line 2\) and 'true' \(line 3\) of one mapping load as"),
    ("", r"r\.yaml is empty — a recipe names at least its data"),
    ("# only a comment\n", r"is empty"),
    ("{}\n", r"is empty"),
    ("train:\n  epochs: 2\n  ~: 1\n  null: 2\n", r"r\.yaml:4: .*keys '~' \(line 3\) and 'null' \(line 4\) of one"),
    ("data:\n  mean: []\n  std: []\n", r"r\.yaml:2: data\.mean and data\.std must both be set, with one value per"),
])
def test_bad_recipes_name_the_key(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as info:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_a_nested_run_name_loads(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, "name: cifar/bs256\n")).name == "cifar/bs256"  # runs/cifar/bs256


def test_python_tags_are_refused_with_file_and_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: x\nseed: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(UserError, match=r"r\.yaml:2: YAML tag .*python/object/apply:os\.system.* is not allowed"):
        load_recipe(write(tmp_path, text))
    assert not marker.exists()


def test_missing_recipe_file() -> None:
    with pytest.raises(UserError, match="recipe file 'nope.yaml' not found"):
        load_recipe("nope.yaml")


def test_resolved_recipe_spells_out_every_default(tmp_path: Path) -> None:
    r = recipe_from_dict({"train": {"epochs": 2}})
    save_recipe(r, tmp_path / "x.yaml")
    raw = yaml.safe_load((tmp_path / "x.yaml").read_text())
    assert raw["train"]["epochs"] == 2 and raw["augment"]["flip_p"] == 0.5 and "temperature" in raw["loss"]


def test_replace_checks_too() -> None:
    assert Recipe().replace(**{"train.epochs": 3}).train.epochs == 3
    with pytest.raises(UserError, match="train.epochs must be ≥ 1"):
        Recipe().replace(**{"train.epochs": 0})


def test_a_section_given_as_a_mapping_keeps_its_other_keys() -> None:
    from sslkit.config import TrainConfig

    quickstart = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    recipe = load_recipe(quickstart)  # train.log_every: 5, the default 10
    for changed in (recipe.replace(train={"epochs": 3}),
                    load_recipe(quickstart, ["train={epochs: 3}"])):
        assert changed.train.epochs == 3 and changed.train.log_every == 5, "the recipe's, not the default"
        assert changed.replace(train={}) == changed
    assert recipe.replace(train=TrainConfig(epochs=3)).train == TrainConfig(epochs=3), "a whole config replaces"
    with pytest.raises(UserError, match=r"^override: unknown key 'train\.epochz' — did you mean 'train\.epochs'\?$"):
        recipe.replace(train={"epochz": 3})
    with pytest.raises(UserError, match=r"^--set train=\{epochz: 3\}: unknown key 'train\.epochz'"):
        load_recipe(quickstart, ["train={epochz: 3}"])


def test_yaml_merge_keys_work_and_explicit_keys_override_them(tmp_path: Path) -> None:
    text = "defaults: &opt\n  lr: 0.1\n  momentum: 0.8\noptim:\n  <<: *opt\n  lr: 0.2\n"
    with pytest.raises(UserError, match=r"unknown key 'defaults'"):  # merges parse; the anchor's home is checked
        load_recipe(write(tmp_path, text))
    r = load_recipe(write(tmp_path, "optim:\n  <<: {lr: 0.1, momentum: 0.8}\n  lr: 0.2\n"))
    assert r.optim.lr == 0.2 and r.optim.momentum == 0.8


def test_train_threads_beyond_what_torch_can_start_is_refused_with_the_key(tmp_path: Path) -> None:
    """train.threads=100000 crashed pretraining with a segmentation fault (exit 139, not a word) when torch started
    the threads; finetune's train.threads likewise."""
    from sslkit.evaluation.finetune_config import finetune_recipe_from_dict

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    with pytest.raises(UserError, match=r"--set train\.threads=100000: train\.threads must be ≤ 1024, got 100000"):
        load_recipe(recipe, ["train.threads=100000"])
    assert load_recipe(recipe, ["train.threads=1024"]).train.threads == 1024
    with pytest.raises(UserError, match=r"train\.threads must be ≤ 1024, got 2000"):
        finetune_recipe_from_dict({"run": str(tmp_path), "train": {"threads": 2000}})


def gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Makes torch see ``count`` CUDA devices (0: none), whatever this machine has."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_a_device_torch_or_sslkit_does_not_take_names_the_key_and_what_is_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'cuda:x' and 'cudax' passed the recipe's check (it only asked for a "cuda" prefix) and failed at training
    start with torch's RuntimeError ("Invalid device string"), or said no CUDA device was available."""
    gpus(monkeypatch, 2)
    for device in ("gpu", "cuda:x", "cudax", "CUDA", "mps", "meta"):
        with pytest.raises(UserError, match=rf"^\S*r\.yaml:2: train\.device must be auto, cpu, cuda or cuda:N, got "
                                            rf"'{device}'$"):
            load_recipe(write(tmp_path, f"train:\n  device: '{device}'\n"))
        with pytest.raises(UserError, match=rf"^--set train\.device={device}: train\.device must be auto, cpu, cuda "):
            load_recipe(write(tmp_path, "train:\n  epochs: 1\n"), [f"train.device={device}"])


def test_a_device_this_machine_lacks_is_refused_at_load_with_file_and_line(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:7 on a machine with two GPUs passed the recipe's check and failed at training start inside torch."""
    gpus(monkeypatch, 2)
    assert load_recipe(write(tmp_path, "train:\n  device: cuda:1\n")).train.device == "cuda:1"
    with pytest.raises(UserError, match=r"^\S*r\.yaml:3: train\.device is 'cuda:7' but this machine has 2 CUDA "
                                        r"device\(s\), cuda:0 to cuda:1 — use one of them, or auto$"):
        load_recipe(write(tmp_path, "train:\n  epochs: 1\n  device: cuda:7\n"))
    with pytest.raises(UserError, match=r"^--set train\.device=cuda:2: train\.device is 'cuda:2' but this machine "):
        load_recipe(write(tmp_path, "name: x\n"), ["train.device=cuda:2"])
    with pytest.raises(UserError, match=r"^override: train\.device is 'cuda:2' but this machine has 2"):
        Recipe().replace(train={"device": "cuda:2"})
    gpus(monkeypatch, 0)
    with pytest.raises(UserError, match=r"^\S*r\.yaml:2: train\.device is 'cuda' but no CUDA device is available — "
                                        r"use auto or cpu$"):
        load_recipe(write(tmp_path, "train:\n  device: cuda\n"))
    # A run's own recipe is read to recompute what it did, perhaps on another machine than it trained on.
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("train:\n  device: cuda:3\n")
    from sslkit.config import load_run_recipe

    assert load_run_recipe(run).train.device == "cuda:3"


def test_a_fine_tune_recipe_checks_its_device_as_a_pretraining_recipe_does(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sslkit.evaluation.finetune_config import finetune_recipe_from_dict

    run = tmp_path / "run"
    run.mkdir()
    for name in ("encoder.safetensors", "encoder.json", "recipe.yaml"):
        (run / name).write_text("")
    gpus(monkeypatch, 1)
    with pytest.raises(UserError, match=r"^recipe: train\.device must be auto, cpu, cuda or cuda:N, got 'cuda:x'$"):
        finetune_recipe_from_dict({"run": str(run), "train": {"device": "cuda:x"}})
    with pytest.raises(UserError, match=r"^recipe: train\.device is 'cuda:1' but this machine has 1 CUDA device\(s\), "
                                        r"cuda:0 — use one of them, or auto$"):
        finetune_recipe_from_dict({"run": str(run), "train": {"device": "cuda:1"}})
