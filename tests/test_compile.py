"""No host-device synchronisation in any learner's text-feature path: torch.compile traces it as one graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.learners import get_learner_class

from conftest import CLASSNAMES, learner_arguments

#: Learners whose class text features are learned (zero-shot's are frozen hand-template features).
LEARNED_TEXT = [name for name in vlprompt.list_learners() if hasattr(get_learner_class(name), "text_features")]


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED_TEXT)
def test_text_feature_path_compiles_as_one_graph(name, tiny_clip):
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES,
                                     **learner_arguments(name, tiny_clip, CLASSNAMES))
    # Per-image prompts (CoCoOp) take the images' features.
    args = [] if get_learner_class(name).image_independent_text else [F.normalize(torch.randn(2, tiny_clip.embed_dim),
                                                                                   dim=-1)]
    torch._dynamo.reset()
    compiled = torch.compile(learner.text_features, fullgraph=True, backend="eager")  # a graph break raises here
    torch.testing.assert_close(compiled(*args), learner.text_features(*args))
