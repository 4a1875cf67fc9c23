"""The comparison run end to end on the demo data with tiny contenders, its resumption, its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from compare import ComparisonResult, choose_split, parse_compare_config, run_comparison, stages, study_config_text
from db.generated import dataset_cases, register_model
from db.importers import import_dataset
from db.models import CompareStage, GeneratedImage, Job, Model, Study, StudyItem
from db.workspace import Workspace
from generation.demo_data import make_demo_dataset
from generation.lora_train import LoraTrainConfig, dataset_examples, train_lora
from generation.testing import save_tiny_pipeline

CONTENDERS = ("msdm", "sd-lora", "flux-lora", "sd-base")

CONFIG = """
name = "demo-cmp"
dataset = "demo"
device = "cpu"
out_dir = "run"

[split]
held_out = 4
seed = 1

[generation]
per_case = 2
seed = 3
steps = 2
batch_size = 4

[metrics]
extractor = "tiny-dinov2"
metrics = ["FD", "KID"]
alignment = "tiny-clip"
n_boot = {n_boot}

[[contenders]]
name = "msdm"
kind = "msdm"
config = "tiny"
train = {{ unet_steps = 2, vae_steps = 2, batch_size = 4, vae_batch_size = 4, lr_warmup_steps = 1 }}

[[contenders]]
name = "sd-lora"
kind = "lora"
base = "{sd}"
train = {{ rank = 4, steps = 3, batch_size = 4, resolution = 32, lr = 0.01, validation_steps = 2 }}
generation = {{ height = 32, width = 32 }}

[[contenders]]
name = "flux-lora"
kind = "lora"
base = "{flux}"
train = {{ rank = 4, steps = 3, batch_size = 4, resolution = 16, lr = 0.01, validation_steps = 2 }}
generation = {{ height = 16, width = 16, max_sequence_length = 16 }}

[[contenders]]
name = "sd-base"
kind = "registered"
model = "tiny-sd"
generation = {{ height = 32, width = 32 }}

[study]
cases_per_model = 3
raters_per_item = 1
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    root = tmp_path_factory.mktemp("compare")
    workspace = Workspace.open(f"sqlite:///{root / 'db.sqlite3'}", root / "data")
    make_demo_dataset(root / "demo", n_per_domain=5, seed=0, size=64)
    import_dataset(workspace.database, workspace.store, "csv", root / "demo" / "metadata.csv", name="demo")
    sd = save_tiny_pipeline("sd", root / "tiny-sd")
    flux = save_tiny_pipeline("flux", root / "tiny-flux")
    with workspace.database.session() as session:
        register_model(session, "tiny-sd", kind="diffusers", source=str(sd))
    path = root / "compare.toml"
    path.write_text(CONFIG.format(sd=sd, flux=flux, n_boot=0), encoding="utf-8")
    return workspace, path


@pytest.fixture(scope="module")
def first_run(setup: tuple[Workspace, Path]) -> ComparisonResult:
    workspace, path = setup
    lines: list[str] = []
    result = run_comparison(workspace, path, progress=lines.append)
    assert any("train:msdm: running" in line for line in lines)
    return result


def test_the_run_writes_quality_and_cost_side_by_side(
    setup: tuple[Workspace, Path], first_run: ComparisonResult
) -> None:
    workspace, path = setup
    result = first_run
    assert result.out_dir == path.parent / "run"
    assert result.stages_skipped == []
    trained = [f"train:{c}" for c in CONTENDERS[:3]]
    assert set(trained) <= set(result.stages_run)
    assert "train:sd-base" not in result.stages_run  # a registered model is not trained

    table = pd.read_csv(result.report_csv)
    assert list(table["contender"]) == list(CONTENDERS)
    for column in ("FD_dinov2-tiny-random", "KID_dinov2-tiny-random", "alignment_clip-tiny-random"):
        assert table[column].notna().all(), column
    assert (table["n_generated"] == 8).all() and (table["n_real"] == 4).all()  # 4 held-out cases x 2 seeds
    assert (table["parameters"] > 0).all() and (table["flops_per_image"] > 0).all()
    assert (table["seconds_per_image"] > 0).all() and (table["peak_memory_mib"] > 0).all()
    trained_rows = table[table["kind"] != "registered"]
    assert (trained_rows["train_hours"] > 0).all() and (trained_rows["trainable_parameters"] > 0).all()
    lora_rows = table[table["kind"] == "lora"]
    assert (lora_rows["train_flops"] > 0).all()
    assert table.loc[table["contender"] == "sd-base", "train_hours"].isna().all()
    # the LoRA adds its parameters on top of the same base
    params = dict(zip(table["contender"], table["parameters"], strict=True))
    assert params["sd-lora"] > params["sd-base"]

    page = result.report_html.read_text(encoding="utf-8")
    assert all(name in page for name in CONTENDERS)
    assert "dinov2-tiny-random" in page and "random weights" in page
    assert page.count("<img") == 4 * (1 + len(CONTENDERS))  # 4 prompts: the real image + one per contender

    with workspace.database.session() as session:
        held_out = set(json.loads(result.manifest.read_text())["stages"]["split"]["outputs"]["held_out"])
        for name in CONTENDERS[:3]:
            model = session.scalar(select(Model).where(Model.name == f"demo-cmp-{name}"))
            images = session.scalars(select(GeneratedImage).where(GeneratedImage.model_id == model.id)).all()
            assert len(images) == 8 and {g.case_id for g in images} == held_out
        stages = session.scalars(select(CompareStage).where(CompareStage.comparison == result.name)).all()
        assert {s.stage for s in stages} == set(result.stages_run)
        assert session.scalar(select(func.count()).select_from(Job)) == 0  # no fake jobs in the console's list
        study = session.scalar(select(Study).where(Study.name == "demo-cmp-study"))
        assert result.study == "demo-cmp-study"
        assert session.scalar(select(func.count()).select_from(StudyItem).where(StudyItem.study_id == study.id)) == 12


def test_a_rerun_skips_finished_stages_and_a_change_redoes_only_what_depends_on_it(
    setup: tuple[Workspace, Path], first_run: ComparisonResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, path = setup

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a finished stage ran again")

    for name in ("train", "generate", "cost", "study"):
        monkeypatch.setattr(stages, name, must_not_run)
    again = run_comparison(workspace, path)
    assert again.stages_run == []
    assert set(again.stages_skipped) == set(first_run.stages_run)
    pd.testing.assert_frame_equal(pd.read_csv(again.report_csv), pd.read_csv(first_run.report_csv))

    # the manifest is lost: the database's stage cache still says what is done
    again.manifest.unlink()
    assert run_comparison(workspace, path).stages_run == []

    # a metrics setting changes: metrics and report are redone, nothing upstream, not the study
    text = path.read_text(encoding="utf-8").replace("n_boot = 0", "n_boot = 3")
    path.write_text(text, encoding="utf-8")
    changed = run_comparison(workspace, path)
    assert changed.stages_run == ["metrics", "report"]
    assert pd.read_csv(changed.report_csv)["FD_dinov2-tiny-random_ci"].notna().all()


def test_training_examples_come_from_the_dataset(setup: tuple[Workspace, Path]) -> None:
    workspace, _ = setup
    examples = dataset_examples(workspace, "demo")
    assert len(examples) == 10 and all(path.is_file() and prompt for path, prompt in examples)
    with workspace.database.session() as session:
        ids = [c.id for c in dataset_cases(session, "demo")][:3]
    assert [p for _, p in dataset_examples(workspace, "demo", case_ids=ids)] == [p for _, p in examples[:3]]
    with pytest.raises(ValueError, match="no cases with split 'test'"):
        dataset_examples(workspace, "demo", split="test")
    with pytest.raises(ValueError, match="needs training examples"):
        train_lora(LoraTrainConfig(base="x", out_dir="y"), progress=False)


def test_study_config_and_split() -> None:
    config = parse_compare_config(
        'name = "x"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "registered"\nmodel = "m"\n'
        "[study]\nraters_per_item = 2\ndisplay = { size = 256 }\n"
    )
    keys = [f"case-{i}" for i in range(7)]
    text = study_config_text(config, keys)
    assert 'name = "x-study"' in text and "cases_per_model = 7" in text and '"m"' in text and "size = 256" in text
    from db.studies import parse_study_config

    assert parse_study_config(text).cases == sorted(keys)  # the study draws only held-out cases
    alone = {i: f"image-{i}" for i in range(1, 11)}  # one prompt per image: the split is a plain draw
    split = choose_split(alone, None, config.split.__class__(held_out=3, seed=5))
    assert len(split["held_out"]) == 3 and len(split["train"]) == 7
    assert split == choose_split(alone, None, config.split.__class__(held_out=3, seed=5))
    chosen = choose_split({i: f"image-{i}" for i in range(1, 6)}, [2, 4], config.split)
    assert (chosen["held_out"], chosen["train"]) == ([2, 4], [1, 3, 5])
    with pytest.raises(ValueError, match="leaves no training case"):
        choose_split({i: str(i) for i in range(3)}, None, config.split.__class__(held_out=3))


def test_split_keeps_every_prompt_of_an_image_on_one_side(shared_data):
    """MEDVQA-GI writes 7-14 prompts per image: a prompt-level split put 100% of held-out images in training."""
    import csv

    from compare import SplitConfig

    rows = list(csv.DictReader((shared_data / "gi" / "prompts_per_image.csv").open(encoding="utf-8")))
    groups = {i: row["file"] for i, row in enumerate(rows)}  # case id -> its image, as db.case_groups gives
    per_image = {}
    for row in rows:
        per_image[row["file"]] = per_image.get(row["file"], 0) + 1
    assert min(per_image.values()) >= 7  # the published layout: several prompts per image
    for held_out in (40, 100):
        split = choose_split(groups, None, SplitConfig(held_out=held_out, seed=3))
        held_images = {groups[i] for i in split["held_out"]}
        train_images = {groups[i] for i in split["train"]}
        assert held_images.isdisjoint(train_images)
        assert split["audit"]["overlap_groups"] == 0
        assert len(split["held_out"]) >= held_out
        assert split["audit"]["held_out_groups"] == len(held_images)
    # an explicit split value that cuts through an image drops that image's training prompts
    first = rows[0]["file"]
    cut = [i for i, row in enumerate(rows) if row["file"] == first][:2]
    split = choose_split(groups, cut, SplitConfig(held_out=None, seed=0))
    assert split["audit"]["train_cases_dropped_sharing_a_group"] == per_image[first] - 2
    assert first not in {groups[i] for i in split["train"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "invalid TOML"),
        ('dataset = "d"', "missing key 'name'"),
        ('name = "x"\ndataset = "d"', "at least one"),
        ('name = "x"\ndataset = "d"\ncolour = 1', "unknown key"),
        ('name = "x"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "gan"', "kind must be one of"),
        ('name = "x"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "lora"', "needs base"),
        ('name = "x"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "registered"', "needs model"),
        (
            'name = "x"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "lora"\nbase = "b"\ntrain = { rnk = 4 }',
            r"unknown key\(s\) rnk in contenders\[0\].train",
        ),
        (
            'name = "x"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "msdm"\nconfig = "huge"',
            "config must be one of",
        ),
        ('name = "x"\ndataset = "d"\n[generation]\nsteps = 0', "generation].steps must be at least 1"),
        ('name = "x"\ndataset = "d"\n[generation]\nsteps = "many"', "must be a whole number"),
        ('name = "x"\ndataset = "d"\n[metrics]\nextractor = "vgg"', "unknown extractor"),
        ('name = "x"\ndataset = "d"\n[metrics]\nmetrics = ["FID"]', "FD, KID and/or CMMD"),
        ('name = "x"\ndataset = "d"\n[split]\nheld_out = 3\nsplit = "test"', "not both"),
    ],
)
def test_config_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_compare_config(text, source="cfg.toml")


def test_duplicate_contenders_are_refused() -> None:
    entry = '[[contenders]]\nname = "a"\nkind = "registered"\nmodel = "m"\n'
    with pytest.raises(ValueError, match="unique"):
        parse_compare_config(f'name = "x"\ndataset = "d"\n{entry}{entry}')
