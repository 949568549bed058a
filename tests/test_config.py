"""Config loading: strict schema, defaults, shipped examples."""

import pytest
from pydantic import ValidationError

from kdflow.config import ConfigError, DistillConfig, TeacherConfig, config_hash, load_config, packaged_config
from tests.conftest import write_yaml


def test_shipped_configs_load():
    d = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    t = load_config(packaged_config("mnist1d_teacher.yaml"), TeacherConfig)
    assert d.teacher_uri == "models:/mnist1d-teacher@champion"
    assert d.registry.student_name == "mnist1d-student" and t.registry_name == "mnist1d-teacher"


def test_defaults_follow_common_practice():
    d = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    fresh = DistillConfig.model_validate(
        {
            "data": d.data.model_dump(),
            "teacher_uri": d.teacher_uri,
            "student": d.student.model_dump(),
            "registry": {"student_name": "s"},
        }
    )
    assert fresh.train.temperature == 4.0 and fresh.train.alpha == 0.7
    assert fresh.calibration.n_bins == 15


def test_unknown_key_is_an_error_naming_it(tmp_path):
    raw = packaged_config("mnist1d_distill.yaml").read_text().replace("  alpha: 0.7", "  alpha: 0.7\n  alhpa: 0.5")
    path = tmp_path / "c.yaml"
    path.write_text(raw)
    with pytest.raises(ConfigError, match=r"train\.alhpa: Extra inputs are not permitted"):
        load_config(path, DistillConfig)


def test_missing_file_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", DistillConfig)
    bad = write_yaml(
        tmp_path / "b.yaml",
        {
            "data": {"train": "a", "val": "b", "test": "c", "num_classes": 10},
            "teacher_uri": "runs:/abc/model",
            "student": {"arch": "mlp"},
            "registry": {"student_name": "s"},
            "train": {"alpha": 1.5},
        },
    )
    with pytest.raises(ConfigError) as exc:
        load_config(bad, DistillConfig)
    assert "teacher_uri" in str(exc.value) and "train.alpha" in str(exc.value)


def test_yaml_tags_that_would_run_code_are_rejected(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, DistillConfig)


def test_config_hash_is_stable_and_sensitive():
    a = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    b = a.model_copy(deep=True)
    assert config_hash(a) == config_hash(b)
    b.train.temperature = 2.0
    assert config_hash(a) != config_hash(b)


def test_with_recent_sets_the_recent_traffic_on_a_validated_copy():
    """The retrain flow hands recent traffic to the distill flow as a typed parameter, never by rewriting YAML."""
    from kdflow.config import RecentTraffic, with_recent

    cfg = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    traffic = RecentTraffic(
        recent="r.parquet",
        recent_labeled=None,
        window=("2026-01-01T00:00:00+00:00", "2026-01-04T00:00:00+00:00"),
        rows=10,
        recent_rows=10,
        labeled_rows=0,
    )
    updated = with_recent(cfg, traffic)
    assert (updated.data.recent, updated.data.recent_labeled, updated.data.recent_window) == (
        "r.parquet",
        None,
        ("2026-01-01T00:00:00+00:00", "2026-01-04T00:00:00+00:00"),
    )
    assert cfg.data.recent is None and updated.model_dump(exclude={"data"}) == cfg.model_dump(exclude={"data"})
    with pytest.raises(ValidationError):
        RecentTraffic(recent="r.parquet", window=("a", "b"), rows=-1, recent_rows=0, labeled_rows=0)
