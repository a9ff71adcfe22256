"""The toy medical world and the toy biomedical CLIP (``vlprompt-bert-tiny``: BERT text tower, timm ViT)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil

import pytest
import torch

import vlprompt
from vlprompt.clip.frozen import shipped_weights_path
from vlprompt.clip.toy_architectures import HF_TOWER_DIR, TOY_BERT, toy_bert_vocabulary, write_toy_bert_files
from vlprompt.clip.towers import HFTextTower, TimmViT
from vlprompt.eval.toy import WORLD_CHECK_SETS, check_set_accuracies
from vlprompt.toy.medical import (FINDINGS, MEDICAL_DATASETS, SITES, Finding, medical_caption, medical_vocabulary,
                                  render_scan)
from vlprompt.toy.world import DESCRIPTIONS, describe_classes, write_toy_dataset

WEIGHTS = shipped_weights_path(TOY_BERT, "toy", must_exist=False)


def test_medical_data_sets_have_twenty_classes_one_modality_each_and_are_deterministic(tmp_path):
    modalities = set()
    for name, spec in MEDICAL_DATASETS.items():
        classes = spec.classes()
        assert len(classes) == len(FINDINGS) * len(SITES) == 20 and len({c for c, _ in classes}) == 20
        modalities.add(spec.modality)
        first, second = tmp_path / f"{name}-a", tmp_path / f"{name}-b"
        for root in (first, second):
            write_toy_dataset(name, root, train_per_class=1, val_per_class=0, test_per_class=1)
        split = json.loads((first / f"split_zhou_{name}.json").read_text())
        assert len(split["train"]) == len(split["test"]) == 20
        for relpath, _, _ in split["test"]:
            assert (first / "images" / relpath).read_bytes() == (second / "images" / relpath).read_bytes()
        assert json.loads((first / DESCRIPTIONS).read_text()) == describe_classes(name)
    assert len(modalities) == len(MEDICAL_DATASETS)


def test_a_finding_is_small_and_local():
    """Two images that differ only in the finding's site differ in a few pixels, not across the image."""
    a = render_scan(Finding("nodule", "upper left"), "mri", random.Random(3))
    b = render_scan(Finding("nodule", "lower right"), "mri", random.Random(3))
    changed = (torch.tensor(list(a.getdata())) != torch.tensor(list(b.getdata()))).any(-1)
    # The background draws the same random numbers; the noise after the finding is the same too.
    assert 0 < int(changed.sum()) <= 60


def test_medical_descriptions_tell_classes_apart_by_finding_and_site_sentences():
    for name in MEDICAL_DATASETS:
        described = describe_classes(name)
        everywhere = set.intersection(*(set(s) for s in described.values()))
        for classname, sentences in described.items():
            informative = [s for s in sentences if s not in everywhere and not s.startswith("It is seen")]
            assert len(sentences) == 7 and len(informative) >= 4, classname
        assert len({frozenset(s) for s in described.values()}) == 20


def test_captions_name_modality_and_what_they_keep():
    rng = random.Random(0)
    captions = {medical_caption(Finding("cyst", "lower left"), "xray", rng) for _ in range(200)}
    assert captions == {"an x-ray of a cyst in the lower left.", "an x-ray of a cyst.",
                        "an x-ray of a finding in the lower left."}


def test_shipped_bert_files_are_what_the_project_writes(tmp_path):
    written = write_toy_bert_files(medical_vocabulary(), tmp_path / TOY_BERT)
    shipped = HF_TOWER_DIR / TOY_BERT
    assert (written / "vocab.txt").read_text() == (shipped / "vocab.txt").read_text()
    ignore = {"transformers_version"}
    config = {k: v for k, v in json.loads((written / "config.json").read_text()).items() if k not in ignore}
    assert config == {k: v for k, v in json.loads((shipped / "config.json").read_text()).items() if k not in ignore}
    vocabulary = toy_bert_vocabulary(medical_vocabulary())
    assert len(vocabulary) == len(set(vocabulary)) and set(medical_vocabulary()) <= set(vocabulary)


@pytest.fixture(scope="module")
def random_bert_clip():
    torch.manual_seed(0)
    return vlprompt.load_clip(TOY_BERT)


def test_toy_bert_clip_has_a_bert_tower_and_a_timm_vit(random_bert_clip):
    clip = random_bert_clip
    assert isinstance(clip._text, HFTextTower) and isinstance(clip._vision, TimmViT)
    assert clip.model.text.transformer.config.model_type == "bert"
    assert (clip.text_width, clip.text_layers, clip.embed_dim, clip.context_length) == (48, 4, 48, 32)
    assert clip.preprocess_cfg["size"] in (32, (32, 32))
    ids = clip.tokenize(["an x-ray of a calcification in the upper right."])
    tokens = clip.tokenizer.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens[:11] == ["[CLS]", "an", "x", "-", "ray", "of", "a", "calcification", "in", "the", "upper"]
    assert "[UNK]" not in clip.tokenizer.tokenizer.convert_ids_to_tokens(clip.tokenize(["a zebra."])[0].tolist())


def test_toy_bert_text_path_equals_open_clip_encode_text(random_bert_clip):
    clip = random_bert_clip
    texts = [spec.template.format(c) for spec in MEDICAL_DATASETS.values() for c, _ in spec.classes()[:3]]
    ids = clip.tokenize(texts)
    with torch.no_grad():
        assert torch.allclose(clip.encode_text(ids, normalize=True), clip.model.encode_text(ids, normalize=True),
                              atol=1e-5)
        images = torch.randn(3, 3, 32, 32)
        assert torch.allclose(clip.encode_image(images, normalize=True),
                              clip.model.encode_image(images, normalize=True), atol=1e-5)


def test_toy_bert_clip_loads_from_a_local_directory(random_bert_clip, tmp_path):
    """``local-dir:`` in BiomedCLIP's layout (open_clip_config.json, the weights and the tokenizer files at the top,
    as its Hugging Face repository has them), with the text tower's config inside too (offline)."""
    from safetensors.torch import save_file

    clip = random_bert_clip
    tower = tmp_path / "text-tower"
    shutil.copytree(HF_TOWER_DIR / TOY_BERT, tower)
    config = json.loads((shipped_weights_path("vlprompt-tiny", "toy").parents[1] / "model_configs" / "packaged"
                         / f"{TOY_BERT}.json").read_text())
    config["text_cfg"].update(hf_model_name=str(tower), hf_tokenizer_name=str(tower))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {
        "mean": list(clip.preprocess_cfg["mean"]), "std": list(clip.preprocess_cfg["std"])}}))
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    clip.tokenizer.tokenizer.save_pretrained(tmp_path)
    loaded = vlprompt.load_clip(f"local-dir:{tmp_path}")
    ids = clip.tokenize(["an ultrasound scan of a mass in the lower left."])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids), clip.encode_text(ids))
        assert torch.equal(loaded.encode_image(images), clip.encode_image(images))


def test_shipped_toy_bert_weights_match_their_record_and_are_reached():
    assert WEIGHTS.is_file(), "run tools/pretrain_toy_clip.py --arch vlprompt-bert-tiny to create the toy BERT CLIP"
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert WEIGHTS.with_suffix(".sha256").read_text().split()[0] == digest
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert record["sha256"] == digest and WEIGHTS.stat().st_size <= 10 * 2**20
    assert record["train_minutes"] <= 15 and set(record["zero_shot_test_accuracy"]) == set(MEDICAL_DATASETS)
    for name, accuracy in record["zero_shot_test_accuracy"].items():
        assert 20 <= accuracy <= 85, f"zero-shot on {name} is {accuracy}"
    measured = check_set_accuracies(vlprompt.load_clip(TOY_BERT, pretrained="toy"), WORLD_CHECK_SETS["medical"])
    for name, accuracy in record["check_set_accuracy"].items():
        assert abs(measured[name] - accuracy) <= 1.0, (name, measured[name], accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["biomedcoop", "vmfcoop"])
def test_fit_and_suites_on_the_toy_medical_family_with_the_toy_bert_clip(learner, tmp_path, capsys):
    """``vlprompt fit``, ``suite base2novel`` and ``suite few-shot`` of the biomedical learners on the toy BERT CLIP
    with a toy medical data set's own descriptions."""
    from vlprompt.commands import main

    from conftest import REPO

    configs = REPO / "configs"
    write_toy_dataset("ToyHistology", tmp_path / "ToyHistology", train_per_class=2, val_per_class=1, test_per_class=2)
    data = tmp_path / "ToyHistology.yaml"
    data.write_text((configs / "data" / "toy" / "ToyHistology.yaml").read_text().replace(
        "root: data/toy/ToyHistology", f"root: {tmp_path / 'ToyHistology'}") + "  batch_size: 8\n")
    quick = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    learner_config, clip_config = str(configs / "learners" / f"{learner}.yaml"), str(configs / "clip" / "toy-bert.yaml")
    main(["fit", "--config", learner_config, "--config", clip_config, "--config", str(data), "--data.shots", "2",
          "--trainer.default_root_dir", str(tmp_path / "fit"), *quick])
    assert "vlprompt: checkpoint" in capsys.readouterr().out
    for protocol, shots in (("base2novel", ["2"]), ("few-shot", ["1", "2"])):
        runs = tmp_path / protocol
        main(["suite", protocol, "--learner", learner_config, "--clip", clip_config, "--data", str(data),
              "--seeds", "1", "--shots", *shots, "--runs", str(runs), "--", *quick])
        found = [json.loads(path.read_text()) for path in runs.rglob("metrics.json")]
        assert len(found) == len(shots) and all(m["learner"] == learner and m["dataset"] == "ToyHistology"
                                                for m in found), found
