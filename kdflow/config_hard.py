"""The ``hard_examples:`` section of the distillation config (re-exported by :mod:`kdflow.config`): which of the
teacher's most uncertain training rows the student sees more of, and how (:mod:`kdflow.hard_examples`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdflow.config_base import LossKind, _Strict

HardExampleMode = Literal["oversample", "weight"]  # kdflow.hard_examples.HardExampleSelection.mode
HardExampleClasses = Literal["all", "rare"]
HardExampleSplit = Literal["train", "transfer", "recent"]  # the student's training splits


class HardExamplesConfig(_Strict):
    """Emphasise the transfer rows the teacher is least sure of ("augmenting the transfer set with the teacher's
    high-entropy examples", for rare classes when ``classes: rare``).

    Candidates are the rows of ``splits`` the run has (``recent``: a retrain's production traffic). Each row's
    entropy ``H = -sum_c p_c ln p_c`` of ``p = softmax(z_t)`` at T=1 is read from the stored teacher logits (the
    teacher never runs). With ``classes: rare`` only rows whose class (the label on ``train`` rows, else the
    teacher's top class) has a train-label share below ``rare_share`` are eligible. The top ``fraction`` of the
    eligible rows by entropy (``ceil(fraction * eligible)`` rows) are the hard examples; ``mode: oversample``
    repeats each ``factor`` times per epoch (a whole number), ``mode: weight`` multiplies its loss by ``factor``
    (per-batch weighted mean)."""

    enabled: bool = False
    fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    mode: HardExampleMode = "oversample"
    factor: float = Field(default=3.0, ge=1.0)
    classes: HardExampleClasses = "all"
    rare_share: float = Field(default=0.05, gt=0.0, le=1.0)  # rare: a class's share of the train labels below this
    splits: list[HardExampleSplit] = Field(default_factory=lambda: ["transfer", "recent"], min_length=1)

    @model_validator(mode="after")
    def _whole_copies(self) -> "HardExamplesConfig":
        if self.mode == "oversample" and self.factor != int(self.factor):
            raise ValueError(
                f"hard_examples.factor must be a whole number of copies in mode oversample, got {self.factor:g} "
                "(mode weight takes any factor >= 1)"
            )
        return self


def check_hard_examples(hard: HardExamplesConfig, loss: LossKind, has_transfer: bool, has_recent: bool) -> None:
    """Raise ``ValueError`` when enabled hard examples cannot apply: ``mode: weight`` needs a per-row loss (``dist``
    compares whole batches: its intra-class relation spans the rows), and ``splits`` must name a split the run has
    (``train`` always; ``transfer`` with ``data.transfer``; ``recent`` with ``data.recent``, set by a retrain)."""
    if not hard.enabled:
        return
    if hard.mode == "weight" and loss == "dist":
        raise ValueError(
            "hard_examples.mode weight needs a per-row loss: train.loss kd or dkd, got dist "
            "(use hard_examples.mode oversample with dist)"
        )
    present = {"train", *(["transfer"] if has_transfer else []), *(["recent"] if has_recent else [])}
    if not present & set(hard.splits):
        raise ValueError(
            f"hard_examples.splits {list(hard.splits)} names no split of this run: data.transfer is not set "
            "(set it, or add train to hard_examples.splits)"
        )
