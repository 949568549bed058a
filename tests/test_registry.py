"""Registry promotion, rollback and alias history on MLflow over SQLite (the Prefect promotion lock that serializes
``kdflow models promote`` across processes is tested in test_registry_server.py)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from kdflow import registry
from kdflow.registry import RegistryError
from mlflow import MlflowClient
from tests.conftest import chain_is_consistent


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory) -> tuple[str, str]:
    """One tiny nn.Linear logged once (SQLite tracking in a temp dir); versions are registered from it."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    registry.configure(uri, "registry-tests", str(root / "artifacts"))
    with mlflow.start_run():
        model_uri, _ = registry.log_torch_model(nn.Linear(4, 2), np.zeros((2, 4), np.float32), None)
    return uri, model_uri


@pytest.fixture()
def model(logged_model, request) -> "Registered":
    """A fresh registered model per test, named after the test; tracking pointed at the module's database."""
    uri, model_uri = logged_model
    registry.configure_tracking(uri)
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]  # parametrized ids differ past the cut
    return Registered(f"{re.sub(r'[^A-Za-z0-9-]', '-', request.node.name)[:50]}-{digest}", model_uri)


class Registered:
    """Adds versions of one registered model, each with an SLA verdict tag (or none)."""

    def __init__(self, name: str, model_uri: str):
        self.name, self.model_uri = name, model_uri

    def add(self, *sla: bool | None) -> list[str]:
        import mlflow

        out = []
        for passed in sla:
            version = str(mlflow.register_model(self.model_uri, self.name).version)
            if passed is not None:
                registry.tag_version(
                    self.name, version, {"sla_passed": passed, "test_accuracy": 0.5 + int(version) / 100}
                )
            out.append(version)
        return out


def test_promote_moves_champion_and_records_every_move(model):
    model.add(True, True, True)
    results = [registry.promote(model.name, v, f"promote {v}", "tester") for v in ("1", "2", "3")]
    assert [(r.previous, r.version, r.changed) for r in results] == [
        (None, "1", True),
        ("1", "2", True),
        ("2", "3", True),
    ]
    assert registry.alias_version(model.name, "champion") == "3" == registry.champion_version(model.name)

    events = registry.history(model.name, "champion")
    assert [e.version for e in events] == ["1", "2", "3"] and chain_is_consistent(events)
    assert [e.key for e in events] == [r.event.key for r in results]
    assert all(re.fullmatch(r"kdflow\.alias_event\.\d{8}T\d{6}\.\d{6}-[0-9a-f]{8}", e.key) for e in events)
    assert events[1].reason == "promote 2" and events[1].actor == "tester" and events[1].action == "promote"
    assert events[0].at < events[1].at < events[2].at
    # The per-version tags set_alias always wrote are kept.
    tags = MlflowClient().get_model_version(model.name, "3").tags
    assert '"previous": "2"' in tags["kdflow.alias.champion.event"] and tags["kdflow.alias.champion.set_at"]


def test_promoting_the_champion_again_is_a_recorded_no_op(model):
    model.add(True)
    registry.promote(model.name, "1", "first", "tester")
    again = registry.promote(model.name, 1, "again", "tester", flow_run="run-123")
    assert not again.changed and again.previous == again.version == "1"
    events = registry.history(model.name)
    assert len(events) == 2 and (events[1].previous, events[1].version, events[1].flow_run) == ("1", "1", "run-123")


def test_a_promotion_repeated_with_its_request_id_records_nothing_new(model):
    model.add(True, True)
    first = registry.promote(model.name, "1", "first", "tester", request="task-a")
    again = registry.promote(model.name, "1", "first", "tester", request="task-a")
    assert again.event == first.event and again.changed and len(registry.history(model.name)) == 1
    # A later move by another request is not undone by a late repeat of the first one.
    registry.promote(model.name, "2", "second", "tester", request="task-b")
    late = registry.promote(model.name, "1", "first", "tester", request="task-a")
    assert late.event == first.event and registry.alias_version(model.name, "champion") == "2"
    assert [e.request for e in registry.history(model.name)] == ["task-a", "task-b"]


def test_history_stays_in_move_order_when_a_writer_clock_was_ahead(model):
    model.add(True, True)
    registry.promote(model.name, "1", "first", "tester")
    # An event written by a machine whose clock runs a year ahead (same shape as ours).
    ahead = registry.history(model.name)[0]
    future_key = "kdflow.alias_event.20991231T235959.999990-0000beef"
    MlflowClient().set_registered_model_tag(
        model.name, future_key, MlflowClient().get_registered_model(model.name).tags[ahead.key]
    )
    result = registry.promote(model.name, "2", "second", "tester")
    events = registry.history(model.name)
    assert events[-1].key == result.event.key and result.event.key > future_key


@pytest.mark.parametrize("verdict, match", [(False, "failed its SLA gate"), (None, "has no SLA record")])
def test_promote_refuses_a_version_without_a_passed_sla_and_leaves_champion(model, verdict, match):
    model.add(True, verdict)
    registry.promote(model.name, "1", "good", "tester")
    with pytest.raises(RegistryError, match=rf"version 2: .*{match}"):
        registry.promote(model.name, "2", "bad", "tester")
    assert registry.alias_version(model.name, "champion") == "1" and len(registry.history(model.name)) == 1
    # The check can be waived explicitly (e.g. an emergency fix vetted elsewhere).
    assert registry.promote(model.name, "2", "waived", "tester", require_sla=False).previous == "1"


def test_promote_refuses_unknown_model_or_version(model):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.promote(model.name, "1", "r", "tester")
    model.add(True)
    with pytest.raises(RegistryError, match="version 7 does not exist"):
        registry.promote(model.name, "7", "r", "tester")


def test_rollback_walks_back_through_previous_champions(model):
    model.add(True, True, True)
    for v in ("1", "2", "3"):
        registry.promote(model.name, v, f"promote {v}", "tester")
    first = registry.rollback(model.name, "v3 regressed", "oncall")
    assert (first.previous, first.version) == ("3", "2") and registry.alias_version(model.name, "champion") == "2"
    second = registry.rollback(model.name, "v2 regressed too", "oncall")
    assert (second.previous, second.version) == ("2", "1")
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(model.name, "nothing left", "oncall")
    assert registry.alias_version(model.name, "champion") == "1"
    events = registry.history(model.name, "champion")
    assert [(e.action, e.previous, e.version) for e in events[3:]] == [("rollback", "3", "2"), ("rollback", "2", "1")]
    assert chain_is_consistent(events)


def test_rollback_after_a_new_promotion_returns_to_the_champion_it_replaced(model):
    model.add(True, True, True, True)
    for v in ("1", "2", "3"):
        registry.promote(model.name, v, "p", "tester")
    registry.rollback(model.name, "r", "oncall")  # 3 -> 2
    registry.promote(model.name, "4", "p", "tester")  # 2 -> 4
    assert registry.rollback(model.name, "r", "oncall").version == "2"
    assert registry.rollback(model.name, "r", "oncall").version == "1"


def test_rollback_skips_versions_deleted_since(model):
    model.add(True, True, True)
    for v in ("1", "2", "3"):
        registry.promote(model.name, v, "p", "tester")
    MlflowClient().delete_model_version(model.name, "2")
    result = registry.rollback(model.name, "v3 regressed", "oncall")
    assert (result.previous, result.version) == ("3", "1")


def test_rollback_needs_a_champion_and_a_history(model):
    model.add(True)
    with pytest.raises(RegistryError, match="has no champion"):
        registry.rollback(model.name, "r", "oncall")
    with pytest.raises(RegistryError, match="has no champion"):
        registry.champion_version(model.name)
    registry.promote(model.name, "1", "first", "tester")
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(model.name, "r", "oncall")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.rollback("no-such-model-anywhere", "r", "oncall")


def test_set_alias_keeps_its_behaviour_and_now_records_history(model):
    model.add(True, True)
    assert registry.set_alias(model.name, "challenger", "1", reason="new candidate", actor="distill-flow") is None
    assert registry.set_alias(model.name, "challenger", "2", reason="new candidate") == "1"
    events = registry.history(model.name, "challenger")
    assert [(e.previous, e.version, e.action) for e in events] == [(None, "1", "set"), ("1", "2", "set")]
    assert registry.history(model.name, "champion") == []


def test_list_models_and_versions(model):
    model.add(True, False, None)
    registry.promote(model.name, "1", "p", "tester")
    registry.set_alias(model.name, "challenger", "2", reason="candidate")
    summary = next(m for m in registry.list_models() if m.name == model.name)
    assert (summary.champion, summary.challenger, summary.latest) == ("1", "2", "3")
    infos = registry.versions(model.name)
    assert [(i.version, i.aliases, i.sla_passed) for i in infos] == [
        ("1", ["champion"], True),
        ("2", ["challenger"], False),
        ("3", [], None),
    ]
    assert infos[0].metrics == {"test_accuracy": pytest.approx(0.51)} and infos[2].metrics == {}
    assert infos[0].created is not None and infos[0].created.tzinfo is not None


def test_concurrent_promotions_under_a_lock_keep_one_consistent_chain(model):
    """promote() does its whole read-check-move-record inside the caller's lock (any context manager; in kdflow the
    Prefect concurrency slot of tasks/promotion.py), so racing promotions still form one chain."""
    versions = model.add(*[True] * 5)
    lock = threading.Lock()
    start, errors = threading.Barrier(len(versions)), []

    def promote(version: str) -> None:
        start.wait()
        try:
            registry.promote(model.name, version, f"race {version}", f"thread-{version}", lock=lock)
        except Exception as exc:  # reported below, with the thread's version
            errors.append((version, exc))

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = registry.history(model.name, "champion")
    assert sorted(e.version for e in events) == versions and chain_is_consistent(events)
    assert registry.alias_version(model.name, "champion") == events[-1].version


def _kdflow(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The real ``kdflow`` console script in a subprocess (its own Prefect home: ephemeral API)."""
    import os

    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "kdflow"), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_models_cli_list_history_promote_rollback(model, logged_model, tmp_path):
    uri = logged_model[0]
    model.add(True, True, False)
    for version in ("1", "2"):
        out = _kdflow(
            "models",
            "promote",
            model.name,
            version,
            "--reason",
            f"cli {version}",
            "--tracking-uri",
            uri,
            home=tmp_path / "prefect",
        )
        assert out.returncode == 0, out.stderr
    assert registry.alias_version(model.name, "champion") == "2"
    refused = _kdflow(
        "models", "promote", model.name, "3", "--reason", "bad", "--tracking-uri", uri, home=tmp_path / "prefect"
    )
    assert refused.returncode == 2 and "version 3" in refused.stderr and "SLA" in refused.stderr
    back = _kdflow(
        "models", "rollback", model.name, "--reason", "cli rollback", "--tracking-uri", uri, home=tmp_path / "prefect"
    )
    assert back.returncode == 0 and "2 -> 1" in back.stdout, back.stderr
    listed = _kdflow("models", "list", "--tracking-uri", uri, home=tmp_path / "prefect")
    assert f"{model.name}: champion 1," in listed.stdout
    hist = _kdflow("models", "history", model.name, "--tracking-uri", uri, home=tmp_path / "prefect")
    assert hist.returncode == 0 and "cli rollback" in hist.stdout and "by cli:" in hist.stdout
    assert [e.version for e in registry.history(model.name, "champion")] == ["1", "2", "1"]
