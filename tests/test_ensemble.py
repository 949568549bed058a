"""Several teachers: the combination math (exact), weights, and the streamed combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdflow.ensemble import TeacherLogits, combine_logits, combine_teachers, combined_profile, teacher_weights
from kdflow.losses import soft_kd_term
from kdflow.registry import ModelRef


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((z - z.max(axis=-1, keepdims=True)) / t)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 20.0])
def test_combined_logits_soften_to_the_weighted_mean_of_softened_probabilities(t):
    rng = np.random.default_rng(0)
    zs = [rng.normal(0, 5, (64, 10)) for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    z = combine_logits(zs, w, t)
    expected = sum(wi * _softmax(zi, t) for wi, zi in zip(w, zs))
    np.testing.assert_allclose(_softmax(z.astype(np.float64), t), expected, rtol=1e-5, atol=1e-7)


def test_one_teacher_passes_through_and_identical_teachers_change_nothing():
    z = np.random.default_rng(1).normal(0, 3, (8, 5)).astype(np.float32)
    assert combine_logits([z], [1.0], 4.0) is not None
    np.testing.assert_array_equal(combine_logits([z], [1.0], 4.0), z)
    np.testing.assert_allclose(_softmax(combine_logits([z, z], [0.5, 0.5], 4.0), 4.0), _softmax(z, 4.0), atol=1e-6)


def test_very_confident_teachers_stay_finite():
    a = np.array([[200.0, -200.0, 0.0]])
    b = np.array([[-200.0, 200.0, 0.0]])
    z = combine_logits([a, b], [0.5, 0.5], 1.0)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(_softmax(z.astype(np.float64), 1.0), [[0.5, 0.5, 0.0]], atol=1e-12)


def test_kd_loss_on_combined_logits_is_kl_to_the_mixture():
    rng = np.random.default_rng(2)
    t, w = 3.0, [0.25, 0.75]
    zs = [rng.normal(0, 4, (16, 6)) for _ in range(2)]
    zs_student = rng.normal(0, 2, (16, 6))
    mixture = sum(wi * _softmax(zi, t) for wi, zi in zip(w, zs))
    q = _softmax(zs_student, t)
    expected = t * t * np.mean(np.sum(mixture * (np.log(mixture) - np.log(q)), axis=1))
    got = soft_kd_term(torch.tensor(zs_student), torch.tensor(combine_logits(zs, w, t), dtype=torch.float64), t)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_weights():
    np.testing.assert_allclose(teacher_weights("mean", [0.9, 0.6]), [0.5, 0.5])
    np.testing.assert_allclose(teacher_weights("val_accuracy", [0.9, 0.6]), [0.6, 0.4])
    with pytest.raises(ValueError, match="not all 0"):
        teacher_weights("val_accuracy", [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown teacher weighting"):
        teacher_weights("median", [0.5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ in shape"):
        combine_logits([np.zeros((2, 3)), np.zeros((2, 4))], [0.5, 0.5], 1.0)


def test_streaming_source_combines_two_teachers_joined_by_id(tmp_path):
    """Two teachers' stores over the same rows (different shard sizes): each is joined by id, then mixed."""
    from kdflow.config import DataConfig
    from kdflow.data import to_frame, write_parquet
    from kdflow.logits import LogitStore
    from kdflow.store import LocalStore
    from kdflow.stream import StreamingSource

    rng = np.random.default_rng(3)
    n, c = 300, 4
    ids = np.arange(1000, 1000 + n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, c, n)
    path = write_parquet(to_frame(ids, x, y), tmp_path / "train.parquet", row_group_size=64)
    za, zb = rng.normal(0, 3, (n, c)).astype(np.float32), rng.normal(0, 3, (n, c)).astype(np.float32)
    stores = []
    for name, version, z, rows_per_shard in (("a", "1", za, 100), ("b", "7", zb, 70)):
        ls = LogitStore(LocalStore(tmp_path / "store"), f"logits/{name}")
        ls.precompute(
            ids,
            lambda rows, z=z: z[rows],
            rows_per_shard=rows_per_shard,
            teacher_uri=f"models:/{name}/{version}",
            teacher_name=name,
            teacher_version=version,
            data_fingerprint="f" * 64,
            dataset="train",
            clip_value=None,
        )
        stores.append(ls)
    cfg = DataConfig(train=str(path), val=str(path), test=str(path), num_classes=c)
    w, t = [0.3, 0.7], 2.0
    src = StreamingSource(
        [("train", str(path), stores, True)],
        cfg,
        ["1", "7"],
        {"train": "f" * 64},
        combine=lambda zs: combine_logits(zs, w, t),
    )
    seen = {}
    for xb, _, zb_ in src.batches(50, torch.Generator().manual_seed(0)):
        for row_x, row_z in zip(xb.numpy(), zb_.numpy()):
            seen[int(np.flatnonzero((x == row_x).all(axis=1))[0])] = row_z
    src.close()
    assert len(seen) == n
    rows = np.array(sorted(seen))
    got = np.stack([seen[i] for i in rows])
    # stored fp16, so compare the softened probabilities to the mixture of the fp16-rounded logits
    za16, zb16 = za.astype(np.float16).astype(np.float64), zb.astype(np.float16).astype(np.float64)
    expected = w[0] * _softmax(za16, t) + w[1] * _softmax(zb16, t)
    np.testing.assert_allclose(
        F.softmax(torch.tensor(got, dtype=torch.float64) / t, -1).numpy(), expected[rows], atol=1e-5
    )
    with pytest.raises(ValueError, match="combine"):
        StreamingSource([("train", str(path), stores, True)], cfg, ["1", "7"], {"train": "f" * 64})


def _profile(params: float, p50: float, p95: float, throughput: float) -> dict[str, float]:
    return {"params": params, "latency_p50_ms": p50, "latency_p95_ms": p95, "throughput": throughput, "threads": 2.0}


def test_combined_profile_adds_sizes_and_latencies_and_throughputs_harmonically():
    a, b = _profile(1000, 0.2, 0.3, 400.0), _profile(3000, 0.4, 0.5, 100.0)
    assert combined_profile([a]) == a and combined_profile([a]) is not a
    both = combined_profile([a, b])
    assert both["params"] == 4000 and both["latency_p95_ms"] == pytest.approx(0.8)
    assert both["throughput"] == pytest.approx(80.0)  # one request through both: 1 / (1/400 + 1/100)


def test_combine_teachers_weights_by_validation_accuracy_and_mixes_each_split():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 50)
    good = np.eye(4)[y] * 6 + rng.normal(0, 0.5, (50, 4))  # right on (nearly) every row
    poor = rng.normal(0, 1, (50, 4))
    refs = [ModelRef(f"models:/t{i}@champion", f"t{i}", str(i + 1), None) for i in range(2)]
    logits = [TeacherLogits(r, {"val": z, "test": z[:20]}) for r, z in zip(refs, (good, poor))]
    ens = combine_teachers(logits, [_profile(10, 1, 1, 10), _profile(30, 1, 2, 10)], y, "val_accuracy", 4.0)
    accs = [float((z.argmax(1) == y).mean()) for z in (good, poor)]
    assert ens.teachers == refs and ens.primary == refs[0] and ens.val_accuracies == accs
    assert ens.weights == pytest.approx([a / sum(accs) for a in accs]) and ens.weights[0] > ens.weights[1]
    np.testing.assert_allclose(ens.eval_logits["test"], combine_logits([good[:20], poor[:20]], ens.weights, 1.0))
    np.testing.assert_allclose(ens.train_logits["val"], combine_logits([good, poor], ens.weights, 4.0))
    assert ens.profile["params"] == 40 and [d["version"] for d in ens.describe()] == ["1", "2"]
    one = combine_teachers(logits[:1], [_profile(10, 1, 1, 10)], y, "mean", 4.0)
    np.testing.assert_array_equal(one.train_logits["val"], good.astype(np.float32))  # one teacher: its own logits
    with pytest.raises(ValueError, match="one profile per teacher"):
        combine_teachers(logits, [_profile(10, 1, 1, 10)], y, "mean", 4.0)
