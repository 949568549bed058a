"""Configuration of the distillation methods beyond one student from a registered teacher: born-again generations
(``self_distill:``) and online (mutual) distillation (``online:``), sections of :class:`kdflow.config.DistillConfig`;
importable from :mod:`kdflow.config` too."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from kdflow.config_base import ConfigError, ModelSpec, TeacherGateConfig, _Strict

if TYPE_CHECKING:  # only for hints: kdflow.config imports this module
    from kdflow.config import DistillConfig

GenerationSelect = Literal["best_val", "last"]  # which born-again generation is gated and promoted


class SelfDistillConfig(_Strict):
    """Born-again networks (Furlanello et al. 2018, "Born-Again Neural Networks", ICML): ``generations`` students of
    the ``student`` architecture trained one after the other (:mod:`kdflow.self_distill`).

    ``generations`` counts students: ``1`` (the default) is plain distillation, nothing more. Generation 1 is the
    normal distilled student (from ``teacher_uri``); generation k+1 learns from generation k's logits, stored in the
    logit store like a teacher's (``logits/<registry.student_name>/v<generation k's version>/...``), with the same
    ``train`` settings and loss and seed ``train.seed + k`` (a fresh initialisation, as in the paper).

    Every generation is calibrated, evaluated against the registered teacher, SLA-checked and registered with its
    lineage (version tags ``kdflow.generation``, ``kdflow.parent_version``, ``kdflow.parent_run_id``); only the one
    ``select`` names (``best_val``: the highest validation accuracy of its served model, the earliest on a tie, never
    a test figure; ``last``: the final generation) is compared with the champion, becomes ``challenger`` and, when
    the gate passes, ``champion``."""

    generations: int = Field(default=1, ge=1)
    select: GenerationSelect = "best_val"


class OnlineConfig(_Strict):
    """Online (mutual) distillation for a domain with no teacher yet (Zhang et al. 2018, "Deep Mutual Learning",
    CVPR; :mod:`kdflow.mutual`): the ``teacher`` architecture and the ``student`` learn together from the labeled
    train split, each from the labels and ``beta`` times its KL divergence toward the other's (detached)
    prediction, the teacher at ``teacher_lr_ratio`` times ``train.lr``.

    The student then goes through the usual calibration, SLA gate, registration and promotion; the co-trained
    teacher is registered as the model ``teacher_uri`` names (``models:/<name>@<alias>``: ``challenger``, and the
    alias when it passes ``teacher_gate``), its logits stored, so later distill runs and drift checks use it."""

    teacher: ModelSpec
    beta: float = Field(default=0.3, ge=0.0)  # the seed's range: 0.1-0.5; DML itself uses 1
    teacher_lr_ratio: float = Field(default=0.1, gt=0.0)
    teacher_gate: TeacherGateConfig = TeacherGateConfig()


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")


def online_teacher(cfg: DistillConfig, source: str = "config") -> tuple[OnlineConfig, str, str]:
    """``(cfg.online, teacher name, alias)`` for online distillation; one :class:`ConfigError` naming the key when
    the config cannot run it: no ``online:`` section, a ``teacher_uri`` pinned to a version (the co-trained teacher
    is registered under the URI's name and gets its alias), extra teachers, or born-again generations."""
    if cfg.online is None:
        raise ConfigError(f"{source}: online distillation needs an 'online:' section (at least online.teacher)")
    match = _ALIAS_URI.match(cfg.teacher_uri)
    if match is None:
        raise ConfigError(
            f"{source}: teacher_uri must be models:/<name>@<alias> for online distillation (the co-trained teacher is "
            f"registered as <name> and gets <alias> when it passes online.teacher_gate), got {cfg.teacher_uri!r}"
        )
    if cfg.extra_teachers:
        raise ConfigError(f"{source}: extra_teachers must be empty for online distillation (one co-trained teacher)")
    if cfg.self_distill.generations != 1:
        raise ConfigError(
            f"{source}: self_distill.generations must be 1 for online distillation, got {cfg.self_distill.generations}"
        )
    return cfg.online, match["name"], match["alias"]
