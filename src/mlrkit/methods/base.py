"""The method interface and registry.

A method turns a :class:`TaskInfo` (classes, input kind and size) and its hyper-parameters
(the config's ``method`` section) into a model whose ``forward(inputs)`` returns logits
[B, C]. It declares what it consumes (``"features"`` or ``"images"``), how to initialise from
the training split (e.g. feature standardisation) and which parameters form the classifier
(for the classifier learning-rate multiplier).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from mlrkit.errors import ConfigError
from mlrkit.methods.training_sections import TRAINING_SECTIONS
from mlrkit.registry import Registry


@dataclass
class TaskInfo:
    """What a model needs to know about the data; stored in checkpoints so predict needs no dataset."""

    class_names: list[str]
    input_kind: str  # "features" | "images"
    feature_dim: int | None = None
    image_size: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "input_kind": self.input_kind,
            "feature_dim": self.feature_dim,
            "image_size": self.image_size,
            "extras": self.extras,
        }


@dataclass
class StepOutput:
    """What :meth:`Method.training_step` returns: the loss to optimise and named extra terms.

    ``terms`` are scalars for the record (e.g. SCPNet's L_cls, L_cst, L_dstl): the Trainer averages
    each over the epoch's examples and writes them to ``metrics.jsonl`` (``"terms": {name: mean}``).
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class Method:
    """Base class of a method. Subclasses set ``input_kind`` and implement :meth:`build_model`."""

    input_kind: str = "features"
    #: the loss this method is trained with unless the config names one (``{"name": ..., **params}``)
    default_loss: ClassVar[dict[str, Any]] = {"name": "an"}
    #: config values this method implies unless the user sets them (e.g. zeroshot: ``train.epochs: 0``)
    config_defaults: ClassVar[dict[str, Any]] = {}
    #: the input resolution defaults to the VL model's own (methods that feed images to ``vl.model``)
    image_size_from_vl: ClassVar[bool] = False
    #: the method builds on the VL model's class-name text embeddings (checked by :meth:`check_data`)
    uses_vl_text: ClassVar[bool] = False
    #: extra config sections the method reads: name -> schema (a :class:`mlrkit.schema.Section`);
    #: the config loader rejects any other section, and a section of another method names this one.
    #: Every method also reads the trainer's optional steps ``mix`` and ``cft`` (added below).
    config_sections: ClassVar[dict[str, type]] = dict(TRAINING_SECTIONS)

    #: whether the method reads the ``model`` section (a backbone); if not, setting it is an error
    uses_model: ClassVar[bool] = False
    #: whether the method uses the ``vl`` section's vision-language model (the section is the run's: always allowed)
    uses_vl: ClassVar[bool] = False
    #: False for a method that trains nothing (``zeroshot``): it runs with ``train.epochs: 0``, and only it may
    trains: bool = True
    #: True for a method that gives its loss pseudo-labels (losses with ``needs_pseudo_labels`` require one)
    makes_pseudo_labels: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.config_sections = {**TRAINING_SECTIONS, **cls.config_sections}

    def __init__(self) -> None:
        self.cfg = None  # the run's RunConfig, given by configure() when build_method builds the method
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        """A loud warning: logged now (console and ``console.log``) and recorded in ``run.json``."""
        import logging

        if "warnings" not in self.__dict__:  # a subclass that did not call Method.__init__
            self.warnings = []
        if message not in self.warnings:
            self.warnings.append(message)
            logging.getLogger("mlrkit").warning("WARNING: %s", message)

    def configure(self, cfg) -> None:
        """Receive the run's configuration, already checked by the loader (every section typed, only
        sections this method declares in ``config_sections``). Called by :func:`build_method` right
        after the constructor (which takes the ``method`` section's hyper-parameters); override to
        derive settings from other sections (call ``super().configure(cfg)`` first)."""
        self.cfg = cfg

    def prepare_data(self, data, *, device, progress: bool = True) -> None:
        """Called once before the task is described: feature methods on image datasets get
        frozen-encoder features attached (:meth:`attach_features`, cached in the FeatureStore)."""
        if self.input_kind == "features" and data.train.features is not None and self.uses_model \
                and self.cfg.model.name:
            raise ConfigError(f"dataset {data.dataset.name!r} has features: model.name {self.cfg.model.name!r} would "
                              "not be used (drop the model section, or use an image dataset)")
        if self.input_kind == "features" and data.train.features is None:
            self.attach_features({"train": data.train, "val": data.val, "test": data.test},
                                 device=device, progress=progress)

    def attach_features(self, splits: dict, *, device, progress: bool = True) -> None:
        """Set ``split.features`` for image splits (also used by ``predict`` on new images)."""
        raise NotImplementedError(f"{type(self).__name__} cannot make features from images")

    def check_data(self, class_names: list[str]) -> dict[str, Any]:
        """Checks before training, returned for ``run.json``; failures are loud warnings (:meth:`warn`).

        Methods built on class-name text embeddings get the VL-vocabulary check
        (:func:`mlrkit.vl.vocabulary.vocabulary_check`): can ``vl.model`` tell these classes apart?
        """
        if not self.uses_vl_text:
            return {}
        import logging

        from mlrkit.vl import load
        from mlrkit.vl.model import prompt_templates
        from mlrkit.vl.vocabulary import vocabulary_check

        get = getattr(self, "vl_model", None)
        vl = get() if callable(get) else load(self.cfg.vl.model, seed=self.cfg.seed).freeze()
        rep = vocabulary_check(vl, list(class_names), prompt_templates(self.cfg.vl.templates))
        if rep.passed:
            logging.getLogger("mlrkit").info("VL vocabulary check passed: %s", rep.message())
        else:
            self.warn(rep.message())
        return {"vl_vocabulary": rep.as_dict()}

    def run_info(self) -> dict[str, Any]:
        """Extra facts for ``run.json`` (e.g. pseudo-label quality)."""
        return {}

    def report_groups(self) -> int | None:
        """Groups of the grouped mAP report the method's config asks for (None: the dataset's choice)."""
        return None

    def build_model(self, task: TaskInfo) -> nn.Module:
        raise NotImplementedError

    def transform_summary(self) -> dict[str, str]:
        """The resolved ``train`` and ``eval`` image transforms (printed by ``train --dry-run``); call after
        :meth:`build_model`. Methods on fixed features have none."""
        return {"train": "none (fixed features)", "eval": "none (fixed features)"}

    def eval_transform(self):
        """What an image goes through before the model sees it at evaluation and prediction (PIL image ->
        normalised tensor); ``mlrkit export`` records it. None for methods on fixed features (their frozen
        encoder's transform is :mod:`mlrkit.engine.feature_source`'s)."""
        return None

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        """One-off initialisation from the training data (e.g. standardisation statistics).

        ``data`` is the run's :class:`~mlrkit.engine.run_data.RunData`; ``resuming`` is True when a
        checkpoint will overwrite the state right after (expensive initialisations may skip).
        """

    def training_step(self, model: nn.Module, batch: dict, loss_fn, epoch: int) -> StepOutput:
        """One step. Default: ``StepOutput(loss_fn(model(inputs), observed, index=, epoch=))``.

        Methods with several views or extra terms (SCPNet) override this and name their terms in
        :attr:`StepOutput.terms`; ``batch`` holds ``inputs``, ``observed`` (int8), ``targets`` (never
        to be used for training), ``index`` (row in the training split) and whatever the method's
        loader adds.
        """
        logits = model(batch["inputs"])
        return StepOutput(loss_fn(logits.float(), batch["observed"], index=batch["index"], epoch=epoch))

    def make_loader(self, split, observed, batch_size: int, *, train: bool, seed: int,
                    shard: tuple[int, int] = (0, 1)):
        """The batches of ``split`` this method trains/scores on, or None for the engine's default
        (whole-split feature tensors, for ``input_kind = "features"``).

        A loader yields dicts with ``inputs``, ``observed``, ``targets``, ``index``, shuffles from
        ``(seed, epoch)`` (``set_epoch``) when ``train``, and, with ``shard=(rank, world)``, yields the
        rank's slice of every *global* batch plus ``n_global`` (unless :attr:`loader_shards` is False:
        the engine then slices each global batch itself).
        """
        return None

    #: whether :meth:`make_loader` honours ``shard`` itself
    loader_shards: ClassVar[bool] = True

    def classifier_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters that get ``train.classifier_lr_mult`` (default: a ``classifier`` submodule); the
        learning-rate multiplier of a loss's own parameters is the loss's ``lr_mult``."""
        head = getattr(model, "classifier", None)
        return list(head.parameters()) if isinstance(head, nn.Module) else []


METHODS: Registry[type[Method]] = Registry("method")


METHOD_MODULES = ("fixed_features", "image", "vl_methods", "cam", "prompting", "scpnet")


def register_all() -> None:
    """Import every module of ``mlrkit.methods`` (each registers its methods in ``METHODS``):
    :data:`METHOD_MODULES` first, in that order, then any other module (a new method file needs no list)."""
    from mlrkit.registry import import_modules

    import_modules("mlrkit.methods", METHOD_MODULES, skip=("base",))


def method_class(name: str) -> type[Method]:
    """The registered class of method ``name`` (every method module imported first)."""
    register_all()
    return METHODS.get(name)


def build_method(cfg) -> Method:
    """Instantiate the configured method with its hyper-parameters (``cfg.method``; checked against
    the constructor by the config loader) and give it the run's configuration (:meth:`Method.configure`)."""
    register_all()
    from mlrkit.schema import check_params

    cls = METHODS.get(cfg.method.name)
    params = dict(cfg.method.params or {})
    # configs built without the loader (RunConfig(...)) are checked too
    check_params(params, cls.__init__, "method", component=cfg.method.name)
    method = cls(**params)
    method.configure(cfg)
    return method
