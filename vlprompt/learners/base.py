"""What every prompt learner shares: the frozen CLIP, class names, training loop, metrics and checkpoints."""

from __future__ import annotations

import inspect
import math
import random
import types
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from vlprompt.clip import FrozenCLIP
from vlprompt.data.benchmarks import PLAIN_TEMPLATE
from vlprompt.data.descriptions import check_attributes
from vlprompt.errors import CheckpointMismatchError, ConfigError, TrainingDivergedError, warn
from vlprompt.learners.checkpoint_io import architecture_difference, non_finite_tensors
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.hyperparameters import check_hyperparameters
from vlprompt.learners.losses import Loss, LossTerm, StepOutputs, combine, cross_entropy
from vlprompt.learners.plugins import Plugin, plugin_classes, refuse_unless_capable
from vlprompt.learners.references import FrozenReferences
from vlprompt.learners.registry import get_plugin_class, list_plugins

#: Bumped when the layout of ``checkpoint["vlprompt"]`` changes (2: every frozen model under ``frozen``; 3: plug-in
#: records under ``plugins``, which format 2 kept in places of their own: ``Plugin.format_2_record``).
CHECKPOINT_FORMAT = 3
#: Trainer precisions whose steps compute in a low dtype: the frozen weights are held in it (FrozenCLIP.hold_in).
MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
#: The methods ``compile`` replaces, where a learner has them.
#: (``image_features`` wraps ``encode_image`` where visual prompts apply: compiling the outer method covers both, and a
#: compiled method calling another compiled one breaks torch's CUDA-graph mode.)
COMPILED_METHODS = ("text_features", "image_features")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class _AttachesPlugins(type):
    """Plug-ins attach once the learner is whole: a subclass builds its prompts after the base class's ``__init__``,
    and a plug-in's capabilities are the finished learner's."""

    def __call__(cls, *args, **kwargs):
        learner = super().__call__(*args, **kwargs)
        learner._attach_plugins()
        return learner

    @property
    def __signature__(cls) -> inspect.Signature:
        # What calling the class takes is its __init__'s arguments (inspect would otherwise read __call__'s above).
        signature = inspect.signature(cls.__init__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


class PromptLearner(pl.LightningModule, metaclass=_AttachesPlugins):
    """Base class of all learners.

    A learner holds one or more frozen models (:class:`~vlprompt.clip.FrozenCLIP`: ``clip``, and for example a
    ``teacher``) and the parameters it learns. Frozen models are never trained, never saved in hyper-parameters
    or checkpoints (a checkpoint records each one's identity, and :func:`~vlprompt.load_learner` rebuilds them),
    and shared, not copied, by ``copy.deepcopy`` (weight averaging and meta-learning copy learners).
    ``forward(images)`` returns logits of shape ``(batch, n_classes)``; :meth:`set_classnames` switches to other
    classes (base to novel) with their templates and descriptions, without touching what was learned.

    A subclass provides ``forward``, and to change the loss: :meth:`training_outputs` (what a training forward
    produces) and :meth:`loss_terms` (named, weighted terms; each is logged as ``train/<name>``). Per-part
    learning rates: :meth:`parameter_groups`. Meta-learning: set ``automatic_optimization = False`` and write
    ``training_step`` with ``self.manual_backward`` (Lightning's manual optimisation), logging through
    :meth:`log_loss`. Visual prompts on the shared image path: :meth:`visual_prompts`; a learner that computes
    image features its own way overrides :meth:`image_features` instead (the feature cache and plug-ins that need
    the shared path then refuse it).

    What a learner can take is derived from its components (:attr:`capabilities`), not declared: plug-ins
    (:mod:`vlprompt.learners.plugins`) check it, and the data module's feature cache asks
    :attr:`image_features_are_frozen`.

    Args:
        clip: the frozen backbone.
        classnames: class names, in label order.
        templates: hand-written prompt templates with one ``{}`` for the class name (the dataset's templates);
            used by learners that need hand-crafted text features.
        descriptions: ``{class name: [sentence, ...]}`` for learners that use per-class descriptions (the data
            module's ``data.descriptions`` file); every class needs at least one.
        template_groups: the data set's hand templates in groups (``data.template_groups``), for learners with one
            prompt per group (MoCoOp's experts); others ignore them.
        attributes: the data set's attribute words (``data.attributes``, e.g. ``[color, shape]``), for plug-ins that
            place them in the prompt (ATPrompt); others ignore them.
        optimizer: ``sgd`` (the Dassl/CoOp family), ``adam`` (weight decay as an L2 term, as Dassl's) or ``adamw``
            (decoupled weight decay); Adam's betas are Dassl's (0.9, 0.999).
        lr, momentum, weight_decay: the optimiser's settings (``momentum`` is SGD's).
        adam_eps: Adam's and AdamW's epsilon (torch's 1e-8; TCP's recipe patches Dassl to 1e-3).
        warmup_epochs, warmup_lr: a constant learning rate for the first epochs, then cosine annealing
            over ``max_epochs`` (Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR``).
        plugins: plug-ins as specs ``[{name: <plug-in>, <option>: <value>, ...}, ...]``
            (:mod:`vlprompt.learners.plugins`); each checks that the learner has what it needs.
        compile: ``torch.compile`` the learner's heavy paths (``text_features``, ``image_features``) when a fit,
            validation, test or prediction sets up: ``False`` (default), ``True`` (torch's default mode) or a torch
            compile mode; ``"reduce-overhead"`` also replays CUDA graphs, which pays where shapes are static and
            steps are launch-bound (small batches). The first steps compile.
        activation_checkpointing: in training, recompute activations in the backward pass instead of keeping them:
            each image-tower block of learners with visual prompts (CoCoOp: each text chunk). Less memory for
            about a third more compute; exact.
    """

    registry_name: ClassVar[str] = ""
    #: Whether the learner has anything to fit (evaluation protocols only test those that do not).
    needs_training: ClassVar[bool] = True
    #: Whether text features depend only on the learned parameters (not on the image), so evaluation can
    #: compute them once.
    image_independent_text: ClassVar[bool] = True
    #: Whether some learned parameters may get no gradient in a step (e.g. a router picking some prompts).
    #: DDP must then look for unused parameters (``--trainer.strategy ddp_find_unused_parameters_true``),
    #: which costs a graph traversal per step, so learners declare it instead of every run paying for it.
    may_leave_parameters_unused: ClassVar[bool] = False
    #: Trainable parameters on ``paper_backbone`` as the paper reports them (or as computed from its reference code);
    #: None where neither states one (a learner of our reading: its tests count it from the architecture).
    paper_trainable_parameters: ClassVar[Optional[int]] = None
    #: The backbone the paper's count is on (ViT-B/16, or BiomedCLIP for the biomedical papers).
    paper_backbone: ClassVar[str] = "ViT-B/16"
    #: Whether training reads labels (a distillation stage does not: no training accuracy is logged).
    uses_labels: ClassVar[bool] = True
    #: Whether the learner reads per-class descriptions (``data.descriptions``); it refuses to build without.
    needs_descriptions: ClassVar[bool] = False
    #: Whether base-to-novel training reads every class's training images, novel included, without labels (PromptKD):
    #: the suite then fits it on all classes and marks its rows "transductive" (unless ``data.unlabeled_dir`` gives
    #: the images instead: the inductive variant).
    transductive: ClassVar[bool] = False
    #: For a learner distilled from a fitted teacher (its ``teacher_checkpoint`` option): the teacher fit's default
    #: YAMLs, relative to the configs folder; the suite fits that teacher first. None for others.
    teacher_recipe: ClassVar[Optional[tuple[str, ...]]] = None

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        descriptions: Optional[dict[str, list[str]]] = None,
        template_groups: Optional[Sequence[Sequence[str]]] = None,
        attributes: Optional[Sequence[str]] = None,
        optimizer: str = "sgd",
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        adam_eps: float = 1e-8,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        plugins: Optional[list[dict[str, Any]]] = None,
        compile: Union[bool, str] = False,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        if not isinstance(clip, FrozenCLIP):
            raise ConfigError(f"clip must be a vlprompt FrozenCLIP (vlprompt.load_clip(...)), got {type(clip).__name__}")
        self.save_hyperparameters(ignore=["clip", "teacher"])
        # Frozen models given under other names (a teacher) are not hyper-parameters either.
        for name in [k for k, v in self.hparams.items() if isinstance(v, FrozenCLIP)]:
            del self.hparams[name]
            self._hparams_initial.pop(name, None)
        check_hyperparameters(self.hparams)
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.clip = clip
        self.references = FrozenReferences()
        self._text_cache: Optional[torch.Tensor] = None
        #: Unnormalised features of the last forward, kept only while a plug-in reads them (DePT's head).
        self._raw_features: Optional[dict[str, torch.Tensor]] = None
        if self.needs_descriptions and descriptions is None:
            raise ConfigError(f"{self.registry_name} needs per-class descriptions: pass --data.descriptions FILE (a "
                              "JSON file {\"class name\": [\"sentence\", ...]}; tools/describe_classes.py writes one)")
        self.classnames, self.templates, self.descriptions = _class_texts(classnames, templates, descriptions)
        self.template_groups = _template_groups(template_groups)
        self.attributes = check_attributes(attributes, "attributes")
        #: Plug-ins (components), built and attached once the subclass has built its prompts (_AttachesPlugins).
        self.plugins = nn.ModuleList()
        self._plugin_classes = plugin_classes(plugins)
        self._plugins_set_up = False
        self.compile_mode = _compile_mode(compile)
        self.activation_checkpointing = activation_checkpointing
        self._compiled = False
        self.train_acc, self.val_acc, self.test_acc = MeanMetric(), MeanMetric(), MeanMetric()
        #: ``{classname: accuracy in percent}`` of the last test run.
        self.per_class_test_accuracy: dict[str, float] = {}

    # -- what subclasses provide (besides forward(images) -> logits) --------------------------------------------
    def _on_classnames_changed(self) -> None:
        """Rebuild whatever depends on the class names (token ids, frozen text features)."""

    def training_outputs(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        """What a training forward produces for the loss terms; the logits, unless a term needs more."""
        return StepOutputs(logits=self(images), labels=labels)

    def loss_terms(self) -> list[LossTerm]:
        """The loss as named, weighted terms; cross-entropy unless the paper adds terms."""
        return [LossTerm("ce", 1.0, cross_entropy)]

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> Loss:
        """The loss of a training batch: its total, its weighted terms by name (the learner's, then its plug-ins'),
        and the step's outputs."""
        scales = {name: scale for plugin in self.plugins for name, scale in plugin.scaled_terms(self).items()}
        terms = [term._replace(weight=term.weight * scales.get(term.name, 1.0)) for term in self.loss_terms()]
        terms += [term for plugin in self.plugins for term in plugin.loss_terms(self)]
        return combine(terms, self.training_outputs(images, labels))

    def visual_prompts(self) -> dict[str, Any]:
        """The learner's visual prompts for the shared image path, as :meth:`encode_image`'s keyword arguments
        (``prompts``: input tokens, ``deep_prompts``: ``{layer: tokens}``); empty for none."""
        return {}

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups; one group at the learner's ``lr`` unless a learner trains parts at their
        own rates (a group may carry ``lr``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def optimizer_groups(self) -> list[dict]:
        """What the optimiser trains: :meth:`parameter_groups`, less the parameters a plug-in trains in groups of its
        own (:meth:`~vlprompt.learners.plugins.Plugin.parameter_groups`), then those groups."""
        own = [group for plugin in self.plugins for group in plugin.parameter_groups(self)]
        taken = {id(p) for group in own for p in group["params"]}
        groups = [{**group, "params": [p for p in group["params"] if id(p) not in taken]}
                  for group in self.parameter_groups()]
        return [group for group in groups if group["params"]] + own

    # -- shared pieces ---------------------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def set_classnames(self, classnames: Sequence[str], templates: Optional[Sequence[str]] = None,
                       descriptions: Optional[dict[str, list[str]]] = None) -> None:
        """Switch to other classes (and their data set's templates and descriptions, when given); learned
        parameters are kept as they are. A learner that does not read descriptions drops those of its old classes."""
        if descriptions is None:
            descriptions = self.descriptions if self.needs_descriptions else None
        self.classnames, self.templates, self.descriptions = _class_texts(classnames, templates or self.templates,
                                                                          descriptions)
        self._text_cache = None
        self.references.clear()
        self._on_classnames_changed()

    @property
    def frozen_models(self) -> dict[str, FrozenCLIP]:
        """Every frozen model the learner holds, by attribute name (``clip`` first)."""
        # Not named_children(): it lists a module once, and a teacher may be the student itself.
        return {name: module for name, module in self._modules.items() if isinstance(module, FrozenCLIP)}

    @property
    def preprocess_cfg(self) -> dict:
        """Image size, mean and std the learner's inputs need (its student CLIP's); the data module asks this."""
        return self.clip.preprocess_cfg

    def hand_text_features(self, templates: Optional[Sequence[str]] = None, normalize_each: bool = True) -> torch.Tensor:
        """Frozen ``C x D`` text features of the hand templates, ensembled (see
        :meth:`FrozenReferences.template_ensemble`); computed once per class set and device."""
        return self.references.template_ensemble(self.clip, self.classnames, list(templates or self.templates),
                                                 normalize_each)

    def description_features(self) -> torch.Tensor:
        """Frozen ``C x D`` text features of each class's descriptions, ensembled per class."""
        if self.descriptions is None:
            raise ConfigError(f"{self.registry_name} needs per-class descriptions; pass data.descriptions "
                              "(a JSON file {\"class name\": [\"sentence\", ...]})")
        return self.references.description_ensemble(self.clip, self.classnames, self.descriptions)

    def cached_text_features(self, compute) -> torch.Tensor:
        """``compute()`` in training; in evaluation the result is computed once and reused.

        Only for text features that do not depend on the image. The cache is dropped whenever the learner
        changes mode, loads weights or switches classes.
        """
        if self.training or not self.image_independent_text:
            return compute()
        if self._text_cache is None:
            with torch.no_grad():
                # A copy: a compiled path's output may live in a CUDA-graph pool that the next replay reuses.
                self._text_cache = compute().clone() if self._compiled else compute()
        return self._text_cache

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features on the shared path: the frozen tower's (:meth:`frozen_image_features`), or with
        the learner's :meth:`visual_prompts` and its plug-ins' vision tokens when there are any."""
        prompts = self.visual_prompts()
        frozen = not prompts and not self._plugins_change_images
        if self._raw_features is None:
            return self.frozen_image_features(images) if frozen else self.encode_image(images, **prompts)
        if images.ndim == 2:
            raise ConfigError(f"{self.registry_name}'s plug-ins read unnormalised image features, and the feature cache "
                              "holds normalised ones; drop data.cache_image_features")
        raw = self.clip.encode_image(images) if frozen else self.encode_image(images, normalize=False, **prompts)
        self._raw_features["image"] = raw
        return F.normalize(raw, dim=-1)

    def normalized_text(self, features: torch.Tensor) -> torch.Tensor:
        """Class text features normalised, as learners return them; the unnormalised ones are kept while a plug-in
        reads them (:meth:`take_raw_features`)."""
        if self._raw_features is not None:
            self._raw_features["text"] = features
        return F.normalize(features, dim=-1)

    def take_raw_features(self) -> dict[str, torch.Tensor]:
        """The unnormalised ``text`` (``C x D``, or ``B x C x D`` per image) and ``image`` (``B x D``) features of the
        last forward, handed over once (a plug-in that reads them is attached; empty otherwise)."""
        if self._raw_features is None:
            return {}
        taken, self._raw_features = self._raw_features, {}
        return taken

    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised features of the frozen image tower, what the data module's feature cache holds; a ``B x D``
        batch already is such features (the cache, ``ImageSplitDataModule(cache_image_features=True)``)."""
        return self.references.image_features(self.clip, images)

    def encode_image(self, images: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                     deep_prompts: Optional[dict] = None, normalize: bool = True) -> torch.Tensor:
        """Image features (normalised unless ``normalize`` is False) with visual prompts (input ``prompts`` and
        per-layer ``deep_prompts``), merged with the plug-ins' vision tokens (which go first)."""
        for plugin in self.plugins:
            prompts, deep_prompts = plugin.vision_prompts(prompts, deep_prompts)
        return self.clip.encode_image(images, prompts=prompts, deep_prompts=deep_prompts, normalize=normalize,
                                      checkpoint=self.activation_checkpointing and self.training)

    # -- what the learner can take, derived from its components ---------------------------------------------------
    @property
    def text_context(self) -> Optional[ContextPrompts]:
        """The learner's learned text context, when it has exactly one with the class name at the end."""
        contexts = [module for module in self.modules() if isinstance(module, ContextPrompts)]
        return contexts[0] if len(contexts) == 1 and contexts[0].class_token_position == "end" else None

    @property
    def capabilities(self) -> frozenset[str]:
        """What plug-ins may need of this learner (:data:`vlprompt.learners.plugins.CAPABILITIES`): a
        ``text_context`` when it has one, the ``shared_image_path`` when it does not compute image features its
        own way."""
        found = {"text_context"} if self.text_context is not None else set()
        if self.has_shared_image_path():
            found.add("shared_image_path")
        if found == {"text_context", "shared_image_path"}:
            found.add("unnormalised_features")
        return frozenset(found)

    @classmethod
    def has_shared_image_path(cls) -> bool:
        """Whether the class computes image features on the shared path (it does not override
        :meth:`image_features`); known without building a learner."""
        return cls.image_features is PromptLearner.image_features

    @property
    def image_features_are_frozen(self) -> bool:
        """Whether the image features are the frozen tower's unchanged (the data module may then cache them): the
        shared image path, with no visual prompts and no plug-in changing them."""
        return ("shared_image_path" in self.capabilities and not self.visual_prompts()
                and not self._plugins_change_images and self._raw_features is None)

    @property
    def _plugins_change_images(self) -> bool:
        return any(plugin.changes_image_features for plugin in self.plugins)

    def _attach_plugins(self) -> None:
        capabilities = self.capabilities
        for cls, options in self._plugin_classes:
            refuse_unless_capable(cls, self.registry_name or type(self).__name__, capabilities)
        for cls, options in self._plugin_classes:
            plugin = cls(**options)
            if plugin.reads_unnormalised_features:
                self._raw_features = {}
            plugin.attach(self)
            self.plugins.append(plugin)
        if self._adjusts_logits:
            self.register_forward_hook(_plugins_adjust_logits)
        self._plugin_classes = []

    def class_features(self) -> Optional[torch.Tensor]:
        """The normalised class features (``C x D``) when the learner's logits are ``logit_scale * image @ them.T`` on
        the frozen CLIP's normalised image features, a fixed linear classifier (``vlprompt export``); None when its
        scores depend on the image otherwise (visual prompts, a plug-in changing images or logits, or no
        :meth:`fixed_text_features`)."""
        if not self.image_features_are_frozen or self._adjusts_logits:
            return None
        return self.fixed_text_features()

    def fixed_text_features(self) -> Optional[torch.Tensor]:
        """The class text features the learner scores every image against, when they do not depend on the image
        (cached in evaluation); None (the default) for learners whose text side depends on it."""
        return None

    @property
    def _adjusts_logits(self) -> bool:
        return any(type(plugin).adjust_logits is not Plugin.adjust_logits for plugin in self.plugins)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities; ``text_features`` is ``C x D`` or per image ``B x C x D``."""
        scale = self.clip.logit_scale
        if text_features.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", image_features, text_features)
        return scale * image_features @ text_features.t()

    def train(self, mode: bool = True):
        self._text_cache = None
        return super().train(mode)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- Lightning -------------------------------------------------------------------------------------------------
    def _require_trainable(self) -> None:
        if self.num_trainable_parameters() == 0:
            raise ConfigError(f"learner {self.registry_name!r} has nothing to train; evaluate it with `vlprompt test`")

    def setup(self, stage: str) -> None:
        dtype = MIXED_PRECISION_DTYPES.get(str(self.trainer.precision)) if self._trainer is not None else None
        if dtype is not None:
            for model in self.frozen_models.values():
                model.hold_in(dtype)
        if self.compile_mode is not None and not self._compiled:
            self.compile_paths()
        # Before Lightning restores a resumed checkpoint, which then replaces an initialisation as it should; once,
        # so a second fit of the same learner goes on from what the first learned.
        if stage == "fit" and not self._plugins_set_up:
            for plugin in self.plugins:
                plugin.on_fit_setup(self)
            self._plugins_set_up = True

    def compile_paths(self) -> None:
        """Replace the learner's heavy methods by ``torch.compile``d ones (``compile``'s mode). Each is bound as a
        method, so a deep copy (weight averaging) binds the compiled function to the copy, not to this learner."""
        for name in COMPILED_METHODS:
            function = getattr(type(self), name, None)
            if callable(function):
                setattr(self, name, types.MethodType(torch.compile(function, mode=self.compile_mode), self))
        self._compiled = True
        self._text_cache = None

    def _mark_cuda_graph_step(self) -> None:
        # CUDA-graph replays reuse their output memory: tell torch a new step begins, so the last one's is free.
        if self._compiled and self.compile_mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()

    def on_train_batch_start(self, batch, batch_idx):
        self._mark_cuda_graph_step()

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._mark_cuda_graph_step()

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._mark_cuda_graph_step()

    def on_predict_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._mark_cuda_graph_step()

    def on_fit_start(self) -> None:
        self._require_trainable()
        unlabeled = getattr(self.trainer.datamodule, "unlabeled_dir", None)
        if unlabeled is not None and self.uses_labels:
            from vlprompt.learners.registry import get_learner_class, list_learners

            readers = [name for name in list_learners() if not get_learner_class(name).uses_labels]
            raise ConfigError(f"data.unlabeled_dir {str(unlabeled)!r} replaces the training images with unlabelled ones, "
                              f"but {self.registry_name} trains on labels (learners that read unlabelled images: "
                              f"{', '.join(readers)}); drop data.unlabeled_dir")
        strategy = self.trainer.strategy
        if (self.may_leave_parameters_unused and isinstance(strategy, DDPStrategy)
                and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters")):
            raise ConfigError(f"{self.registry_name} may leave some prompts unused in a step; under DDP pass "
                              f"--trainer.strategy ddp_find_unused_parameters_true")
        rank_zero_info(f"{self.registry_name}: {self.num_trainable_parameters():,} trainable parameters; CLIP frozen")
        self._note_warmup_only()

    def _note_warmup_only(self) -> None:
        """Say so when every epoch of the fit is a warm-up epoch at a far lower rate (a 1-epoch CoOp run stays at
        its initialisation: it then scores as zero-shot CLIP does)."""
        hp, max_epochs = self.hparams, self.trainer.max_epochs
        warmup, warmup_lr, lr = hp.get("warmup_epochs", 0), hp.get("warmup_lr"), hp.get("lr")
        if max_epochs is not None and 0 < max_epochs <= warmup and warmup_lr is not None and lr and warmup_lr < lr:
            warn(f"{self.registry_name}: --trainer.max_epochs {max_epochs} <= warmup_epochs {warmup}, so every epoch "
                 f"trains at the warm-up rate {warmup_lr:g}, not lr {lr:g}: the prompts hardly move from their "
                 "initialisation; train for more epochs (or lower --model.init_args.warmup_epochs)")

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = self.training_loss(images, labels)
        self.log_loss(loss)
        return loss.total

    def log_loss(self, loss: Loss) -> None:
        """Stop on a non-finite loss; log ``train/loss``, each term as ``train/<name>`` and ``train/acc``."""
        # One host sync per step (the progress bar reads the loss anyway); a NaN step would poison the prompts.
        if not torch.isfinite(loss.total):
            self._diverged(f"the loss is {loss.total.item()}")
        labels = loss.outputs.labels
        if self.uses_labels:
            self.train_acc(_correct(loss.outputs.logits.detach(), labels))
        self.log("train/loss", loss.total, prog_bar=True, batch_size=labels.shape[0])
        if len(loss.terms) > 1:
            for name, value in loss.terms.items():
                self.log(f"train/{name}", value, batch_size=labels.shape[0])
        if self.uses_labels:
            self.log("train/acc", self.train_acc, prog_bar=True, on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self._refuse_non_finite(self.named_parameters())

    def _refuse_non_finite(self, named_tensors) -> None:
        bad = non_finite_tensors(named_tensors)
        if bad:
            self._diverged(f"learned parameters {', '.join(bad)} are not finite")

    def _diverged(self, what: str) -> None:
        raise TrainingDivergedError(
            f"training diverged at epoch {self.current_epoch}, step {self.global_step}: {what}; the run is unfinished "
            f"and reports no result. Lower the learning rate (--model.init_args.lr, now {self.hparams.get('lr', 'unset')})")

    def validation_step(self, batch, batch_idx):
        images, labels, real = _evaluation_batch(batch)
        self.val_acc(_correct(self(images), labels)[real])
        self.log("val/acc", self.val_acc, prog_bar=True, on_step=False, on_epoch=True)

    def on_test_epoch_start(self) -> None:
        # Per-class accuracy for reports; a torchmetrics state, so DDP ranks are summed exactly.
        self.test_per_class = MulticlassAccuracy(self.n_classes, average=None).to(self.device)

    def test_step(self, batch, batch_idx):
        images, labels, real = _evaluation_batch(batch)
        logits = self(images)
        self.test_acc(_correct(logits, labels)[real])
        if real.any():  # a batch of padding only (DDP) has nothing to count
            self.test_per_class.update(logits.argmax(dim=-1)[real], labels[real])
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        accuracy = (self.test_per_class.compute() * 100).tolist()
        self.per_class_test_accuracy = dict(zip(self.classnames, accuracy))
        del self.test_per_class  # not part of the learner: keeps it out of state_dict and checkpoints

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=-1)

    def configure_optimizers(self):
        self._require_trainable()  # Lightning asks for optimizers before on_fit_start
        hp = self.hparams
        optimizer = build_optimizer(self.optimizer_groups(), hp)
        scheduler = dassl_schedule(optimizer, hp.warmup_epochs, hp.warmup_lr, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Never leave a checkpoint that would evaluate as chance accuracy.
        self._refuse_non_finite(checkpoint["state_dict"].items())
        checkpoint["vlprompt"] = {
            "format": CHECKPOINT_FORMAT,
            "learner": self.registry_name,
            "clip": self.clip.identity,
            "frozen": {name: model.identity for name, model in self.frozen_models.items()},
            "classnames": list(self.classnames),
        }
        records = {plugin.name: {"spec": plugin.spec, **record} for plugin in self.plugins
                   if (record := plugin.record()) is not None}
        if records:
            checkpoint["vlprompt"]["plugins"] = records
        # A fit resumed from this checkpoint draws the same batches and augmentations as an uninterrupted one.
        checkpoint["random_state"] = _random_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_matches(checkpoint, self)
        check_plugin_records(checkpoint, self)
        if "random_state" in checkpoint and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            _set_random_state(checkpoint["random_state"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._text_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


#: The optimisers a learner may train with (its ``optimizer`` option).
OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(groups: list[dict], hp) -> torch.optim.Optimizer:
    """The optimiser a learner's hyper-parameters ``hp`` name, over parameter ``groups`` (Dassl's settings: SGD with
    momentum; Adam with L2 weight decay; AdamW; betas (0.9, 0.999))."""
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    kind = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
    return kind(groups, lr=hp.lr, betas=(0.9, 0.999), eps=hp.adam_eps, weight_decay=hp.weight_decay)


def dassl_schedule(optimizer, warmup_epochs: int, warmup_lr: float, max_epochs: Optional[int]):
    """Dassl's per-epoch schedule: every parameter group at ``warmup_lr`` for the first ``warmup_epochs`` (its
    constant warm-up sets one rate for all groups), then cosine annealing from each group's own rate (the
    optimiser's, or the group's where it has one) over ``max_epochs``."""
    max_epochs = max(int(max_epochs or 1), 1)

    def factor_for(group_lr: float):
        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return warmup_lr / group_lr
            # Dassl steps the cosine successor from 0 after warm-up, with T_max = max_epochs.
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs))
        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups])


def _plugins_adjust_logits(learner: PromptLearner, args, logits: torch.Tensor) -> torch.Tensor:
    """The learner's forward hook where plug-ins change its evaluation logits (DePT's fused head)."""
    if learner.training:
        return logits
    for plugin in learner.plugins:
        logits = plugin.adjust_logits(learner, logits)
    return logits


def _compile_mode(value: Union[bool, str, None]) -> Optional[str]:
    """The torch compile mode of the ``compile`` option (None: off)."""
    if value is None or value is False or value in ("false", "False"):
        return None
    if value is True or value in ("true", "True"):
        return "default"
    if value not in COMPILE_MODES:
        raise ConfigError(f"compile must be true, false or one of {', '.join(COMPILE_MODES)}; got {value!r}")
    return value


def _random_state() -> dict[str, Any]:
    """The global generators' states, in types ``torch.load(weights_only=True)`` reads back."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position,
                                                      has_gauss, gauss], "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _class_texts(classnames: Sequence[str], templates: Optional[Sequence[str]],
                 descriptions: Optional[dict[str, list[str]]]) -> tuple[list[str], list[str], Optional[dict]]:
    """Checked class names, templates and descriptions (restricted to the classes)."""
    classnames = list(classnames or [])
    if not classnames:
        raise ConfigError("a learner needs at least one class name (classnames=[...])")
    templates = list(templates or [PLAIN_TEMPLATE])
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ConfigError(f"templates need exactly one '{{}}' for the class name: {bad}")
    if descriptions is not None:
        missing = [name for name in classnames if not descriptions.get(name)]
        if missing:
            raise ConfigError(f"the descriptions lack {len(missing)} classes: {', '.join(map(repr, missing[:5]))}"
                              f"{' ...' if len(missing) > 5 else ''}; every class needs at least one sentence")
        descriptions = {name: list(descriptions[name]) for name in classnames}
    return classnames, templates, descriptions


def _template_groups(groups: Optional[Sequence[Sequence[str]]]) -> Optional[list[list[str]]]:
    if groups is None:
        return None
    groups = [list(group) for group in groups]
    if not groups or not all(groups):
        raise ConfigError("template_groups must be a non-empty list of non-empty lists of templates")
    bad = [t for group in groups for t in group if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ConfigError(f"templates need exactly one '{{}}' for the class name: {bad}")
    return groups


def check_checkpoint_matches(checkpoint: dict[str, Any], learner: PromptLearner) -> None:
    """Refuse a checkpoint written by another learner or on another CLIP architecture."""
    meta = checkpoint.get("vlprompt")
    if meta is None:
        raise CheckpointMismatchError("this checkpoint was not written by a vlprompt learner (no 'vlprompt' entry)")
    if meta["learner"] != learner.registry_name:
        raise CheckpointMismatchError(
            f"checkpoint holds a {meta['learner']!r} learner, not {learner.registry_name!r}; "
            f"load it with --model {meta['learner']} or vlprompt.load_learner(path)")
    saved_models = meta.get("frozen") or {"clip": meta["clip"]}
    for name, model in learner.frozen_models.items():
        if name not in saved_models:
            continue
        diff = architecture_difference(saved_models[name]["arch"], model.identity["arch"])
        if diff:
            raise CheckpointMismatchError(
                f"checkpoint was trained with a different {name} architecture ({diff}); use the model it was "
                f"trained on ({saved_models[name]['source']['name']!r})")



def plugin_records(meta: dict) -> dict[str, dict]:
    """What a checkpoint recorded of its learner's plug-ins, by name (from a format-2 checkpoint, as each plug-in
    reads its own record there)."""
    records = dict(meta.get("plugins") or {})
    if meta.get("format", 1) < 3:
        for name in list_plugins():
            record = get_plugin_class(name).format_2_record(meta)
            if record is not None:
                records[name] = record
    return records


def check_plugin_records(checkpoint: dict[str, Any], learner: PromptLearner, where: str = "the checkpoint") -> None:
    """Refuse a checkpoint trained with a plug-in the learner lacks, or whose plug-in differs from the one loaded."""
    loaded = {plugin.name: plugin for plugin in learner.plugins}
    for name, record in plugin_records(checkpoint.get("vlprompt") or {}).items():
        if name not in loaded:
            spec = ", ".join(f"{key}: {value}" for key, value in record["spec"].items())
            raise CheckpointMismatchError(f"{where} was trained with the {name!r} plug-in; pass it: "
                                          f"--model.init_args.plugins+='{{{spec}}}'")
        loaded[name].check_record(record, where)


def _evaluation_batch(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, real)``: under DDP the data module pads evaluation sets to equal shards and marks the
    padding, so every image counts exactly once; otherwise every image is real."""
    images, labels, *marks = batch
    real = marks[0].bool() if marks else torch.ones_like(labels, dtype=torch.bool)
    return images, labels, real


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness in percent, so the mean is accuracy in percent."""
    return (logits.argmax(dim=-1) == labels).float() * 100.0
