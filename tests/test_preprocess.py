"""Input preprocessing fitted on train and stored in the model: exact statistics, the wrapper every architecture
gets, and real tabular data (scikit-learn's bundled tables, named columns at raw scales) training to a teacher
within a few points of a standardised logistic regression on the same split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdflow.config import DataConfig, FeatureSpec, ModelSpec, TrainConfig
from kdflow.data import dataset_from_frame, read_frame
from kdflow.generators import sklearn_table_columns, write_sklearn_table
from kdflow.models import build_for_training, build_model
from kdflow.preprocess import Preprocessed, Standardize, feature_statistics
from kdflow.train import predict_logits, seed_everything, train_classifier


def test_standard_statistics_are_mean_and_population_std_with_constant_features_kept():
    x = np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]])
    center, scale = feature_statistics(x, "standard")
    np.testing.assert_array_equal(center, [2.0, 20.0, 5.0])
    np.testing.assert_array_equal(scale, [1.0, 10.0, 1.0])  # the constant feature keeps scale 1


def test_robust_statistics_are_median_and_iqr_with_std_for_sparse_features():
    x = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [4.0, 0.0, 0.0], [100.0, 0.0, 10.0]])
    center, scale = feature_statistics(x, "robust")
    np.testing.assert_array_equal(center, [3.0, 0.0, 0.0])
    # q75 - q25 = 4 - 2; the constant column keeps 1; the sparse one (IQR 0) takes its std: sqrt(80 / 5) = 4
    np.testing.assert_array_equal(scale, [2.0, 1.0, 4.0])


def test_statistics_match_scikit_learn_scalers_per_feature_of_image_rows():
    from sklearn.preprocessing import RobustScaler, StandardScaler

    x = np.random.default_rng(0).lognormal(size=(200, 2, 3)) * np.array([1.0, 100.0, 0.01])
    flat = x.reshape(200, -1)
    for kind, scaler, attrs in (("standard", StandardScaler(), ("mean_", "scale_")),
                                ("robust", RobustScaler(), ("center_", "scale_"))):  # fmt: skip
        scaler.fit(flat)
        center, scale = feature_statistics(x, kind)
        assert center.shape == scale.shape == (2, 3)
        np.testing.assert_allclose(center.ravel(), getattr(scaler, attrs[0]), rtol=1e-6)
        np.testing.assert_allclose(scale.ravel(), getattr(scaler, attrs[1]), rtol=1e-6)


def test_non_finite_training_inputs_are_a_clear_error():
    with pytest.raises(ValueError, match="NaN or infinite"):
        feature_statistics(np.array([[1.0], [np.nan]]), "standard")


def test_every_architecture_is_wrapped_and_fitted_on_train():
    x = np.random.default_rng(1).normal(5.0, 3.0, size=(64, 12)).astype(np.float32)
    for spec in (ModelSpec(arch="mlp", args={"width": 8, "depth": 1}),
                 ModelSpec(arch="tests.user_models:build_linear", args={"bias": False})):  # fmt: skip
        model = build_for_training(spec, x, 3)
        assert isinstance(model, Preprocessed) and model.preprocess.kind == spec.preprocess == "robust"
        assert {"preprocess.center", "preprocess.scale"} <= set(model.state_dict())
        q25, median, q75 = np.percentile(x, [25, 50, 75], axis=0)
        np.testing.assert_allclose(model.preprocess.center.numpy(), median, rtol=1e-5)
        xt = torch.from_numpy(x)
        expected = model.net((xt - torch.from_numpy(median).float()) / torch.from_numpy(q75 - q25).float())
        torch.testing.assert_close(model(xt), expected, rtol=1e-4, atol=1e-5)
    bare = build_model("mlp", {"width": 8}, (12,), 3, "none")
    assert not isinstance(bare, Preprocessed) and "preprocess.center" not in bare.state_dict()
    with pytest.raises(ValueError, match="expects rows of shape"):
        Standardize((4,)).fit(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["breast_cancer", "wine", "digits"])
def test_raw_tabular_teacher_is_within_a_few_points_of_standardised_logistic_regression(name, tmp_path):
    """The packaged teacher's optimiser settings with an MLP, on named columns at raw scales, no hand
    standardising; the baseline is scikit-learn's StandardScaler + LogisticRegression on the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    paths = write_sklearn_table(tmp_path, name)
    columns = sklearn_table_columns(name)
    num_classes = {"breast_cancer": 2, "wine": 3, "digits": 10}[name]
    cfg = DataConfig(train=str(paths["train"]), val=str(paths["val"]), test=str(paths["test"]),
                     num_classes=num_classes, features=FeatureSpec(columns=columns))  # fmt: skip
    train, val, test = (dataset_from_frame(read_frame(str(paths[s])), s, str(paths[s]), cfg, True)
                        for s in ("train", "val", "test"))  # fmt: skip
    assert train.x.shape[1] == len(columns) and np.ptp(train.x.max(0)) > 10  # raw scales differ widely
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train.x, train.y)
    baseline_acc = float(baseline.score(test.x, test.y))
    train_cfg = TrainConfig(lr=3e-3, batch_size=32, epochs=60, early_stopping_patience=None, seed=0,
                            schedule={"warmup_steps": 20})  # fmt: skip
    seed_everything(0)
    teacher = build_for_training(ModelSpec(arch="mlp", args={"width": 64, "depth": 2, "dropout": 0.1}), train.x,
                                 num_classes)  # fmt: skip
    train_classifier(teacher, train.x, train.y, val.x, val.y, train_cfg, progress=False)
    acc = float((predict_logits(teacher, test.x).argmax(1) == test.y).mean())
    print(f"{name}: teacher {acc:.4f}, standardised logistic regression {baseline_acc:.4f}")
    assert acc >= baseline_acc - 0.04, f"{name}: teacher {acc:.4f} vs baseline {baseline_acc:.4f}"
