"""jsonargparse's error messages as one ``vlprompt: error:`` line each: which key, what is wrong with it, and the
closest valid keys of the configured learner (or the learner that owns a key given to another one).

jsonargparse reports a bad command line as a multi-line message whose wording is its own; :func:`one_line_error`
recognises the forms below (each has a test in ``tests/test_cli_errors.py``) and keeps the first line of anything
else.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Optional, Sequence

from vlprompt.command_line import option_values
from vlprompt.data import ImageSplitDataModule
from vlprompt.learners import get_learner_class, list_learners
from vlprompt.learners.registry import hyperparameter_names, learner_name_of

#: Messages that say a key is unknown (the key is the group).
_UNKNOWN_PATTERNS = (
    re.compile(r"Option '([\w.]+)' is not accepted"),
    re.compile(r'Key "([\w.]+)" is not expected'),
    re.compile(r"unrecognized arguments:\s*--?([\w.]+)", re.I),
    re.compile(r'No action for key "([\w.]+)"'),
    re.compile(r"unexpected keyword argument '?(\w+)'?", re.I),
)
_PARSER_KEY = re.compile(r'Parser key "([\w.]+)"')
_EXPECTED_TYPE = re.compile(r"Expected a <class '([\w.]+)'>")
_GIVEN_VALUE = re.compile(r"(?:Given|Got) value:\s*(.+)")


def candidate_keys(parser, learners: Sequence[str] = ()) -> list[str]:
    """Every dotted option a user may set: the parser's own, the data module's and the learners' (those of
    ``learners``, the configured ones, when known; else every registered learner's)."""
    keys = {action.dest for action in parser._actions if action.dest and action.dest != "help"}
    for name in learners or list_learners():
        keys.update(f"model.init_args.{p}" for p in hyperparameter_names(get_learner_class(name)))
    keys.update(f"data.{p}" for p in inspect.signature(ImageSplitDataModule.__init__).parameters if p != "self")
    return sorted(keys)


def owners_of_keys(learners: Sequence[str]) -> dict[str, list[str]]:
    """``{hyper-parameter: [learners]}`` for the registered learners other than ``learners`` (the configured ones),
    so that a key of another learner is named as such rather than matched to a look-alike."""
    if not learners:
        return {}
    own = {p for name in learners for p in hyperparameter_names(get_learner_class(name))}
    owners: dict[str, list[str]] = {}
    for name in list_learners():
        for parameter in hyperparameter_names(get_learner_class(name)):
            if parameter not in own:
                owners.setdefault(parameter, []).append(name)
    return owners


def _full_key(message: str, inner: Optional[str] = None) -> str:
    """The dotted key an error is about; nested class arguments sit under ``init_args``."""
    keys = _PARSER_KEY.findall(message) + ([inner] if inner else [])
    if not keys:
        return ""
    nested = ".init_args." if "class_path" in message else "."
    return keys[0] + "".join(nested + k for k in keys[1:] if not k.startswith(keys[0]))


_CLASS_PATH_PROBLEM = re.compile(r"Problem with given class_path '([\w.]+)':\s*\n\s*(.+)")


def one_line_error(message: str, candidates: Sequence[str], owners: Optional[dict] = None,
                   configured: Sequence[str] = ()) -> str:
    """Condense a jsonargparse message to one line that names the key and the closest valid ones. ``owners``:
    ``{key: [other learners]}`` (:func:`owners_of_keys`) of the ``configured`` learners' siblings."""
    for pattern in _UNKNOWN_PATTERNS:
        match = pattern.search(message)
        if match:
            key = _full_key(message, match.group(1))
            tail = key.rsplit(".", 1)[-1]
            if key.startswith("model.") and owners and tail in owners:
                return (f"unknown key {key!r}: {tail} is an option of {', '.join(owners[tail])}, not of "
                        f"{', '.join(configured)}; run with --help for {', '.join(configured)}'s options")
            close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
            if not close:  # compare the last component too, e.g. 'n_ctxx' against '...init_args.n_ctx'
                tails = {c.rsplit(".", 1)[-1]: c for c in candidates}
                close = [tails[t] for t in difflib.get_close_matches(tail, tails, n=3, cutoff=0.6)]
            hint = f"; closest valid: {', '.join(close)}" if close else "; run with --help for the valid keys"
            return f"unknown key {key!r}{hint}"
    problem = _CLASS_PATH_PROBLEM.search(message)
    if problem and not problem.group(2).startswith("Parser key"):  # the class itself, not one of its arguments
        class_path, reason = problem.group(1), problem.group(2).strip()
        key = _full_key(message) or "class_path"
        hint = ""
        if key == "model":
            paths = [f"{get_learner_class(n).__module__}.{get_learner_class(n).__qualname__}" for n in list_learners()]
            close = difflib.get_close_matches(class_path, paths, n=3, cutoff=0.6)
            hint = (f"; closest learners: {', '.join(close)}" if close else "") + \
                f" (or --model NAME with one of {', '.join(list_learners())})"
        return f"bad value for {key!r}: cannot use class_path {class_path!r} ({reason}){hint}"
    key = _full_key(message)
    if key:
        expected = [t for t in _EXPECTED_TYPE.findall(message) if t != "NoneType"]
        given = _GIVEN_VALUE.search(message)
        if expected:
            detail = f"expected {' or '.join(dict.fromkeys(expected))}"
        else:  # the first line that says something beyond the key
            lines = [line.strip(" -") for line in message.splitlines()[1:] if line.strip(" -")]
            # A one-line message says it after the key ('Parser key "config": File does not exist: ...').
            first = message.splitlines()[0]
            same_line = first.split('": ', 1)[1].strip() if '": ' in first else ""
            detail = lines[0] if lines else same_line or "invalid value"
        got = f", got {given.group(1).strip()!r}" if given else ""
        return f"bad value for {key!r}: {detail}{got}"
    return " ".join(message.split())[:400]


def configured_learner_names(args: Sequence[str]) -> list[str]:
    """The registered learners that ``args`` configure (through ``--config`` files or ``--model.class_path``)."""
    names = list(dict.fromkeys(configured_learners(args).values()))
    for value in option_values(args, "--model.class_path", "--model"):
        name = learner_name_of(value)
        if name and name not in names:
            names.append(name)
    return [name for name in names if name in list_learners()][-1:]  # the last one wins, as in the config


def configured_learners(args: Sequence[str]) -> dict[str, str]:
    """``{config file: learner name}`` for the ``--config`` files among ``args`` that name a learner."""
    import yaml

    named = {}
    for path in option_values(args, "--config", "-c"):
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):  # the parser reports unreadable files in its own words
            continue
        model = content.get("model") if isinstance(content, dict) else None
        class_path = model.get("class_path") if isinstance(model, dict) else None
        if class_path:
            named[path] = learner_name_of(str(class_path)) or str(class_path)
    return named
