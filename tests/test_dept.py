"""DePT, the plug-in: its head, loss, fusion, learning rates, records and refusals; and equality with its reference
code (Koorye/DePT@d4ff416) on shared random ViT-B/16 weights, on each host it was released on.

The reference numbers were printed by ``trainers/elp_coop.py``, ``elp_cocoop.py``, ``elp_kgcoop.py`` and
``elp_maple.py`` (``CustomCLIP``, with ``clip/`` and ``clip_maple/``), run from a scratch folder outside this repository
with its Dassl, plotnine and logger imports stubbed, ``.cuda()`` and ``.half()`` made identities (fp32),
``DATASET.SUBSAMPLE_CLASSES base``, ``LINEAR_PROBE.TYPE linear``, ``WEIGHT 0.7``, fusion and FiLM on; CoOp ``N_CTX 16``
random; CoCoOp and KgCoOp 4 tokens from "a photo of a" (KgCoOp ``W 2.0``, template "a photo of a {}, a type of
pet."); MaPLe 2 tokens, depth 9; every learned tensor copied from the vlprompt learner below (docs/reproducing.md,
"Equal to the reference code"; the command: ``python run_ref.py coop|cocoop|kgcoop|maple``). One SGD step at lr
0.0035, the head and FiLM at 6.5 x, momentum 0.9, weight decay 5e-4. Only the numbers are kept.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.errors import ConfigError

from conftest import fill_learned, reference_images, save_fitted

CLASSNAMES = ["dog", "cat", "sea turtle"]
HOSTS = {
    "coop": {"n_ctx": 16, "ctx_init": None},
    "cocoop": {},
    "kgcoop": {"lambda_kg": 2.0, "templates": ["a photo of a {}, a type of pet."]},
    "maple": {},
}
REFERENCE = {
    "coop": {
        "parameters": 11_779,
        "logits": [0.203694, -0.564575, -0.1309812, 0.27687, -0.5054707, -0.138146, 0.246718, -0.6643245, -0.0821101],
        "ce": 1.0989161729812622, "head_ce": 1.1161818504333496, "loss": 1.1110022068023682,
        "gradient_norms": [1.6158515214920044, 0.035006165504455566, 0.03792669624090195, 2.6588549613952637],
        "logits_after_step": [-0.3597471, -0.0897846, -0.0229633, -0.2972278, -0.0173691, -0.0319705, -0.3313724,
                              -0.1880017, 0.0379194],
    },
    "cocoop": {
        "parameters": 38_947,
        "logits": [0.1229205, -0.7280276, -0.2800708, 0.1705896, -0.6932628, -0.295263, 0.1685696, -0.8188131,
                   -0.2291929],
        "ce": 1.1165951490402222, "head_ce": 1.1777735948562622, "loss": 1.1594200134277344,
        "gradient_norms": [0.81605464220047, 0.03728915750980377, 0.03792669624090195, 2.7698607444763184],
        "logits_after_step": [-0.4340095, -0.2511006, -0.1886577, -0.3978515, -0.2025414, -0.2058426, -0.4017988,
                              -0.3373818, -0.1251384],
    },
    "kgcoop": {
        "parameters": 5_635,  # the reference also registers a meta-net it never uses (262,656), not counted here
        "logits": [0.0493405, -0.7572212, -0.2123588, 0.1147714, -0.709953, -0.2204505, 0.1105596, -0.8468593,
                   -0.1677967],
        "ce": 1.1445558071136475, "head_ce": 1.1531164646148682, "loss": 1.9670041799545288,
        "gradient_norms": [5.844874858856201, 0.027979550883173943, 0.03792669624090195, 2.5195682048797607],
        "logits_after_step": [-0.502976, -0.2764634, -0.1134529, -0.4479176, -0.2176002, -0.1252555, -0.454653,
                              -0.369564, -0.0605776],
    },
    "maple": {
        "parameters": 3_558_659,
        "logits": [0.0559121, -0.7272869, -0.2769755, 0.101458, -0.6898648, -0.2935807, 0.1165829, -0.7914954,
                   -0.2360213],
        "ce": 1.1271650791168213, "head_ce": 1.1378726959228516, "loss": 1.1346604824066162,
        "gradient_norms": [1.3107203245162964, 0.03858216851949692, 0.03804613649845123, 2.910470485687256],
        "logits_after_step": [-0.5120602, -0.2497257, -0.183213, -0.47876, -0.197773, -0.2023901, -0.4664525,
                              -0.3065583, -0.1339413],
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("host", sorted(REFERENCE))
def test_dept_equals_the_reference_code(host, reference_vit_b16):
    expected = REFERENCE[host]
    learner = vlprompt.build_learner(host, clip=reference_vit_b16, classnames=CLASSNAMES, plugins=[{"name": "dept"}],
                                     lr=0.0035, **HOSTS[host])
    fill_learned(learner, ones=("scale",))
    assert learner.num_trainable_parameters() == expected["parameters"]
    images = reference_images()
    labels = torch.tensor([0, 1, 2])
    learner.eval()
    with torch.no_grad():
        assert (learner(images).flatten() - torch.tensor(expected["logits"])).abs().max() <= 1e-5
    learner.train()
    loss = learner.training_loss(images, labels)
    assert abs(loss.terms["ce"].item() - 0.3 * expected["ce"]) <= 1e-5
    assert abs(loss.terms["dept_head"].item() - 0.7 * expected["head_ce"]) <= 1e-5
    assert abs(loss.total.item() - expected["loss"]) <= 1e-5
    loss.total.backward()
    named = dict(learner.named_parameters())
    norms = torch.tensor([named[name].grad.norm().item() for name in (
        "prompts.ctx", "plugins.0.film_text.scale", "plugins.0.film_image.bias", "plugins.0.head.weight")])
    assert (norms - torch.tensor(expected["gradient_norms"])).abs().max() <= 1e-5
    groups = learner.optimizer_groups()
    assert [group.get("lr") for group in groups] == [None, pytest.approx(0.0035 * 6.5)]
    torch.optim.SGD(groups, lr=0.0035, momentum=0.9, weight_decay=5e-4).step()
    learner.eval()
    with torch.no_grad():
        assert (learner(images).flatten() - torch.tensor(expected["logits_after_step"])).abs().max() <= 1e-5


def build(tiny_clip, name="coop", classnames=CLASSNAMES, **dept):
    torch.manual_seed(0)
    return vlprompt.build_learner(name, clip=tiny_clip, classnames=classnames, plugins=[{"name": "dept", **dept}])


def randomise_head(learner):
    with torch.no_grad():
        for name, parameter in learner.plugins[0].named_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)


def plain_logits(learner, images):
    """The similarity logits, as the learner without its plug-in computes them."""
    return learner.logits(learner.image_features(images), learner.text_features())


def test_the_loss_scales_ce_and_adds_the_head_over_text_and_image_rows(tiny_clip, image_batch):
    images, labels = image_batch
    labels = labels % 3
    learner = build(tiny_clip)
    randomise_head(learner)
    loss = learner.training_loss(images, labels)
    raw_text = learner.prompts.encode(tiny_clip)
    raw_image = tiny_clip.encode_image(images)
    text, image = F.normalize(raw_text, dim=-1), F.normalize(raw_image, dim=-1)
    dept = learner.plugins[0]
    rows = torch.cat([dept.film_text.scale * raw_text[labels] + dept.film_text.bias,
                      dept.film_image.scale * raw_image + dept.film_image.bias])
    head = rows @ dept.head.weight.t() + dept.head.bias
    assert torch.allclose(loss.terms["ce"], 0.3 * F.cross_entropy(tiny_clip.logit_scale * image @ text.t(), labels),
                          atol=1e-6)
    assert torch.allclose(loss.terms["dept_head"], 0.7 * F.cross_entropy(head, torch.cat([labels, labels])), atol=1e-6)
    assert learner.take_raw_features() == {}  # handed over once: nothing stays attached to the learner


def test_a_per_image_context_gives_each_image_its_own_labelled_feature(tiny_clip, image_batch):
    images, labels = image_batch
    labels = labels % 3
    learner = build(tiny_clip, "cocoop")
    randomise_head(learner)
    loss = learner.training_loss(images, labels)
    learner.text_features(learner.image_features(images))
    raw = learner.take_raw_features()
    assert raw["text"].shape == (images.shape[0], 3, tiny_clip.embed_dim)
    dept = learner.plugins[0]
    own = raw["text"][torch.arange(images.shape[0]), labels]
    rows = torch.cat([dept.film_text(own), dept.film_image(raw["image"])])
    expected = 0.7 * F.cross_entropy(dept.head(rows), torch.cat([labels, labels]))
    assert torch.allclose(loss.terms["dept_head"], expected, atol=1e-6)


def test_evaluation_fuses_the_head_on_its_classes_only(tiny_clip, image_batch):
    images, _ = image_batch
    learner = build(tiny_clip).eval()
    randomise_head(learner)
    dept = learner.plugins[0]
    with torch.no_grad():
        similarity = plain_logits(learner, images)
        head = dept.head(dept.film_image(tiny_clip.encode_image(images)))
        assert torch.allclose(learner(images), 0.3 * similarity + 0.7 * head, atol=1e-5)
        learner.set_classnames(["sea turtle", "dog"])  # a subset (ImageNet-A of ImageNet): the head's rows for them
        assert torch.allclose(learner(images), 0.3 * plain_logits(learner, images) + 0.7 * head[:, [2, 0]], atol=1e-5)
        learner.set_classnames(["horse", "dog"])  # novel classes: the similarity alone
        assert torch.allclose(learner(images), plain_logits(learner, images), atol=1e-6)
    head_only = build(tiny_clip, test_time_fusion=False).eval()
    randomise_head(head_only)
    with torch.no_grad():
        assert torch.allclose(head_only(images), head, atol=1e-5)


def test_the_head_and_film_train_at_their_own_rate_and_warm_up_as_dassl(tiny_clip):
    learner = build(tiny_clip, lr_scale=4.0)
    groups = learner.optimizer_groups()
    head = {id(p) for p in learner.plugins[0].parameters()}
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in learner.plugins[0].parameters()]
    assert groups[1]["lr"] == pytest.approx(learner.hparams.lr * 4.0)
    assert not head & {id(p) for p in groups[0]["params"]}
    from vlprompt.learners.base import build_optimizer, dassl_schedule

    optimizer = build_optimizer(groups, learner.hparams)
    schedule = dassl_schedule(optimizer, 1, 1e-5, 10)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-5, 1e-5])  # one warm-up rate
    optimizer.step()  # no gradients: nothing moves; the schedule then steps as in a fit
    schedule.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.002, 0.008])


def test_the_feature_cache_is_refused(tiny_clip):
    learner = build(tiny_clip)
    assert not learner.image_features_are_frozen
    with pytest.raises(ConfigError, match="read unnormalised image features"):
        learner.image_features(torch.randn(2, tiny_clip.embed_dim))


def test_a_checkpoint_keeps_the_head_and_its_classes(tiny_clip, image_batch, tmp_path):
    images, _ = image_batch
    learner = build(tiny_clip).eval()
    randomise_head(learner)
    path = save_fitted(learner, tmp_path / "dept.ckpt")
    loaded = vlprompt.load_learner(path, clip=tiny_clip).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), learner(images), atol=1e-6)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["vlprompt"]["plugins"]["dept"]["classes"] == CLASSNAMES
    # A test on the novel classes builds the learner for them (as `vlprompt test --data.subsample novel` does): the
    # checkpoint's head replaces the one built, and the novel classes take the similarity logits alone.
    novel = build(tiny_clip, classnames=["horse", "cow"])
    novel.on_load_checkpoint(checkpoint)
    novel.load_state_dict(checkpoint["state_dict"])
    assert novel.plugins[0].classes == CLASSNAMES and novel.plugins[0].head.out_features == 3
    novel.eval()
    with torch.no_grad():
        assert torch.allclose(novel(images), plain_logits(novel, images), atol=1e-6)
        novel.set_classnames(["cat", "dog"])  # base classes again: fused with the checkpoint's head, as the original
        learner.set_classnames(["cat", "dog"])
        assert torch.allclose(novel(images), learner(images), atol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("promptkd", "needs class text features from one learned context"),
    ("zeroshot", "needs class text features from one learned context"),
    ("kapt", "needs class text features from one learned context"),
])
def test_learners_without_what_it_needs_are_refused_in_one_line(tiny_clip, name, message):
    from conftest import learner_arguments

    with pytest.raises(ConfigError, match=message):
        vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=[{"name": "dept"}],
                               **learner_arguments(name, tiny_clip, CLASSNAMES))


@pytest.mark.parametrize("options, message", [({"weight": 1.5}, "weight must be in"), ({"lr_scale": 0}, "lr_scale"),
                                              ({"weight": "high"}, "weight must be a number")])
def test_bad_options_are_one_line_errors(tiny_clip, options, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_clip, **options)


def test_training_on_other_classes_than_the_heads_is_refused(tiny_clip, image_batch):
    images, labels = image_batch
    learner = build(tiny_clip)
    learner.set_classnames(["horse", "dog", "cat"])
    with pytest.raises(ConfigError, match="dept head was built for 3 classes"):
        learner.training_loss(images, labels % 3)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_the_recipes_name_their_suite_runs_after_the_host_and_the_plugin(tmp_path, capsys, host):
    from conftest import REPO
    from vlprompt.commands import main

    CONFIGS = REPO / "configs"
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / f"{host}.yaml"),
          str(CONFIGS / "recipes" / "dept" / f"{host}.yaml"), "--data", str(CONFIGS / "data" / "DTD.yaml"), "--seeds",
          "1", "--runs", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert f"base2novel {host}+dept DTD shots=16 seed=1" in out
    assert f"recipes/dept/{host}.yaml" in out  # the fit reads the recipe


@pytest.mark.parametrize("name", vlprompt.list_learners())
def test_every_learner_with_the_capability_trains_and_evaluates_with_the_head_and_the_others_refuse_it(
        name, tiny_clip, image_batch):
    """The capability is derived from what a learner is built of; each learner that has it must hand the head its
    unnormalised features in training and evaluation."""
    from conftest import learner_arguments

    images, labels = image_batch
    arguments = learner_arguments(name, tiny_clip, CLASSNAMES)
    plain = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, **arguments)
    if "unnormalised_features" not in plain.capabilities or not plain.uses_labels:
        with pytest.raises(ConfigError, match="plug-in 'dept' needs|trains a head on labels"):
            vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=[{"name": "dept"}], **arguments)
        return
    torch.manual_seed(0)
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=[{"name": "dept"}],
                                     **arguments)
    loss = learner.training_loss(images, labels % 3)
    assert {"ce", "dept_head"} <= set(loss.terms) and torch.isfinite(loss.total)
    loss.total.backward()
    assert learner.plugins[0].head.weight.grad is not None
    learner.eval()
    with torch.no_grad():
        assert learner(images).shape == (images.shape[0], 3)
    assert learner.take_raw_features() == {}  # the evaluation hook took what the forward kept
