"""The ``vlprompt`` program: the LightningCLI subcommands (``fit``, ``validate``, ``test``; :mod:`vlprompt.cli`), the
protocols above them (``suite``, ``report``; :mod:`vlprompt.eval`), using what was learned (``predict``, ``export``;
:mod:`vlprompt.inference`) and checking data sets (``data check``; :mod:`vlprompt.data.check`).

    vlprompt fit --config configs/learners/coop.yaml --config configs/data/toy/ToyShapes.yaml
    vlprompt suite base2novel --learner configs/learners/coop.yaml --data ...
    vlprompt report runs/suite

Nothing heavy is imported before the subcommand is known: ``vlprompt --help``, ``suite --help`` and
``report --help`` answer without loading torch or Lightning, and ``fit --help`` (and the other Lightning
subcommands' plain ``--help``) is built once and then read from disk (:mod:`vlprompt.help_cache`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

PROTOCOL_COMMANDS = ("suite", "report", "meta-init", "data", "predict", "export")
LIGHTNING_COMMANDS = ("fit", "validate", "test")
#: Every command, in the order the usage lists them.
COMMANDS = ("fit", "validate", "test", "predict", "export", "suite", "report", "meta-init", "data")

USAGE = """usage: vlprompt {fit,validate,test,predict,export,suite,report,meta-init,data} ...

Prompt learning for a frozen CLIP.

commands:
  fit        train a learner (LightningCLI: --config FILE ..., --model.init_args.X, --trainer.X, --data.X)
  validate   accuracy on the validation split
  test       accuracy on the test split (--ckpt_path RUN/checkpoints/last.ckpt for trained prompts)
  predict    classify images with learned prompts (--ckpt_path, --images DIR_OR_CSV, --classes): a CSV of top-k
             classes and probabilities
  export     the learned classifier as one safetensors file that plain open_clip can use
  suite      run an evaluation protocol over data sets and seeds: base2novel, few-shot, cross-dataset,
             domain-generalization (resumable)
  report     mean ± std over seeds of a suite's results: Markdown, CSV and LaTeX tables, plots
  meta-init  GRAM: meta-learn a prompt initialisation and gradient regulator on image-caption pairs
  data       data check: a data set's folder, split file and every image checked before training
             (--build-split builds a missing split from class folders)

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
            elif argv[0] == "data":
                from vlprompt.data import check as command
            elif argv[0] in ("predict", "export"):
                from vlprompt import inference

                getattr(inference, f"{argv[0]}_main")(argv[1:])
                return
            else:
                from vlprompt import meta_init as command
            command.main(argv[1:])
        return
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        choices = ", ".join(COMMANDS)
        sys.stderr.write(f"vlprompt: error: unknown command {argv[0]!r}; choose from {choices} (vlprompt --help)\n")
        sys.exit(2)
    from vlprompt import help_cache
    from vlprompt.errors import report_user_errors
    from vlprompt.recipes import resolve_config_args

    argv = resolve_config_args(argv)  # configs/... as the README writes them, also from an installed vlprompt
    with report_user_errors():
        quick_checks(argv[1:])
    if help_cache.is_plain_help(argv):
        text = help_cache.cached_help(argv[0])
        if text is not None:
            sys.stdout.write(text)
            sys.exit(0)
        help_cache.build_and_keep_help(argv[0], lambda: _lightning_main(argv))
        return
    _lightning_main(argv)


def quick_checks(argv: Sequence[str]) -> None:
    """The mistakes a Lightning command can be refused for before Lightning is imported (about 9 s on two cores): a
    ``--config`` file that is missing, not YAML or not a mapping; a ``--ckpt_path`` that does not exist; a data set
    folder (the last ``data.root`` of the config files and ``--data.root``) that does not exist. The same messages
    as the full parser's, in one ``vlprompt: error:`` line."""
    import yaml

    from vlprompt.command_line import names_a_checkpoint_file, option_values
    from vlprompt.errors import ConfigError

    roots = []
    for path in option_values(argv, "--config", "-c"):
        if not Path(path).is_file():
            raise ConfigError(f"config file {path!r} does not exist; check the path (configs/learners, configs/clip, "
                              "configs/data hold the shipped ones)")
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path!r} is not valid YAML ({' '.join(str(err).split())[:160]})") from None
        if content is not None and not isinstance(content, dict):
            raise ConfigError(f"config file {path!r} must be a mapping of keys (model:, data:, trainer:)")
        data = (content or {}).get("data")
        if isinstance(data, dict) and data.get("root"):
            roots.append(str(data["root"]))
    if any(arg in ("-h", "--help") or arg.startswith("--print_config") for arg in argv):
        return  # nothing is read: a data set or checkpoint that is not there yet is no mistake
    roots += option_values(argv, "--data.root")
    if roots and not Path(roots[-1]).expanduser().is_dir():
        raise ConfigError(f"dataset directory {str(Path(roots[-1]).expanduser())!r} does not exist; see "
                          "datasets/README.md")
    for path in option_values(argv, "--ckpt_path"):
        if names_a_checkpoint_file(path) and not Path(path).exists():
            raise ConfigError(f"checkpoint {path!r} does not exist; pass the last.ckpt a fit wrote "
                              "(<run directory>/checkpoints/last.ckpt)")


def _lightning_main(args: Optional[Sequence[str]]) -> None:
    from vlprompt.cli import main as lightning_main

    lightning_main(args)


if __name__ == "__main__":
    main()
