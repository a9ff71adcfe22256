"""The plug-in interface, with a made-up plug-in: specs, capability checks, named loss terms, checkpoints."""

from __future__ import annotations

import pytest
import torch

import vlprompt
from vlprompt.errors import ConfigError
from vlprompt.learners import registry
from vlprompt.learners.losses import LossTerm
from vlprompt.learners.plugins import Plugin

from conftest import CLASSNAMES


class ContextNorm(Plugin):
    """A made-up plug-in: a loss term on the norm of the learner's text context."""

    name = "context_norm"
    needs = ("text_context",)

    def __init__(self, weight: float = 0.5):
        super().__init__(weight=weight)
        self.weight = weight

    def loss_terms(self, learner) -> list[LossTerm]:
        return [LossTerm("context_norm", self.weight, lambda out: learner.text_context.ctx.pow(2).mean())]


@pytest.fixture
def context_norm(monkeypatch):
    """The made-up plug-in, registered for one test only (the registry is the package's)."""
    registry.list_plugins()  # the package's own plug-ins first
    monkeypatch.setitem(registry._PLUGINS, ContextNorm.name, ContextNorm)
    return ContextNorm


def test_a_plugins_loss_term_is_named_weighted_and_in_the_total(context_norm, tiny_clip, image_batch):
    images, labels = image_batch
    torch.manual_seed(0)
    plain = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES)
    torch.manual_seed(0)
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES,
                                     plugins=[{"name": "context_norm", "weight": 0.5}])
    loss, base = learner.training_loss(images, labels), plain.training_loss(images, labels)
    expected = learner.text_context.ctx.pow(2).mean()
    assert set(loss.terms) == {"ce", "context_norm"}
    torch.testing.assert_close(loss.terms["context_norm"], 0.5 * expected)  # terms are logged weighted
    torch.testing.assert_close(loss.total, base.total + 0.5 * expected)
    assert learner.hparams.plugins == [{"name": "context_norm", "weight": 0.5}]


def test_a_plugin_is_refused_by_what_the_learner_lacks(context_norm, tiny_clip):
    with pytest.raises(ConfigError, match="^plug-in 'context_norm' needs one learned text context .*, and zeroshot "
                                          "has not; drop the plug-in or use a learner that has it$"):
        vlprompt.build_learner("zeroshot", clip=tiny_clip, classnames=CLASSNAMES, plugins=[{"name": "context_norm"}])


@pytest.mark.parametrize("plugins, message", [
    ([{"name": "context_norm", "wieght": 1.0}], "has no option 'wieght'; did you mean 'weight'"),
    ([{"name": "context_norm"}, {"name": "context_norm"}], "is given twice"),
    (["context_norm"], "a plug-in is given as {name: <plug-in>, <option>: <value>}"),
    ([{"name": "nope"}], "unknown plug-in 'nope'"),
])
def test_bad_plugin_specs_are_one_line_errors(context_norm, tiny_clip, plugins, message):
    with pytest.raises(ConfigError, match=message):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=plugins)


def test_capabilities_are_derived_from_the_learners_components(tiny_clip):
    def capabilities(name, **hparams):
        return vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, **hparams).capabilities

    assert capabilities("coop") == {"text_context", "shared_image_path", "unnormalised_features"}
    assert capabilities("coop", class_token_position="front") == {"shared_image_path"}
    assert capabilities("zeroshot") == {"shared_image_path"}
    maple = vlprompt.build_learner("maple", clip=tiny_clip, classnames=CLASSNAMES)
    assert maple.capabilities == {"text_context", "shared_image_path", "unnormalised_features"}
    assert not maple.image_features_are_frozen
    ivlp = vlprompt.build_learner("ivlp", clip=tiny_clip, classnames=CLASSNAMES, vision_depth=0)
    assert ivlp.image_features_are_frozen  # no vision tokens: the frozen tower's features


@pytest.mark.parametrize("name", vlprompt.list_learners())
def test_a_learner_class_shows_its_init_arguments_despite_attaching_plugins_after_it(name):
    """Plug-ins attach when the class is called (after __init__); what the class takes stays its __init__'s."""
    import inspect

    cls = registry.get_learner_class(name)
    assert list(inspect.signature(cls).parameters) == list(inspect.signature(cls.__init__).parameters)[1:]


def test_the_shipped_plugin_configs_give_their_plugin_after_a_learners_yaml(capsys):
    import yaml

    from conftest import REPO
    from vlprompt.commands import main

    for path in sorted((REPO / "configs" / "plugins").glob("*.yaml")):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(REPO / "configs" / "learners" / "coop.yaml"), "--config", str(path),
                  "--print_config"])
        plugins = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["plugins"]
        assert [plugin["name"] for plugin in plugins] == [path.stem]
        assert set(plugins[0]) - {"name"} <= set(registry.get_plugin_class(path.stem).__init__.__code__.co_varnames)
