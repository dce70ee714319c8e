"""The config sections of the trainer's optional steps, read by every method: ``mix`` (LogicMix /
MixUp-PME, :mod:`mlrkit.engine.mixing`) and ``cft`` (category-wise fine-tuning, :mod:`mlrkit.engine.cft`).

Typed like every section (:mod:`mlrkit.schema`); :class:`mlrkit.methods.Method` declares both for all
methods. Whether a method can honour them (a single-view training step; a linear classifier) is
checked when the run is set up, before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mlrkit.errors import ConfigError
from mlrkit.schema import Section, setting

#: the keys each mix reads (another key is an error, not silently unused)
MIX_KEYS = {"none": ("name",), "logicmix": ("name", "p", "k_min", "k_max"), "mixup": ("name", "alpha")}


@dataclass
class MixSection(Section):
    """``mix``: a mixing augmentation adapted to partial labels (defaults: mlcpl's)."""

    section_name: ClassVar[str] = "mix"
    name: str = setting("none", choices=tuple(MIX_KEYS), help="none | logicmix | mixup (MixUp-PME)")
    p: float = setting(1.0, min=0.0, max=1.0, help="logicmix: probability that a sample is mixed")
    k_min: int = setting(2, min=2, help="logicmix: fewest samples in a mix")
    k_max: int = setting(3, min=2, help="logicmix: most samples in a mix")
    alpha: float = setting(0.75, min=0.0, max=1.0, help="mixup: lambda ~ U(alpha, 1)")

    @classmethod
    def parse(cls, d: Any, where: str | None = None) -> MixSection:
        where = cls.section_name if where is None else where
        if isinstance(d, dict):
            name = d.get("name", "none")
            if name in MIX_KEYS:
                for key in d:
                    if key in cls.keys() and key not in MIX_KEYS[name]:
                        raise ConfigError(f"{where}.{key} is not read by mix {name!r} (it reads: "
                                          f"{', '.join(MIX_KEYS[name])})")
        return super().parse(d, where)  # type: ignore[return-value]

    def check(self, where: str) -> None:
        if self.k_min > self.k_max:
            raise ConfigError(f"{where}: k_min ({self.k_min}) must be <= k_max ({self.k_max})")


@dataclass
class CFTSection(Section):
    """``cft``: category-wise fine-tuning of the linear head after training (defaults: mlcpl's)."""

    section_name: ClassVar[str] = "cft"
    variant: str = setting("bp", choices=("none", "bp", "ga"), help="bp (back-propagation) | ga (genetic algorithm)")
    epochs: int = setting(30, min=1, help="epochs (bp) or generations (ga) per class")
    patience: int = setting(10, min=1, help="stop a class after this many epochs without a better validation AP")
    loss: str = setting("asl", help="bp: the registered loss minimised on the known labels")
    lr: float = setting(1e-4, min=0.0, min_open=True, help="bp: Adam's learning rate")
    batch_size: int = setting(32, min=1, help="bp: mini-batch size")
    population: int = setting(50, min=2, help="ga: population size")
    crossover: float = setting(0.2, min=0.0, max=1.0, help="ga: probability of a gene from the first parent")
    mutation_p: float = setting(0.5, min=0.0, max=1.0, help="ga: probability that an offspring mutates")
    mutation_genes: float = setting(1.0, min=0.0, max=1.0, help="ga: probability that a gene of it mutates")
    mutation_range: float = setting(1e-3, min=0.0, help="ga: a mutation adds U(-r, r)")
    elitism: int = setting(1, min=0, help="ga: best individuals kept unchanged")

    def check(self, where: str) -> None:
        if self.elitism >= self.population:
            raise ConfigError(f"{where}.elitism must be < population ({self.population}), got {self.elitism}")
        if self.variant == "bp":
            import mlrkit.losses.zoo  # noqa: F401 - registers every loss
            from mlrkit.errors import MlrkitError
            from mlrkit.losses import LOSSES

            try:
                LOSSES.entry(self.loss)
            except MlrkitError as e:
                raise ConfigError(f"{where}.loss: {e}") from None


#: the sections every method reads
TRAINING_SECTIONS: dict[str, type] = {"mix": MixSection, "cft": CFTSection}
