"""The ``vlprompt`` command: LightningCLI with learner/data YAML composition and one-line errors.

    vlprompt fit --config configs/learners/coop.yaml --config configs/data/shapes.yaml \\
        --model.init_args.n_ctx 8 --trainer.max_epochs 5
    vlprompt test --config ... --ckpt_path runs/coop/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from typing import Optional, Sequence

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from vlprompt.data import ImageSplitDataModule
from vlprompt.errors import VlpromptError
from vlprompt.learners import PromptLearner, get_learner_class, list_learners
from vlprompt.learners.registry import hyperparameter_names

TRAINER_DEFAULTS = {
    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
}

_UNKNOWN_PATTERNS = (
    re.compile(r"Option '([\w.]+)' is not accepted"),
    re.compile(r'Key "([\w.]+)" is not expected'),
    re.compile(r"Unrecognized arguments:\s*--?([\w.]+)"),
    re.compile(r'No action for key "([\w.]+)"'),
    re.compile(r"[Uu]nexpected keyword argument '?(\w+)'?"),
)
_VALUE_PATTERN = re.compile(r'Parser key "([\w.]+)":\s*(.+?)(?:\s+-\s+Expected a <class .NoneType.>|$)', re.S)


def _candidate_keys(parser: LightningArgumentParser) -> list[str]:
    """Every dotted option a user may set: the parser's own plus every learner's and the data module's."""
    keys = {action.dest for action in parser._actions if action.dest and action.dest != "help"}
    for name in list_learners():
        keys.update(f"model.init_args.{p}" for p in hyperparameter_names(get_learner_class(name)))
    keys.update(f"data.{p}" for p in inspect.signature(ImageSplitDataModule.__init__).parameters if p != "self")
    return sorted(keys)


def one_line_error(message: str, candidates: Sequence[str]) -> str:
    """Condense a jsonargparse message to one line that names the key and the closest valid ones."""
    for pattern in _UNKNOWN_PATTERNS:
        match = pattern.search(message)
        if match:
            key = match.group(1)
            close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
            if not close:  # compare the last component too, e.g. 'n_ctxx' against '...init_args.n_ctx'
                tails = {c.rsplit(".", 1)[-1]: c for c in candidates}
                close = [tails[t] for t in difflib.get_close_matches(key.rsplit(".", 1)[-1], tails, n=3, cutoff=0.6)]
            hint = f"; closest valid: {', '.join(close)}" if close else "; run with --help for the valid keys"
            return f"unknown key {key!r}{hint}"
    match = _VALUE_PATTERN.search(message)
    if match:
        detail = " ".join(match.group(2).split())[:300]
        return f"bad value for {match.group(1)!r}: {detail}"
    return " ".join(message.split())[:400]


class VlpromptArgumentParser(LightningArgumentParser):
    """Prints parse errors as a single ``vlprompt: error: ...`` line and exits with status 2."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error:  # a sub-parser: the main parser reports
            return super().error(message, ex)
        sys.stderr.write(f"vlprompt: error: {one_line_error(message, _candidate_keys(self))}\n")
        sys.exit(2)


class VlpromptCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The learned prompts of the last epoch are what papers evaluate, so keep `last.ckpt`.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        # Class names and hand templates belong to the dataset; the learner receives them.
        parser.link_arguments("data.classnames", "model.init_args.classnames", apply_on="instantiate")
        parser.link_arguments("data.templates", "model.init_args.templates", apply_on="instantiate")


def main(args: Optional[Sequence[str]] = None) -> None:
    try:
        VlpromptCLI(
            PromptLearner,
            ImageSplitDataModule,
            subclass_mode_model=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
            parser_class=VlpromptArgumentParser,
        )
    except VlpromptError as err:
        sys.stderr.write(f"vlprompt: error: {err}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
