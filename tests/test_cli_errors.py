"""Each jsonargparse message form that vlprompt.cli_errors maps to one line (issue 27: one small module, a test per
message), as jsonargparse words it; and the whole path from a command line."""

from __future__ import annotations

import pytest

from vlprompt.cli_errors import configured_learner_names, one_line_error, owners_of_keys

from conftest import REPO

CANDIDATES = ["model.init_args.n_ctx", "model.init_args.lr", "trainer.max_epochs", "data.shots"]


@pytest.mark.parametrize("message, line", [
    ('Parser key "model":\n  Problem with given class_path \'vlprompt.learners.coop.CoOp\':\n'
     "    Option 'n_ctxx' is not accepted\n",
     "unknown key 'model.init_args.n_ctxx'; closest valid: model.init_args.n_ctx, model.init_args.lr"),
    ('Key "trainer.max_epoch" is not expected', "unknown key 'trainer.max_epoch'; closest valid: trainer.max_epochs"),
    ("unrecognized arguments: --data.shot 4", "unknown key 'data.shot'; closest valid: data.shots"),
    ('No action for key "data.shotz"', "unknown key 'data.shotz'; closest valid: data.shots"),
    ("__init__() got an unexpected keyword argument 'n_ctxx'",
     "unknown key 'n_ctxx'; closest valid: model.init_args.n_ctx"),
    ('Parser key "zzz_unrelated": nothing', "bad value for 'zzz_unrelated': nothing"),
], ids=["option-not-accepted", "key-not-expected", "unrecognized", "no-action", "unexpected-keyword", "same-line"])
def test_unknown_keys_name_the_closest_valid_ones(message, line):
    assert one_line_error(message, CANDIDATES) == line


def test_bad_values_name_the_expected_type_and_the_given_value():
    message = ('Parser key "model":\n  Problem with given class_path \'vlprompt.learners.coop.CoOp\':\n'
               '    Parser key "n_ctx":\n      Expected a <class \'int\'>. Got value: abc\n')
    assert one_line_error(message, CANDIDATES) == "bad value for 'model.init_args.n_ctx': expected int, got 'abc'"


def test_a_class_path_that_cannot_be_imported_names_the_learners():
    message = ('Parser key "model":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
               "    - Problem with given class_path 'vlprompt.learners.coop.CoOpp':\n"
               "        module 'vlprompt.learners.coop' has no attribute 'CoOpp'\n"
               "  Given value: NestedArg(key='class_path', val='vlprompt.learners.coop.CoOpp')")
    line = one_line_error(message, CANDIDATES)
    assert line.startswith("bad value for 'model': cannot use class_path 'vlprompt.learners.coop.CoOpp' (module")
    assert "closest learners: vlprompt.learners.coop.CoOp" in line and "--model NAME" in line


def test_a_key_of_another_learner_is_named_as_such():
    message = "Option 'tau' is not accepted"
    line = one_line_error(message, CANDIDATES, owners_of_keys(["coop"]), ["coop"])
    assert line.startswith("unknown key 'tau'") and "biomedcoop" not in line  # not under model.: no owner lookup
    message = 'Parser key "model":\n  Problem with given class_path \'x\':\n    Option \'tau\' is not accepted'
    line = one_line_error(message, CANDIDATES, owners_of_keys(["coop"]), ["coop"])
    assert line == ("unknown key 'model.init_args.tau': tau is an option of biomedcoop, not of coop; run with --help "
                    "for coop's options")


def test_anything_else_keeps_its_first_words_on_one_line():
    assert one_line_error("something\nunexpected   happened", CANDIDATES) == "something unexpected happened"


def test_the_configured_learner_comes_from_config_files_and_class_paths():
    coop = str(REPO / "configs" / "learners" / "coop.yaml")
    assert configured_learner_names(["fit", "--config", coop]) == ["coop"]
    assert configured_learner_names(["fit", "--model.class_path", "vlprompt.learners.kgcoop.KgCoOp"]) == ["kgcoop"]
    assert configured_learner_names(["fit", "--config", coop, "--model.class_path=vlprompt.learners.maple.MaPLe"]) == \
        ["maple"]
    assert configured_learner_names(["fit", "--trainer.max_epochs", "1"]) == []
