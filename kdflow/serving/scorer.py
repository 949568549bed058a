"""One scoring request, from validated rows to the answer and its log rows (no HTTP here).

For a request of ``n`` rows:

1. **Challenger split**: with probability ``challenger_fraction`` (per request) the ``@challenger`` version
   answers, when one exists and differs from the champion; otherwise the champion.
2. The served version gives calibrated probabilities ``p`` (what is logged: drift compares them with the
   reference profile).
3. **Confidence fallback** (teacher set, ``cascade.enabled``, the version's ``kdflow.cascade_threshold`` > 0):
   rows with ``max_k p_k < threshold`` (:func:`kdflow.selective.route`) are answered in the request by the
   teacher, ``softmax(teacher logits)`` (T = 1), ``answered_by = "teacher"``.
4. **Shadow sample**: each row independently with probability ``shadow_fraction`` is also scored by the teacher
   on a background worker, off the request path, and logged with its raw ``teacher_logits`` once scored; the
   other rows go to the log buffer at once. ``teacher_logits`` is filled for exactly this random sample (never
   for the fallback rows as such), so a flip rate measured on it is unbiased.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np

from kdflow.selective import route
from kdflow.serving.holder import ModelHolder, ServedVersion, Teacher, softmax
from kdflow.serving.logbuffer import LogBatch, LogBuffer

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """A scored request: the version that answered, the answer's probabilities, who answered each row."""

    served: ServedVersion
    request_ids: list[str]
    x: np.ndarray
    student_probs: np.ndarray
    answer: np.ndarray
    answered_by: list[str]
    shadow: np.ndarray  # (n,) bool: rows the teacher also scores off the request path


class ShadowWorker:
    """Scores shadow rows with the teacher on one background thread, then hands them to the log buffer."""

    def __init__(self, teacher: Teacher, buffer: LogBuffer):
        self.teacher = teacher
        self.buffer = buffer
        self.queue: queue.Queue[LogBatch | None] = queue.Queue()
        self.scored_rows = 0
        self._thread = threading.Thread(target=self._run, name="kdflow-shadow-teacher", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def submit(self, batch: LogBatch) -> None:
        """Queue rows to shadow-score (no work here)."""
        self.queue.put(batch)

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            try:
                batch.teacher_logits = self.teacher.logits(batch.x)
                self.scored_rows += len(batch)
            except Exception as exc:  # the rows are still logged, without teacher logits
                log.error("shadow teacher failed on %d row(s): %s", len(batch), exc)
            self.buffer.append(batch)

    def close(self) -> None:
        """Score everything queued, then stop (before the final log flush)."""
        self.queue.put(None)
        self._thread.join()


class Scorer:
    """Scores validated rows with the held versions, the teacher's fallback and shadow sample, and logs them."""

    def __init__(
        self,
        holder: ModelHolder,
        buffer: LogBuffer,
        teacher: Teacher | None = None,
        shadow_fraction: float = 0.0,
        cascade: bool = True,
        challenger_fraction: float = 0.0,
        threshold: float | None = None,
    ):
        self.holder = holder
        self.buffer = buffer
        self.teacher = teacher
        self.shadow_fraction = shadow_fraction if teacher is not None else 0.0
        self.cascade = cascade and teacher is not None
        self.challenger_fraction = challenger_fraction
        self.threshold = threshold  # overrides every version's own threshold when set
        self.shadow = ShadowWorker(teacher, buffer) if self.shadow_fraction > 0 else None
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count()
        self._random = random.Random()
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        self.rows_served = 0
        self.rows_by_teacher = 0

    def pick(self) -> ServedVersion:
        """The version answering the next request (challenger split)."""
        challenger = self.holder.challenger
        if challenger is not None and self.challenger_fraction > 0 and self._random.random() < self.challenger_fraction:
            return challenger
        return self.holder.champion

    def score(self, x: np.ndarray) -> Scored:
        """Score ``(n, d)`` float32 rows (already validated)."""
        served = self.pick()
        model = served.model
        probs = model.predict(x.reshape(len(x), *model.input_shape))
        answer, answered_by = probs, ["student"] * len(x)
        threshold = served.threshold if self.threshold is None else self.threshold
        if self.cascade and threshold > 0:
            fallback = route(probs.max(axis=1), threshold)
            if fallback.any():
                answer = probs.copy()
                answer[fallback] = softmax(self.teacher.logits(x[fallback]))
                answered_by = ["teacher" if f else "student" for f in fallback.tolist()]
                self.rows_by_teacher += int(fallback.sum())
        if self.shadow is not None:
            with self._rng_lock:
                shadow = self._rng.random(len(x)) < self.shadow_fraction
        else:
            shadow = np.zeros(len(x), dtype=bool)
        ids = [f"{self._prefix}-{next(self._counter):x}" for _ in range(len(x))]
        self.rows_served += len(x)
        return Scored(served, ids, x, probs, answer, answered_by, shadow)

    def log(self, scored: Scored, accepted_at: float, latency_ms: float) -> None:
        """Hand the rows to the log buffer (shadow rows through the teacher worker first)."""

        def batch(mask: np.ndarray | None) -> LogBatch:
            if mask is None:
                return LogBatch(accepted_at, scored.request_ids, scored.served.version, scored.x,
                                scored.student_probs, scored.answered_by, latency_ms)  # fmt: skip
            idx = np.flatnonzero(mask)
            return LogBatch(accepted_at, [scored.request_ids[i] for i in idx], scored.served.version, scored.x[idx],
                            scored.student_probs[idx], [scored.answered_by[i] for i in idx], latency_ms)  # fmt: skip

        if self.shadow is None or not scored.shadow.any():
            self.buffer.append(batch(None))
            return
        if not scored.shadow.all():
            self.buffer.append(batch(~scored.shadow))
        self.shadow.submit(batch(scored.shadow))

    def start(self) -> None:
        """Start the background threads: alias poller, log flusher, shadow worker."""
        self.holder.start()
        self.buffer.start()
        if self.shadow is not None:
            self.shadow.start()

    def close(self) -> int:
        """Stop polling, drain the shadow worker, flush the log. Returns the rows of the final flush."""
        t0 = time.perf_counter()
        self.holder.stop()
        if self.shadow is not None:
            self.shadow.close()
        rows = self.buffer.close()
        log.info("final log flush: %d row(s) in %.2f s (%d in total)", rows, time.perf_counter() - t0,
                 self.buffer.rows_written)  # fmt: skip
        return rows
