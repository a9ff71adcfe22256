"""The ``vlprompt`` program: the LightningCLI subcommands (``fit``, ``validate``, ``test``, ``predict``;
:mod:`vlprompt.cli`) and the protocols above them (``suite``, ``report``; :mod:`vlprompt.eval`).

    vlprompt fit --config configs/learners/coop.yaml --config configs/data/toy/ToyShapes.yaml
    vlprompt suite base2novel --learner configs/learners/coop.yaml --data ...
    vlprompt report runs/suite

Nothing heavy is imported before the subcommand is known: ``vlprompt --help``, ``suite --help`` and
``report --help`` answer without loading torch or Lightning, and ``fit --help`` (and the other Lightning
subcommands' plain ``--help``) is built once and then read from disk (:mod:`vlprompt.help_cache`).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

PROTOCOL_COMMANDS = ("suite", "report", "meta-init")
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: vlprompt {fit,validate,test,predict,suite,report,meta-init} ...

Prompt learning for a frozen CLIP.

commands:
  fit        train a learner (LightningCLI: --config FILE ..., --model.init_args.X, --trainer.X, --data.X)
  validate   accuracy on the validation split
  test       accuracy on the test split (--ckpt_path RUN/checkpoints/last.ckpt for trained prompts)
  predict    class scores for the test split
  suite      run an evaluation protocol over data sets and seeds: base2novel, few-shot, cross-dataset,
             domain-generalization (resumable)
  report     mean ± std over seeds of a suite's results: Markdown, CSV and LaTeX tables, plots
  meta-init  GRAM: meta-learn a prompt initialisation and gradient regulator on image-caption pairs

`vlprompt COMMAND --help` lists a command's options.
"""


def main(args: Optional[Sequence[str]] = None) -> None:
    from vlprompt.interrupts import stop_cleanly

    with stop_cleanly():  # from the first line: SIGTERM while Lightning is still importing ends with status 143 too
        _dispatch(args)


def _dispatch(args: Optional[Sequence[str]]) -> None:
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] in PROTOCOL_COMMANDS:
        from vlprompt.errors import report_user_errors

        with report_user_errors():
            if argv[0] == "suite":
                from vlprompt.eval import suite as command
            elif argv[0] == "report":
                from vlprompt.eval import report as command
            else:
                from vlprompt import meta_init as command
            command.main(argv[1:])
        return
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        choices = ", ".join(LIGHTNING_COMMANDS + PROTOCOL_COMMANDS)
        sys.stderr.write(f"vlprompt: error: unknown command {argv[0]!r}; choose from {choices} (vlprompt --help)\n")
        sys.exit(2)
    from vlprompt import help_cache

    if help_cache.is_plain_help(argv):
        text = help_cache.cached_help(argv[0])
        if text is not None:
            sys.stdout.write(text)
            sys.exit(0)
        help_cache.build_and_keep_help(argv[0], lambda: _lightning_main(args))
        return
    _lightning_main(args)


def _lightning_main(args: Optional[Sequence[str]]) -> None:
    from vlprompt.cli import main as lightning_main

    lightning_main(args)


if __name__ == "__main__":
    main()
