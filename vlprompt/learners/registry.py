"""The learner and plug-in registries: a name for every learner class (``@register_learner``) and every plug-in
class (``@register_plugin``, :mod:`vlprompt.learners.plugins`).

When the registry is first read it imports every module of the :mod:`vlprompt.learners` package, so a new
learner is one new file with a ``@register_learner`` class: nothing else lists it, and the registry is complete
whatever the caller imported. Third-party learners register through the ``vlprompt.learners`` entry-point
group (``name = package.module:Class``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Optional

from vlprompt.errors import ConfigError

# Learner classes are typed ``type`` here: the registry sits below the base class it lists subclasses of, so that the
# base class may ask it (which learners read unlabelled images) without an import circle.
_REGISTRY: dict[str, type] = {}
_PLUGINS: dict[str, type] = {}
_loaded = False


def _registrar(table: dict[str, type], kind: str, attribute: str) -> Callable[[str], Callable[[type], type]]:
    """A class decorator factory that files classes in ``table`` by name and gives each its name as ``attribute``."""

    def register(name: str) -> Callable[[type], type]:
        def decorate(cls):
            if name in table and table[name] is not cls:
                raise ValueError(f"{kind} name {name!r} is already taken by {table[name].__qualname__}")
            setattr(cls, attribute, name)
            table[name] = cls
            return cls

        return decorate

    return register


#: Class decorator: make a learner available as ``name``.
register_learner = _registrar(_REGISTRY, "learner", "registry_name")
#: Class decorator: make a plug-in available as ``name`` (its spec's ``name``).
register_plugin = _registrar(_PLUGINS, "plug-in", "name")


def _registered(table: dict[str, type], kind: str, name: str) -> type:
    _load_all()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(table))}"
        raise ConfigError(f"unknown {kind} {name!r}; {hint}")
    return table[name]


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("vlprompt.learners")
    # Every module, those in a method's own folder (learners/caspl/...) included.
    for module in sorted(info.name for info in pkgutil.walk_packages(package.__path__, "vlprompt.learners.")):
        importlib.import_module(module)
    for entry in entry_points(group="vlprompt.learners"):
        cls = entry.load()
        if entry.name not in _REGISTRY:
            register_learner(entry.name)(cls)


def list_learners() -> list[str]:
    """Names of all registered learners, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def list_plugins() -> list[str]:
    """Names of all registered plug-ins, sorted."""
    _load_all()
    return sorted(_PLUGINS)


def get_plugin_class(name: str) -> type:
    return _registered(_PLUGINS, "plug-in", name)


def get_learner_class(name: str) -> type:
    return _registered(_REGISTRY, "learner", name)


def learner_name_of(class_path: str) -> Optional[str]:
    """The registered name of the learner class at ``class_path`` (``vlprompt.learners.coop.CoOp`` or ``CoOp``)."""
    module, _, name = str(class_path).rpartition(".")
    for registered in list_learners():
        cls = _REGISTRY[registered]
        if cls.__name__ == name and (not module or cls.__module__ == module or cls.__module__.startswith(module + ".")
                                     or f"{cls.__module__}.{cls.__qualname__}" == class_path):
            return registered
    return None


def hyperparameter_defaults(cls: type) -> dict[str, object]:
    """Keyword arguments a learner class accepts, with their defaults (``inspect.Parameter.empty`` when
    required): its ``__init__``'s, and its parents' where it forwards ``**kwargs`` to them (learners pass the
    shared optimiser settings on to :class:`PromptLearner`). The nearest class's default wins."""
    defaults: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.name != "self" and p.name not in defaults and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                defaults[p.name] = p.default
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return defaults


def hyperparameter_names(cls: type) -> list[str]:
    """The keyword arguments of :func:`hyperparameter_defaults`, in order."""
    return list(hyperparameter_defaults(cls))


def build_learner(name: str, clip, classnames, **hparams):
    """Build the learner registered as ``name`` on a frozen ``clip`` for ``classnames``."""
    cls = get_learner_class(name)
    valid = hyperparameter_names(cls)
    for key in hparams:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(valid)}"
            raise ConfigError(f"learner {name!r} has no hyper-parameter {key!r}; {hint}")
    return cls(clip=clip, classnames=list(classnames), **hparams)
