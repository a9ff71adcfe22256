"""GRAM (our reading): the first-order meta-step, the regulator on exactly the context's gradient, init_from
bitwise, the task construction, the image-caption readers and `vlprompt meta-init` end to end."""

from __future__ import annotations

import random

import pytest
import torch

import vlprompt
from vlprompt.data.captions import read_caption_pairs
from vlprompt.errors import ConfigError
from vlprompt.learners.gram.meta import (GradientRegulator, cluster_members, cluster_pairs, meta_step, read_gram,
                                         sample_task, save_gram)
from vlprompt.meta_config import MetaConfig
from vlprompt.toy.world import write_caption_corpus

from conftest import REPO, model_weights

CLASSNAMES = ["red circle", "blue square", "green star"]


def test_meta_step_equals_the_hand_computed_first_order_update():
    torch.manual_seed(0)
    theta = torch.randn(2, 3, requires_grad=True)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    regulator = GradientRegulator((2, 3))
    regulator.logits.data = torch.randn(2, 3)
    alpha = 0.1
    loss = meta_step(theta, regulator, lambda x: 0.5 * ((x - a) ** 2).sum(), lambda x: 0.5 * ((x - b) ** 2).sum(),
                     inner_steps=2, inner_lr=alpha)
    loss.backward()
    with torch.no_grad():
        sig = torch.sigmoid(regulator.logits)
        gate = 2 * sig
        g0 = theta - a
        theta1 = theta - alpha * gate * g0
        g1 = theta1 - a
        theta2 = theta - alpha * gate * (g0 + g1)
        assert torch.allclose(loss, 0.5 * ((theta2 - b) ** 2).sum())
        # First order: the support gradients are constants, so d theta2 / d theta is the identity ...
        assert torch.allclose(theta.grad, theta2 - b)
        # ... and the regulator is reached through alpha * gate(m) * (g0 + g1).
        expected = (theta2 - b) * (-alpha) * (g0 + g1) * 2 * sig * (1 - sig)
        assert torch.allclose(regulator.logits.grad, expected, atol=1e-6)


def test_regulator_starts_as_the_identity_and_the_token_form_gates_whole_tokens():
    gradient = torch.randn(4, 8)
    assert torch.equal(GradientRegulator((4, 8))(gradient), gradient)
    token = GradientRegulator((4, 8), form="token")
    token.logits.data = torch.tensor([[0.0], [2.0], [-2.0], [0.0]])
    gated = token(gradient)
    assert torch.allclose(gated[1], 2 * torch.sigmoid(torch.tensor(2.0)) * gradient[1])
    with pytest.raises(ConfigError, match=r"shape \[4, 8\].*\[2, 8\]"):
        token(torch.randn(2, 8))
    with pytest.raises(ConfigError, match="not one of elementwise, token"):
        GradientRegulator((4, 8), form="mlp")


def gram_file(path, ctx: torch.Tensor, gate_logits: torch.Tensor):
    return save_gram({"ctx": ctx, "regulator": {"form": "elementwise", "shape": list(ctx.shape), "logits": gate_logits},
                      "n_ctx": ctx.shape[0], "ctx_init": None, "clusters": 3, "pairs": 9, "query_loss": [1.0]}, path)


def gram(init_from=None, gradient_regulator=None) -> list[dict]:
    """The learner's plug-ins: GRAM with these files."""
    return [{"name": "gram", "init_from": init_from and str(init_from),
             "gradient_regulator": gradient_regulator and str(gradient_regulator)}]


def test_init_from_loads_the_context_bitwise_and_the_regulator_gates_only_it(tiny_clip, image_batch, tmp_path):
    images, labels = image_batch
    plain = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, ctx_init=None)
    shape = tuple(plain.prompts.ctx.shape)
    ctx, gate_logits = torch.randn(shape), torch.randn(shape)
    path = gram_file(tmp_path / "gram.ckpt", ctx, gate_logits)
    weights = model_weights(tiny_clip)

    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, ctx_init=None,
                                     plugins=gram(path, path))
    learner.setup("fit")
    assert torch.equal(learner.prompts.ctx.detach(), ctx)
    plain.prompts.ctx.data.copy_(ctx)
    for model in (plain, learner):
        model.training_loss(images, labels[: len(images)] % 3).total.backward()
    assert torch.allclose(learner.prompts.ctx.grad, 2 * torch.sigmoid(gate_logits) * plain.prompts.ctx.grad)
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in tiny_clip.model.state_dict().items())
    learner.setup("fit")  # a second set-up neither re-initialises nor hooks twice
    learner.prompts.ctx.grad = None
    learner.training_loss(images, labels[: len(images)] % 3).total.backward()
    assert torch.allclose(learner.prompts.ctx.grad, 2 * torch.sigmoid(gate_logits) * plain.prompts.ctx.grad)


def test_mismatched_shapes_and_wrong_files_are_one_line_errors(tiny_clip, tmp_path):
    path = gram_file(tmp_path / "gram.ckpt", torch.zeros(7, 5), torch.zeros(7, 5))
    with pytest.raises(ConfigError, match=r"GRAM context has shape \[7, 5\] and coop's has \[4, \d+\]"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=gram(path))
    with pytest.raises(ConfigError, match="does not exist"):
        read_gram(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="not a GRAM checkpoint"):
        read_gram(tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        read_gram(tmp_path / "text.ckpt")
    with pytest.raises(ConfigError, match="plug-in 'gram' needs one learned text context"):
        vlprompt.build_learner("zeroshot", clip=tiny_clip, classnames=CLASSNAMES, plugins=gram(path))
    with pytest.raises(ConfigError, match="the gram plug-in needs init_from, gradient_regulator or both"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=gram())


def test_tasks_draw_distinct_clusters_with_their_own_pairs():
    torch.manual_seed(0)
    centres = torch.randn(6, 8) * 5
    image = torch.cat([c + torch.randn(10, 8) * 0.1 for c in centres])
    text = torch.cat([c.flip(0) + torch.randn(10, 8) * 0.1 for c in centres])
    labels = cluster_pairs(image, text, 6)
    truth = torch.arange(6).repeat_interleave(10)
    assert all(len(set(labels[truth == k].tolist())) == 1 for k in range(6))  # the planted clusters are found
    config = MetaConfig(ways=3, shots=2, queries=3)
    clusters, support, support_labels, query, query_labels = sample_task(cluster_members(labels), config, random.Random(0))
    assert len(set(clusters)) == 3 and len(support) == 6 and len(query) == 9
    assert not set(support.tolist()) & set(query.tolist())
    for way, cluster in enumerate(clusters):
        assert (labels[support[support_labels == way]] == cluster).all()
        assert (labels[query[query_labels == way]] == cluster).all()
    assert sample_task(cluster_members(labels), MetaConfig(ways=7), random.Random(0)) is None


def test_caption_pairs_from_a_folder_and_from_csv_files(tmp_path):
    corpus = write_caption_corpus(tmp_path / "corpus", size=4)
    pairs = read_caption_pairs(corpus)
    assert len(pairs) == 4 and all(p.caption.endswith(".") and p.image.suffix == ".png" for p in pairs)
    for separator in ("\t", ","):
        csv = tmp_path / f"pairs{len(separator)}.csv"
        csv.write_text(f"filepath{separator}caption\n" + "".join(
            f"corpus/{p.image.name}{separator}{p.caption}\n" for p in pairs))
        assert read_caption_pairs(csv) == pairs
    (tmp_path / "bad.csv").write_text("path,text\nx.png,hello\n")
    with pytest.raises(ConfigError, match="needs the columns filepath and caption"):
        read_caption_pairs(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image with a same-name .txt caption"):
        read_caption_pairs(tmp_path / "empty")


@pytest.mark.slow
def test_meta_init_then_fit_with_init_and_regulator(shapes, tmp_path, capsys):
    from vlprompt.commands import main

    configs = REPO / "configs"
    corpus = write_caption_corpus(tmp_path / "ToyCaptions", size=150)
    out = tmp_path / "gram.ckpt"
    meta = ["meta-init", "--pairs", str(corpus), "--learner", str(configs / "learners" / "coop.yaml"), "--clip",
            str(configs / "clip" / "toy.yaml"), "--out", str(out), "--steps", "3", "--clusters", "12", "--ways", "3",
            "--shots", "2", "--queries", "2", "--tasks-per-step", "2"]
    main(meta)
    assert "wrote" in capsys.readouterr().out
    content = read_gram(out)
    assert content["learner"] == "coop" and tuple(content["ctx"].shape) == (4, 48) and len(content["query_loss"]) == 3
    with pytest.raises(SystemExit) as exit_info:  # an existing file is never replaced without --force
        main(meta)
    assert exit_info.value.code == 2 and "exists; pass --force" in capsys.readouterr().err
    main(["fit", "--config", str(configs / "learners" / "coop.yaml"), "--config", str(configs / "clip" / "toy.yaml"),
          "--config", str(configs / "data" / "toy" / "ToyShapes.yaml"), "--data.root", str(shapes),
          "--data.shots", "2", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "fit"),
          f"--model.init_args.plugins+={{name: gram, init_from: {out}, gradient_regulator: {out}}}"])
    assert "vlprompt: checkpoint" in capsys.readouterr().out


def test_every_learner_with_a_text_context_takes_a_gram_initialisation_bitwise(tiny_clip, tmp_path):
    """Every registered learner: those with a learned text context take GRAM's context bitwise, the others are
    refused in one line (the paper's and the abstract's context learners among the takers)."""
    from conftest import learner_arguments
    from vlprompt.learners import list_learners

    taking = []
    for name in list_learners():
        arguments = learner_arguments(name, tiny_clip, CLASSNAMES)
        plain = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, **arguments)
        if plain.text_context is None:
            path = gram_file(tmp_path / f"{name}.ckpt", torch.zeros(4, 8), torch.zeros(4, 8))
            with pytest.raises(ConfigError, match="plug-in 'gram' needs one learned text context"):
                vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=gram(path), **arguments)
            continue
        ctx = torch.randn(plain.text_context.ctx.shape)
        path = gram_file(tmp_path / f"{name}.ckpt", ctx, torch.zeros(ctx.shape))
        learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=gram(path), **arguments)
        learner.setup("fit")
        assert torch.equal(learner.text_context.ctx.detach(), ctx), name
        taking.append(name)
    assert {"coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc", "biomedcoop", "vmfcoop"} <= set(taking)
