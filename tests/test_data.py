"""The CoOp/Dassl data protocol: split files, few-shot sampling, base/novel halves, the data module."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import pytest
import torch

from vlprompt.data import ImageSplitDataModule, Item, few_shot_split, read_split_file, subsample_classes
from vlprompt.errors import ConfigError
from vlprompt.toy import write_toy_dataset


def make_split(n_classes=5, per_class=(8, 5, 3)):
    split = {}
    for part, count in zip(("train", "val", "test"), per_class):
        # Interleaved labels, as real split files list them, so "order of first appearance" matters.
        split[part] = [Item(f"{part}/{c}_{i}.jpg", c, f"class {c}") for i in range(count) for c in range(n_classes)]
    return split


def reference_few_shot(split, shots, seed):
    """Dassl's generate_fewshot_dataset, written out independently: global random, defaultdict by label."""
    random.seed(seed)
    result = {}
    for part, k in (("train", shots), ("val", min(shots, 4))):
        tracker = defaultdict(list)
        for item in split[part]:
            tracker[item.label].append(item)
        chosen = []
        for items in tracker.values():
            chosen.extend(random.sample(items, k) if len(items) >= k else items)
        result[part] = chosen
    return result


@pytest.mark.parametrize("shots, seed", [(1, 1), (4, 2), (16, 3)])
def test_few_shot_selection_is_dassls(shots, seed):
    split = make_split(per_class=(20, 6, 3))
    ours = few_shot_split(split, shots, seed)
    expected = reference_few_shot(split, shots, seed)
    assert ours["train"] == expected["train"] and ours["val"] == expected["val"]
    assert ours["test"] == split["test"]
    assert few_shot_split(split, shots, seed) == ours  # deterministic
    assert len(ours["val"]) == 5 * min(shots, 4, 6)


def test_base_novel_halves_are_relabelled_from_zero():
    split = make_split(n_classes=5)
    base, novel = subsample_classes(split, "base"), subsample_classes(split, "novel")
    assert sorted({i.label for i in base["train"]}) == [0, 1, 2]  # ceil(5 / 2)
    assert sorted({i.label for i in novel["test"]}) == [0, 1]
    assert {i.classname for i in novel["test"]} == {"class 3", "class 4"}
    assert math.ceil(5 / 2) == len({i.classname for i in base["val"]})
    with pytest.raises(ConfigError, match="subsample must be one of"):
        subsample_classes(split, "half")


def test_split_file_format_is_checked(tmp_path):
    path = tmp_path / "split_zhou_X.json"
    path.write_text(json.dumps({"train": [["a.jpg", 0, "a"]], "val": []}))
    with pytest.raises(ConfigError, match="lacks \\['test'\\]"):
        read_split_file(path)
    path.write_text(json.dumps({"train": [["a.jpg", "0", "a"]], "val": [], "test": []}))
    with pytest.raises(ConfigError, match="is not \\[relpath, label, classname\\]"):
        read_split_file(path)
    with pytest.raises(ConfigError, match="does not exist; see datasets/README.md"):
        read_split_file(tmp_path / "missing.json")


def test_data_module_loads_generated_images_and_reports_missing_files(tmp_path):
    classnames = write_toy_dataset("ToyShapes", tmp_path, train_per_class=3, val_per_class=1, test_per_class=1)
    module = ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", shots=2, subsample="base",
                                  batch_size=4, num_workers=0, image_size=32)
    assert module.classnames == classnames[: math.ceil(len(classnames) / 2)]
    module.setup("fit")
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.max() < len(module.classnames)
    (tmp_path / "images" / "red_circle" / "train_000.png").unlink()
    with pytest.raises(ConfigError, match="images listed in the split file are missing"):
        ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", shots=-1, num_workers=0).setup("fit")


def test_few_shot_selection_is_cached_per_shots_and_seed_and_redrawn_when_the_split_changes(tmp_path):
    write_toy_dataset("ToyShapes", tmp_path, train_per_class=6, val_per_class=5, test_per_class=1)
    split_path = tmp_path / "split_zhou_ToyShapes.json"
    expected = few_shot_split(read_split_file(split_path), 2, 3)
    module = ImageSplitDataModule(tmp_path, split_file=split_path.name, shots=2, seed=3, num_workers=0)
    cache = tmp_path / "split_fewshot" / "shot_2-seed_3.json"
    saved = json.loads(cache.read_text())
    assert [Item(*e) for e in saved["train"]] == expected["train"] == module.split["train"]
    assert [Item(*e) for e in saved["val"]] == expected["val"]
    assert not (tmp_path / "split_fewshot" / "shot_2-seed_1.json").exists()
    # A cached selection is read back as it is ...
    saved["train"] = saved["train"][:1]
    cache.write_text(json.dumps(saved))
    assert len(ImageSplitDataModule(tmp_path, split_file=split_path.name, shots=2, seed=3).split["train"]) == 1
    # ... until the split file changes: then it is drawn again.
    raw = json.loads(split_path.read_text())
    raw["train"] = raw["train"][::-1]
    split_path.write_text(json.dumps(raw))
    redrawn = ImageSplitDataModule(tmp_path, split_file=split_path.name, shots=2, seed=3).split["train"]
    assert redrawn == few_shot_split(read_split_file(split_path), 2, 3)["train"] and len(redrawn) == 50


def _fit_coop(root, seed=1, **data_options):
    import pytorch_lightning as pl

    import vlprompt

    data = ImageSplitDataModule(root, split_file="split_zhou_ToyShapes.json", shots=4, batch_size=8, num_workers=0,
                                **{"augment": False, **data_options})
    pl.seed_everything(seed)
    learner = vlprompt.build_learner("coop", vlprompt.load_clip("vlprompt-tiny", pretrained="toy"), data.classnames)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(learner, datamodule=data)
    return learner


@pytest.mark.slow
def test_cached_image_features_train_exactly_like_images_without_augmentation(tmp_path):
    write_toy_dataset("ToyShapes", tmp_path, train_per_class=4, val_per_class=1, test_per_class=1)
    plain = _fit_coop(tmp_path)
    cached = _fit_coop(tmp_path, cache_image_features=True)
    torch.testing.assert_close(cached.prompts.ctx, plain.prompts.ctx, atol=1e-5, rtol=0)
    assert not torch.equal(plain.prompts.ctx, _fit_coop(tmp_path, seed=2).prompts.ctx)  # training did move it
    augmented = _fit_coop(tmp_path, cache_image_features=True, augment=True, cached_views=2)
    assert torch.isfinite(augmented.prompts.ctx).all()


def test_image_feature_cache_is_refused_where_it_would_be_wrong(tmp_path):
    import pytorch_lightning as pl

    import vlprompt

    write_toy_dataset("ToyShapes", tmp_path, train_per_class=2, val_per_class=1, test_per_class=1)
    with pytest.raises(ConfigError, match="without augmentation every view is the same"):
        ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", augment=False, cached_views=3)
    data = ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", shots=2, num_workers=0,
                                cache_image_features=True)
    maple = vlprompt.build_learner("maple", vlprompt.load_clip("vlprompt-tiny", pretrained="toy"), data.classnames)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="maple changes the image features"):
        trainer.fit(maple, datamodule=data)


def test_loader_workers_default_to_what_the_machine_has(tmp_path, monkeypatch):
    from vlprompt.data import datamodule

    monkeypatch.setattr(datamodule.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(datamodule.torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert datamodule.default_num_workers() == 8  # 15 spare cores, capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert datamodule.default_num_workers() == 3  # 4 cores per device, one of them for its training process
    monkeypatch.setattr(datamodule.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert datamodule.default_num_workers() == 0
    write_toy_dataset("ToyShapes", tmp_path, train_per_class=1, val_per_class=1, test_per_class=1)
    split = "split_zhou_ToyShapes.json"
    assert ImageSplitDataModule(tmp_path, split_file=split).num_workers == 0
    assert ImageSplitDataModule(tmp_path, split_file=split, num_workers=2).num_workers == 2
    with pytest.raises(ConfigError, match="data.num_workers must be 0 or more"):
        ImageSplitDataModule(tmp_path, split_file=split, num_workers=-1)


def test_the_random_crop_keeps_the_share_of_the_image_data_crop_scale_gives(tmp_path):
    from torchvision import transforms as T

    from vlprompt.data.datamodule import image_transform

    write_toy_dataset("ToyShapes", tmp_path, train_per_class=1, val_per_class=1, test_per_class=1)
    module = ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", shots=1, num_workers=0,
                                  crop_scale=[0.5, 1.0])
    assert module.crop_scale == (0.5, 1.0)
    crop = image_transform({"size": 32}, augment=True, crop_scale=module.crop_scale).transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.5, 1.0)
    assert image_transform({"size": 32}, augment=True).transforms[0].scale == (0.08, 1.0)  # Dassl's by default
    for bad in ([0.0, 1.0], [0.6, 0.5], [0.5]):
        with pytest.raises(ConfigError, match="data.crop_scale must be"):
            ImageSplitDataModule(tmp_path, split_file="split_zhou_ToyShapes.json", shots=1, crop_scale=bad)
