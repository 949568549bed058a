"""Drift statistics on a production window against a student's reference profile, and what to do about it.

Every statistic is a :class:`Signal` (value, threshold, exceeded, a sentence saying why); one that cannot be computed
(too few labeled or shadow-scored rows) has value ``None`` and the reason. Thresholds: :class:`DriftConfig`. Checks
and decisions are plain JSON-able data: a flow stores them and passes the previous decision back to :func:`decide`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence

import numpy as np
from scipy.special import softmax
from scipy.stats import ks_2samp

from kdflow import metrics as eval_metrics
from kdflow.config import Correction, DriftAction, DriftConfig, DriftStatus
from kdflow.profile import ReferenceProfile, bin_counts, entropy, summarize_features

SIGNALS = (
    "psi_confidence",
    "psi_entropy",
    "psi_predicted_class",
    "features",
    "flip_rate",
    "psi_teacher_entropy",
    "accuracy",
    "estimated_accuracy",
    "deferral_rate",
)  # psi_teacher_entropy is informational (not a DriftSignal trigger); teacher_accuracy: kdflow.teacher_health
CALIBRATION_SIGNALS = ("estimated_accuracy", "psi_confidence", "psi_entropy")  # the probabilities, not the ranking


# ---------------------------------------------------------------------------------------------- statistics
def psi(expected_props: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = 1e-4) -> float:
    """Population Stability Index ``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` (Yurdakul 2018; common
    credit-scoring practice: < 0.1 stable, 0.1-0.25 moderate, > 0.25 large shift).

    ``actual`` may be counts or proportions (both normalised to sum 1), clipped at ``eps``: an empty bin gives a
    large but finite term."""
    e = np.asarray(expected_props, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape:
        raise ValueError(f"psi: need two 1-D arrays of one length, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi: empty distribution")
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_binned(profile_edges: list[float], profile_props: list[float], values: np.ndarray) -> float:
    """PSI of ``values`` binned on the reference's quantile edges against the reference proportions."""
    return psi(profile_props, bin_counts(profile_edges, values))


def correct_pvalues(pvalues: Sequence[float] | np.ndarray, method: Correction = "holm") -> np.ndarray:
    """Multiple-testing adjusted p-values, in the input order (reject where adjusted p < alpha).

    With p_(1) <= ... <= p_(m) sorted ascending (i is 1-based):
    - ``bonferroni``: ``min(1, m p_i)`` (family-wise error);
    - ``holm`` (Holm 1979, step-down FWER): ``max_{j<=i} min(1, (m - j + 1) p_(j))``;
    - ``bh`` (Benjamini & Hochberg 1995, false-discovery rate): ``min_{j>=i} min(1, m p_(j) / j)``."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    order = np.argsort(p, kind="stable")
    ranks = np.arange(1, m + 1)
    if method == "holm":
        adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, (m - ranks + 1) * p[order]))
    elif method == "bh":
        adjusted_sorted = np.minimum.accumulate(np.minimum(1.0, m * p[order] / ranks)[::-1])[::-1]
    else:
        raise ValueError(f"unknown p-value correction {method!r} (holm, bonferroni, bh)")
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted


@dataclass
class FeatureTest:
    """A two-sample Kolmogorov-Smirnov test of one feature summary, reference vs window."""

    name: str
    statistic: float  # KS D = sup |F_ref - F_window|
    pvalue: float
    adjusted_pvalue: float
    reference_mean: float
    window_mean: float
    drifted: bool  # adjusted p < alpha


def feature_tests(
    profile: ReferenceProfile, x_window: np.ndarray, alpha: float, method: Correction = "holm"
) -> list[FeatureTest]:
    """KS two-sample test (``scipy.stats.ks_2samp``) of each per-row feature summary of ``x_window`` against the
    reference subsample, p-values corrected across summaries with ``method`` (family-wise at ``alpha``)."""
    window = summarize_features(x_window)
    names = list(profile.features)
    results = [ks_2samp(profile.features[name].samples, window[name]) for name in names]
    adjusted = correct_pvalues([r.pvalue for r in results], method)
    return [
        FeatureTest(
            name,
            float(r.statistic),
            float(r.pvalue),
            float(adj),
            profile.features[name].mean,
            float(window[name].mean()),
            bool(adj < alpha),
        )
        for name, r, adj in zip(names, results, adjusted)
    ]


def estimate_accuracy(probs: np.ndarray) -> float:
    """Label-free accuracy estimate ``mean_i max_c p_ic`` from *calibrated* probabilities (confidence-based
    performance estimation, CBPE, as in NannyML). Valid only without concept drift: if P(y|x) changes, the
    model's confidence no longer tracks its accuracy."""
    return float(np.asarray(probs, dtype=np.float64).max(axis=1).mean())


def flip_rate(student_probs: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of rows where ``argmax`` of student and teacher differ (:func:`kdflow.metrics.flip_rate`;
    arg-max is the same on probabilities and logits)."""
    return eval_metrics.flip_rate(student_probs, teacher_logits)


def deferral_rate(answered_by: np.ndarray | Sequence[str | None]) -> float | None:
    """The share of rows the teacher answered (the confidence fallback): ``#{answered_by == "teacher"} / n``,
    a null counting as the student's answer (the inference-log format); None when no row records who answered
    (a server without the fallback)."""
    answered = np.asarray(answered_by, dtype=object)
    if not any(isinstance(a, str) for a in answered):
        return None
    return float(np.mean(answered == "teacher"))


# ---------------------------------------------------------------------------------------------- one window
@dataclass
class WindowData:
    """One production window of the served student.

    ``labels`` (n,): the true class where known, NaN or negative where unknown. ``teacher_logits`` (n, C):
    the teacher's logits for shadow-scored rows; other rows are NaN, or ``shadow_mask`` (n,) marks the
    shadow-scored rows explicitly. ``answered_by`` (n,): ``student``, ``teacher`` or None per row.
    """

    probs: np.ndarray  # (n, C) calibrated student probabilities, as served
    x: np.ndarray  # (n, d) inputs
    labels: np.ndarray | None = None
    teacher_logits: np.ndarray | None = None
    shadow_mask: np.ndarray | None = None
    answered_by: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """Rows in the window."""
        return len(self.probs)

    def labeled(self) -> np.ndarray:
        """Boolean mask (n,) of rows with a known label."""
        if self.labels is None:
            return np.zeros(self.n_rows, dtype=bool)
        y = np.asarray(self.labels, dtype=np.float64)
        return np.isfinite(y) & (y >= 0)

    def shadowed(self) -> np.ndarray:
        """Boolean mask (n,) of rows the teacher also scored."""
        if self.teacher_logits is None:
            return np.zeros(self.n_rows, dtype=bool)
        if self.shadow_mask is not None:
            return np.asarray(self.shadow_mask, dtype=bool)
        return np.isfinite(np.asarray(self.teacher_logits, dtype=np.float64)).all(axis=1)


@dataclass
class Signal:
    """One drift statistic: its value, its threshold, whether it was exceeded (None: not computed) and why."""

    name: str
    value: float | None
    threshold: float | None
    exceeded: bool | None
    detail: str


@dataclass
class DriftCheck:
    """Every signal on one window, and the window's status: ``ok``, ``drift`` (some signal exceeded) or
    ``cannot_decide`` (too few rows)."""

    status: DriftStatus
    reason: str
    n_rows: int
    n_labeled: int
    n_shadow: int
    signals: dict[str, Signal]
    features: list[FeatureTest] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # raw values: accuracy, estimated_accuracy, ...
    # Who served the checked days: rows per serving version (most first; empty when not known), the version
    # whose rows were checked, and a sentence saying which and why.
    served: dict[str, int] = field(default_factory=dict)
    checked_version: str | None = None
    scope: str = ""

    def exceeded(self) -> list[str]:
        """Names of the signals that exceeded their threshold."""
        return [name for name, s in self.signals.items() if s.exceeded]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftCheck:
        """Inverse of :meth:`to_dict`."""
        return cls(
            status=d["status"],
            reason=d.get("reason", ""),
            n_rows=int(d.get("n_rows", 0)),
            n_labeled=int(d.get("n_labeled", 0)),
            n_shadow=int(d.get("n_shadow", 0)),
            signals={k: Signal(**s) for k, s in d.get("signals", {}).items()},
            features=[FeatureTest(**f) for f in d.get("features", [])],
            metrics={k: float(v) for k, v in d.get("metrics", {}).items()},
            served={k: int(v) for k, v in d.get("served", {}).items()},
            checked_version=d.get("checked_version"),
            scope=d.get("scope", ""),
        )


def _above(name: str, value: float, threshold: float, what: str) -> Signal:
    """A signal that is exceeded when ``value > threshold``."""
    exceeded = value > threshold
    return Signal(
        name,
        float(value),
        float(threshold),
        bool(exceeded),
        f"{what} {value:.4f} {'>' if exceeded else '<='} {threshold:g}",
    )


def _output_signals(profile: ReferenceProfile, probs: np.ndarray, cfg: DriftConfig) -> list[Signal]:
    """PSI of the student's confidence, entropy (reference quantile bins) and predicted-class frequencies."""
    conf, ent = profile.confidence_bins, profile.entropy_bins
    class_counts = np.bincount(probs.argmax(axis=1), minlength=profile.num_classes)
    return [
        _above(
            "psi_confidence",
            psi_binned(conf.edges, conf.props, probs.max(axis=1)),
            cfg.psi_threshold,
            f"PSI of top-label confidence ({len(conf.props)} reference quantile bins)",
        ),
        _above(
            "psi_entropy",
            psi_binned(ent.edges, ent.props, entropy(probs)),
            cfg.psi_threshold,
            "PSI of prediction entropy",
        ),
        _above(
            "psi_predicted_class",
            psi(profile.predicted_class_freq, class_counts),
            cfg.psi_threshold,
            "PSI of predicted-class frequencies",
        ),
    ]


def _feature_signal(tests: list[FeatureTest], cfg: DriftConfig) -> Signal:
    """Exceeded when any feature summary's corrected p-value is below ``feature_alpha``; value: the smallest."""
    min_p = min(t.adjusted_pvalue for t in tests)
    drifted = [f"{t.name} (KS D={t.statistic:.3f}, adjusted p={t.adjusted_pvalue:.2g})" for t in tests if t.drifted]
    return Signal(
        "features",
        min_p,
        cfg.feature_alpha,
        bool(drifted),
        f"feature summaries below alpha={cfg.feature_alpha:g} after {cfg.correction}: "
        + (", ".join(drifted) if drifted else f"none (smallest adjusted p {min_p:.2g})"),
    )


def _teacher_signals(
    profile: ReferenceProfile, probs: np.ndarray, window: WindowData, shadowed: np.ndarray, cfg: DriftConfig
) -> list[Signal]:
    """Flip rate and PSI of the teacher's entropy (informational) on the shadow-scored rows."""
    n_shadow = int(shadowed.sum())
    if n_shadow < cfg.min_shadow_rows:
        reason = f"{n_shadow} shadow-scored rows, fewer than min_shadow_rows={cfg.min_shadow_rows}"
        return [
            Signal("flip_rate", None, cfg.max_flip_rate, None, reason),
            Signal("psi_teacher_entropy", None, cfg.psi_threshold, None, reason),
        ]
    teacher = np.asarray(window.teacher_logits, dtype=np.float64)[shadowed]
    signals = [
        _above(
            "flip_rate",
            flip_rate(probs[shadowed], teacher),
            cfg.max_flip_rate,
            f"teacher-student flip rate on {n_shadow} shadow rows",
        )
    ]
    bins = profile.teacher_entropy_bins
    if bins is None:
        signals.append(
            Signal("psi_teacher_entropy", None, cfg.psi_threshold, None, "the reference profile has no teacher entropy")
        )
    else:
        signals.append(
            _above(
                "psi_teacher_entropy",
                psi_binned(bins.edges, bins.props, entropy(softmax(teacher, axis=1))),
                cfg.psi_threshold,
                "PSI of teacher entropy on shadow rows",
            )
        )
    return signals


def _accuracy_signal(profile: ReferenceProfile, window: WindowData, cfg: DriftConfig) -> tuple[Signal, float | None]:
    """Drop of the labeled accuracy of ``window`` below the reference accuracy (signal value: the drop), and that
    accuracy (None when not computed)."""
    labeled = window.labeled()
    n_labeled = int(labeled.sum())
    if profile.accuracy is None:
        return Signal("accuracy", None, cfg.max_accuracy_drop, None, "the reference profile has no accuracy"), None
    if n_labeled < cfg.min_labeled_rows:
        return Signal(
            "accuracy",
            None,
            cfg.max_accuracy_drop,
            None,
            f"{n_labeled} labeled rows, fewer than min_labeled_rows={cfg.min_labeled_rows}",
        ), None
    labels = np.asarray(window.labels, dtype=np.float64)[labeled].astype(np.int64)
    acc = eval_metrics.accuracy(np.asarray(window.probs, dtype=np.float64)[labeled], labels)
    return _above(
        "accuracy",
        profile.accuracy - acc,
        cfg.max_accuracy_drop,
        f"accuracy {acc:.4f} on {n_labeled} labeled rows vs reference {profile.accuracy:.4f}: drop",
    ), acc


def _estimated_accuracy_signal(profile: ReferenceProfile, probs: np.ndarray, cfg: DriftConfig) -> Signal:
    """Drop of the CBPE estimate (mean calibrated confidence) below the reference accuracy."""
    # Without reference labels, CBPE falls back to the reference mean confidence (the same estimate there).
    ref_name, ref = (
        ("reference accuracy", profile.accuracy)
        if profile.accuracy is not None
        else ("reference mean confidence", profile.mean_confidence)
    )
    estimated = estimate_accuracy(probs)
    return _above(
        "estimated_accuracy",
        ref - estimated,
        cfg.max_estimated_accuracy_drop,
        f"estimated accuracy (mean calibrated confidence) {estimated:.4f} vs {ref_name} {ref:.4f}: drop",
    )


def _deferral_signal(window: WindowData, reference: float | None, cfg: DriftConfig) -> tuple[Signal, float | None]:
    """Rise of the production deferral rate (:func:`deferral_rate`) above the version's validation deferral rate
    ``reference`` (signal value: the rise), and that rate (None when not computed)."""
    threshold = cfg.max_deferral_rate_increase
    rate = None if window.answered_by is None else deferral_rate(window.answered_by)
    if rate is None:
        return Signal(
            "deferral_rate", None, threshold, None, "no row records answered_by: no confidence fallback"
        ), None
    if reference is None:
        why = "the version has no validation deferral rate (tag kdflow.cascade_deferral_rate)"
        return Signal("deferral_rate", None, threshold, None, why), rate
    teacher = int(np.sum(np.asarray(window.answered_by, dtype=object) == "teacher"))
    return _above(
        "deferral_rate",
        rate - reference,
        threshold,
        f"deferral rate {rate:.4f} ({teacher} of {window.n_rows} rows answered by the teacher) vs validation "
        f"{reference:.4f}: rise",
    ), rate


def check_window(
    profile: ReferenceProfile,
    window: WindowData,
    cfg: DriftConfig,
    labeled_window: WindowData | None = None,
    deferral_reference: float | None = None,
) -> DriftCheck:
    """Every drift statistic of ``window`` against ``profile`` with ``cfg``'s thresholds.

    ``labeled_window``: where the accuracy signal looks for labeled rows instead of ``window`` — labels
    arrive late, so a flow passes the window extended back by ``cfg.label_lag_days``. ``deferral_reference``:
    the version's validation deferral rate (tag ``kdflow.cascade_deferral_rate``), for the deferral-rate rise
    on rows that record ``answered_by``.

    PSI of confidence, entropy (reference quantile bins) and predicted-class frequencies; KS tests of feature
    summaries; teacher-student flip rate and teacher-entropy PSI (informational) on >= ``min_shadow_rows``
    shadow rows; accuracy drop vs the reference on >= ``min_labeled_rows`` labeled rows; CBPE
    estimated-accuracy drop; deferral-rate rise. Fewer than ``min_rows`` rows: ``cannot_decide``, and no signal
    is computed.
    """
    labeled, shadowed = window.labeled(), window.shadowed()
    counts = {"n_rows": window.n_rows, "n_labeled": int(labeled.sum()), "n_shadow": int(shadowed.sum())}
    if window.n_rows < cfg.min_rows:
        reason = f"cannot decide: the window has {window.n_rows} rows, fewer than min_rows={cfg.min_rows}"
        return DriftCheck(
            "cannot_decide",
            reason,
            **counts,
            signals={name: Signal(name, None, None, None, reason) for name in SIGNALS},
        )
    probs = np.asarray(window.probs, dtype=np.float64)
    width = int(np.prod(np.shape(window.x)[1:]))
    if (
        probs.ndim != 2
        or probs.shape[1] != profile.num_classes
        or len(window.x) != len(probs)
        or width != profile.num_features
    ):
        raise ValueError(
            f"check_window: probs {probs.shape} and x {np.shape(window.x)} do not match the profile "
            f"({profile.num_classes} classes, {profile.num_features} features)"
        )
    if window.teacher_logits is not None and np.shape(window.teacher_logits) != probs.shape:
        raise ValueError(f"check_window: teacher logits {np.shape(window.teacher_logits)} != probs {probs.shape}")

    tests = feature_tests(profile, window.x, cfg.feature_alpha, cfg.correction)
    labels_from = labeled_window if labeled_window is not None else window
    counts["n_labeled"] = int(labels_from.labeled().sum())
    accuracy_signal, acc = _accuracy_signal(profile, labels_from, cfg)
    deferral_signal, deferral = _deferral_signal(window, deferral_reference, cfg)
    signals = [
        *_output_signals(profile, probs, cfg),
        _feature_signal(tests, cfg),
        *_teacher_signals(profile, probs, window, shadowed, cfg),
        accuracy_signal,
        _estimated_accuracy_signal(profile, probs, cfg),
        deferral_signal,
    ]
    exceeded = [s for s in signals if s.exceeded]
    reason = (
        "drift: " + "; ".join(f"{s.name}: {s.detail}" for s in exceeded)
        if exceeded
        else "no signal exceeded its threshold"
    )
    missing = [f"{s.name} ({s.detail})" for s in signals if s.value is None]
    if missing:
        reason += "; not computed: " + "; ".join(missing)
    window_metrics = {"estimated_accuracy": estimate_accuracy(probs)}
    if acc is not None:
        window_metrics["accuracy"] = acc
    if deferral is not None:
        window_metrics["deferral_rate"] = deferral
    return DriftCheck(
        "drift" if exceeded else "ok",
        reason,
        **counts,
        signals={s.name: s for s in signals},
        features=tests,
        metrics=window_metrics,
    )


# ---------------------------------------------------------------------------------------------- decision
@dataclass
class Decision:
    """What to do after a check — ``refresh_teacher``, ``retrain``, ``recalibrate``, ``none`` or ``cannot_decide``
    — and why.

    ``consecutive`` and ``since`` carry each signal's streak from one check to the next (the flow stores the
    decision and passes it to the next check's :func:`decide`), so a streak of any length has a known start."""

    action: DriftAction
    reason: str
    triggered: list[str]  # trigger signals exceeded on enough consecutive checks (even when cooling down)
    consecutive: dict[str, int]  # per signal: consecutive checks, ending with the current one, that exceeded it
    cooldown_until: str | None = None  # ISO time, when a retrain or refresh was suppressed by its cool-down
    since: dict[str, str] = field(default_factory=dict)  # per signal in a streak: ISO start of its first window

    @property
    def episode_start(self) -> datetime | None:
        """Start of the earliest window of the triggering streaks: where the drift this decision answers began
        (None when nothing triggered)."""
        starts = [datetime.fromisoformat(self.since[name]) for name in self.triggered if name in self.since]
        return min(starts) if starts else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        """Inverse of :meth:`to_dict`; a decision stored before ``since`` existed restores with no streak starts."""
        return cls(
            action=d["action"],
            reason=d.get("reason", ""),
            triggered=list(d.get("triggered", [])),
            consecutive={k: int(v) for k, v in d.get("consecutive", {}).items()},
            cooldown_until=d.get("cooldown_until"),
            since=dict(d.get("since", {})),
        )


def _streaks(
    previous: Decision | None, current: DriftCheck, window_start: str
) -> tuple[dict[str, int], dict[str, str]]:
    """Each signal's streak after ``current``: one more than before if exceeded again, else 0; a new streak
    starts at ``window_start``. (A previous decision stored without ``since`` keeps its counts; its streaks
    are then dated from the current window.)"""
    consecutive, since = {}, {}
    for name, signal in current.signals.items():
        if not signal.exceeded:
            consecutive[name] = 0
            continue
        before = previous.consecutive.get(name, 0) if previous is not None else 0
        consecutive[name] = before + 1
        since[name] = previous.since.get(name, window_start) if before else window_start
    return consecutive, since


def _until(last: datetime | None, days: float, now: datetime) -> datetime | None:
    """The end of the cool-down of ``days`` after ``last`` while ``now`` is inside it, else None."""
    until = None if last is None else last + timedelta(days=days)
    return until if until is not None and now < until else None


def decide(
    previous: Decision | dict[str, Any] | None,
    current: DriftCheck,
    cfg: DriftConfig,
    last_retrain_at: datetime | None,
    now: datetime,
    last_refresh_at: datetime | None = None,
) -> Decision:
    """The action after ``current``, the check of the window ``[now - window_days, now)``.

    ``previous`` is the decision of the champion version's previous check (a Decision or its dict; None for
    the first). A signal's streak counts the consecutive checks that exceeded it (``cannot_decide`` breaks
    every streak). A signal in ``cfg.trigger_on`` whose streak reaches ``consecutive_windows`` triggers:

    - ``teacher_accuracy``: ``refresh_teacher`` (the teacher degraded: distilling from it again is pointless);
    - any other: ``retrain`` (the student drifted from a still-good teacher), but ``recalibrate`` (refit the
      champion's temperature on the traffic since the streak began) when only :data:`CALIBRATION_SIGNALS`
      triggered and the labeled accuracy held (computed, not exceeded): only the probabilities are off;
    - within ``teacher_cooldown_days`` of ``last_refresh_at`` (a refresh that trained) if the teacher streak began
      before it (a streak begun after it is about the refreshed teacher), or ``cooldown_days`` of the last retrain
      or refresh (a retrain): ``recalibrate`` if ``recalibrate_during_cooldown``, else ``none``, saying what was
      suppressed. Times: all naive or all aware."""
    if isinstance(previous, dict):
        previous = Decision.from_dict(previous)
    if current.status == "cannot_decide":
        return Decision("cannot_decide", current.reason, [], {name: 0 for name in current.signals})
    consecutive, since = _streaks(previous, current, (now - timedelta(days=cfg.window_days)).isoformat())
    need = cfg.consecutive_windows
    triggered = [name for name in cfg.trigger_on if consecutive.get(name, 0) >= need]
    if not triggered:
        pending = [
            f"{name} ({current.signals[name].detail}; {consecutive[name]} of {need} consecutive checks)"
            for name in cfg.trigger_on
            if consecutive.get(name, 0) > 0
        ]
        reason = f"no action: no trigger signal exceeded its threshold on {need} consecutive checks" + (
            "; so far: " + "; ".join(pending) if pending else ""
        )
        return Decision("none", reason, [], consecutive, since=since)
    why = "; ".join(
        f"{name}: {current.signals[name].detail} on {consecutive[name]} consecutive checks "
        f"(needs {need}, since {since[name]})"
        for name in triggered
    )
    accuracy = current.signals.get("accuracy")
    if "teacher_accuracy" in triggered:  # a streak begun after the last refresh is about the refreshed teacher
        begun = datetime.fromisoformat(since["teacher_accuracy"])
        last = last_refresh_at if last_refresh_at is not None and begun < last_refresh_at else None
        action, what, days = "refresh_teacher", "teacher refresh", cfg.teacher_cooldown_days
    elif set(triggered) <= set(CALIBRATION_SIGNALS) and accuracy is not None and accuracy.exceeded is False:
        reason = f"recalibrate: only the probabilities are off (labeled {accuracy.detail}); {why}"
        return Decision("recalibrate", reason, triggered, consecutive, since=since)
    else:
        last = max((t for t in (last_retrain_at, last_refresh_at) if t is not None), default=None)
        action, what, days = "retrain", "retrain" if last == last_retrain_at else "teacher refresh", cfg.cooldown_days
    until = _until(last, days, now)
    if until is None:
        return Decision(action, f"{action}: {why}", triggered, consecutive, since=since)
    cooling = (
        f"{action} suppressed: cool-down after the {what} at {last.isoformat()} lasts until {until.isoformat()} "
        f"({days:g} days); would trigger on {why}"
    )
    if cfg.recalibrate_during_cooldown:
        return Decision("recalibrate", f"recalibrate: {cooling}", triggered, consecutive, until.isoformat(), since)
    return Decision("none", cooling, triggered, consecutive, until.isoformat(), since)
