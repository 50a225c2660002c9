"""Behavioural contract of the Workspace port (and RunMetrics), run against every backend.

A backend's test module subclasses ``WorkspaceContract`` and provides:

* the fixture ``workspace``: a fresh, empty workspace;
* the method ``finish_job(self, workspace, name, metrics)``: make the submitted job ``name`` end successfully
  with a ``model`` output and return the metrics the run logged. A fake service logs ``metrics`` as given (it
  may return None to mean exactly that); a real run, like the embedded backend's xgboost job, logs what it
  measured and returns those, so the tests compare the port's answer with what the run really wrote;
* optionally, the fixture ``data_paths``: two distinct paths a data version may point at (the default writes
  two small churn CSV files, which the embedded backend can really train on).

Only the ports, value objects and error tree are used here, so the same tests judge every implementation.
"""
from __future__ import annotations

import uuid

import pytest

from shared.domain import Endpoint, JobStatus, Model, ModelSpec, TrainingJobSpec
from shared.errors import Conflict, InvalidPayload, NotFound

METRICS = {"auc": 0.81, "logloss": 0.45}


def _name(prefix: str) -> str:
    # Unique per test so a shared (fake) service never sees the same name twice across tests.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _spec(name: str, asset: str, version: str, **tags: str) -> TrainingJobSpec:
    return TrainingJobSpec(name=name, asset=asset, data_version=version, attempt=1,
                           tags={"mlops_owner": "mlops-automation", "mlops_data_asset": asset,
                                 "mlops_data_version": version, **tags},
                           max_run_seconds=300)


class WorkspaceContract:
    """Subclass, provide ``workspace`` and ``finish_job``; every test below must pass."""

    def finish_job(self, workspace, name: str, metrics: dict[str, float]) -> dict[str, float] | None:  # pragma: no cover
        raise NotImplementedError("each backend says how a submitted job finishes successfully")

    def _finish(self, workspace, name: str, metrics: dict[str, float]) -> dict[str, float]:
        logged = self.finish_job(workspace, name, dict(metrics))
        return dict(metrics) if logged is None else logged

    @pytest.fixture
    def data_paths(self, tmp_path) -> tuple[str, str]:
        from shared.local.churn import write_csv

        first, second = tmp_path / "data-a" / "churn.csv", tmp_path / "data-b" / "churn.csv"
        write_csv(first, rows=400, seed=1)
        write_csv(second, rows=400, seed=2)
        return str(first), str(second)

    # --- helpers built only on the port ------------------------------------------------------------

    def _asset(self, workspace, data_paths) -> tuple[str, str]:
        asset = _name("churn")
        workspace.register_data(asset, "1", data_paths[0])
        return asset, "1"

    def _finished_job(self, workspace, data_paths, metrics=METRICS) -> str:
        asset, version = self._asset(workspace, data_paths)
        job = workspace.submit_training(_spec(_name("train"), asset, version))
        self._finish(workspace, job.name, metrics)
        return job.name

    def _model(self, workspace, data_paths, name: str | None = None, version: str = "1",
               tags: dict[str, str] | None = None) -> Model:
        job = self._finished_job(workspace, data_paths)
        return workspace.register_model(ModelSpec(name=name or _name("model"), version=version, job_name=job,
                                                  tags=tags or {"metric_auc": "0.81"}))

    def _endpoint_with(self, workspace, data_paths, *deployments: str) -> tuple[str, Model]:
        endpoint = _name("ep")
        model = self._model(workspace, data_paths)
        for d in deployments:
            workspace.create_deployment(endpoint, d, model, {"mlops_owner": "mlops-automation"})
        return endpoint, model

    # --- data assets ---------------------------------------------------------------------------------

    def test_registering_the_same_data_version_twice_returns_the_existing_asset(self, workspace, data_paths):
        first = workspace.register_data("churn", "1", data_paths[0], tags={"source": "test"})
        again = workspace.register_data("churn", "1", data_paths[0])
        assert (again.name, again.version, again.path) == (first.name, first.version, first.path)
        assert again.tags.get("source") == "test"
        assert workspace.get_data("churn", "1").path == first.path

    def test_a_data_version_is_immutable_another_path_conflicts(self, workspace, data_paths):
        workspace.register_data("churn", "1", data_paths[0])
        with pytest.raises(Conflict):
            workspace.register_data("churn", "1", data_paths[1])
        assert workspace.get_data("churn", "1").path == workspace.register_data("churn", "1", data_paths[0]).path

    def test_get_data_of_a_missing_version_raises_not_found(self, workspace, data_paths):
        workspace.register_data("churn", "1", data_paths[0])
        with pytest.raises(NotFound):
            workspace.get_data("churn", "2")
        with pytest.raises(NotFound):
            workspace.get_data("no-such-asset", "1")

    def test_latest_data_is_the_newest_version_by_creation_and_none_without_versions(self, workspace, data_paths):
        assert workspace.latest_data("churn") is None
        # Creation order, not string order: "10" is newer than "9" here and sorts before it as text.
        workspace.register_data("churn", "9", data_paths[0])
        workspace.register_data("churn", "10", data_paths[1])
        assert workspace.latest_data("churn").version == "10"
        workspace.register_data("churn", "2", data_paths[0])
        assert workspace.latest_data("churn").version == "2"

    # --- jobs ---------------------------------------------------------------------------------------

    def test_submitting_the_same_job_name_twice_starts_one_job(self, workspace, data_paths):
        asset, version = self._asset(workspace, data_paths)
        name = _name("train")
        first = workspace.submit_training(_spec(name, asset, version, mlops_attempt="1"))
        second = workspace.submit_training(_spec(name, asset, version, mlops_attempt="2"))
        assert first.name == second.name == name
        assert second.tags.get("mlops_attempt") == "1", "the second submit must return the first job, not rerun"
        assert [j.name for j in workspace.list_jobs(tags={"mlops_data_asset": asset})] == [name]

    def test_a_command_job_submitted_twice_is_one_job(self, workspace):
        from shared.domain import CommandJobSpec

        name = _name("drift")

        def spec(tag: str) -> CommandJobSpec:
            return CommandJobSpec(name=name, module="shared.drift.job", args=("--output", "${{outputs.statistics}}"),
                                  inputs={"collected": "azureml://datastores/workspaceblobstore/paths/modelDataCollector/ep/d/"},
                                  outputs=("statistics",), tags={"mlops_owner": "mlops-automation", "mlops_check": tag})

        first = workspace.submit_command(spec("1"))
        second = workspace.submit_command(spec("2"))
        assert first.name == second.name == name
        assert second.tags.get("mlops_check") == "1", "the second submit must return the first job, not rerun"
        assert [j.name for j in workspace.list_jobs(tags={"mlops_check": "1"})] == [name]
        assert workspace.list_jobs(tags={"mlops_check": "2"}) == []

    def test_a_submitted_job_keeps_its_tags_and_has_a_status(self, workspace, data_paths):
        asset, version = self._asset(workspace, data_paths)
        job = workspace.submit_training(_spec(_name("train"), asset, version, mlops_trigger_event="evt-1"))
        got = workspace.get_job(job.name)
        assert got.tags["mlops_trigger_event"] == "evt-1"
        assert got.tags["mlops_data_asset"] == asset
        assert isinstance(got.status, JobStatus)

    def test_get_job_of_an_unknown_name_raises_not_found(self, workspace):
        with pytest.raises(NotFound):
            workspace.get_job("train-no-such-job")

    def test_list_jobs_matches_all_given_tags_and_the_status(self, workspace, data_paths):
        asset, version = self._asset(workspace, data_paths)
        a = workspace.submit_training(_spec(_name("train"), asset, version, mlops_attempt="1"))
        b = workspace.submit_training(_spec(_name("train"), asset, version, mlops_attempt="2"))
        self._finish(workspace, a.name, METRICS)
        self._finish(workspace, b.name, METRICS)
        both = {j.name for j in workspace.list_jobs(tags={"mlops_data_asset": asset})}
        assert both == {a.name, b.name}
        only_b = workspace.list_jobs(tags={"mlops_data_asset": asset, "mlops_attempt": "2"})
        assert [j.name for j in only_b] == [b.name]
        assert workspace.list_jobs(tags={"mlops_data_asset": asset, "mlops_attempt": "3"}) == []
        done = workspace.list_jobs(status=[JobStatus.COMPLETED], tags={"mlops_data_asset": asset})
        assert {j.name for j in done} == {a.name, b.name}
        assert workspace.list_jobs(status=[JobStatus.FAILED], tags={"mlops_data_asset": asset}) == []

    def test_list_jobs_is_newest_first(self, workspace, data_paths):
        asset, version = self._asset(workspace, data_paths)
        names = [workspace.submit_training(_spec(_name("train"), asset, version)).name for _ in range(3)]
        listed = [j.name for j in workspace.list_jobs(tags={"mlops_data_asset": asset})]
        assert listed == list(reversed(names))

    def test_a_finished_job_reports_completed_and_the_metrics_it_logged(self, workspace, data_paths):
        asset, version = self._asset(workspace, data_paths)
        job = workspace.submit_training(_spec(_name("train"), asset, version)).name
        logged = self._finish(workspace, job, {"auc": 0.77, "logloss": 0.5})
        assert workspace.get_job(job).status is JobStatus.COMPLETED
        metrics = workspace.get_run_metrics(job)
        assert metrics["auc"] == pytest.approx(logged["auc"]) and 0.0 <= metrics["auc"] <= 1.0
        assert metrics["logloss"] == pytest.approx(logged["logloss"]) and metrics["logloss"] > 0.0
        assert all(isinstance(v, float) for v in metrics.values())

    def test_run_metrics_of_an_unknown_job_raise_not_found(self, workspace):
        with pytest.raises(NotFound):
            workspace.get_run_metrics("train-no-such-job")

    # --- models -------------------------------------------------------------------------------------

    def test_a_registered_model_keeps_its_tags_and_re_registering_returns_it_unchanged(self, workspace, data_paths):
        job = self._finished_job(workspace, data_paths)
        name = _name("model")
        first = workspace.register_model(ModelSpec(name=name, version="1", job_name=job,
                                                   tags={"metric_auc": "0.81", "mlops_job": job}))
        assert (first.name, first.version) == (name, "1")
        assert first.tags["metric_auc"] == "0.81" and first.tags["mlops_job"] == job
        assert first.metrics() == {"auc": pytest.approx(0.81)}
        again = workspace.register_model(ModelSpec(name=name, version="1", job_name=job,
                                                   tags={"metric_auc": "0.99"}))
        assert again.tags["metric_auc"] == "0.81", "an existing version is returned unchanged"
        assert workspace.get_model(name, "1").tags == first.tags
        assert [m.version for m in workspace.list_models(name)] == ["1"]

    def test_registering_a_model_of_an_unknown_job_raises_not_found(self, workspace):
        with pytest.raises(NotFound):
            workspace.register_model(ModelSpec(name=_name("model"), version="1", job_name="train-no-such-job",
                                               tags={}))

    def test_models_take_the_next_integer_version_once_per_job_newest_first(self, workspace, data_paths):
        name = _name("model")
        assert workspace.list_models(name) == []
        jobs = [self._finished_job(workspace, data_paths) for _ in range(3)]
        got = [workspace.register_model(ModelSpec(name=name, version="", job_name=j, tags={})).version for j in jobs]
        assert got == ["1", "2", "3"]
        again = workspace.register_model(ModelSpec(name=name, version="", job_name=jobs[1], tags={}))
        assert again.version == "2", "a redelivered registration finds the version its job produced"
        assert [m.version for m in workspace.list_models(name)] == ["3", "2", "1"]
        with pytest.raises(InvalidPayload):
            workspace.register_model(ModelSpec(name=name, version="4.1", job_name=jobs[0], tags={}))
        with pytest.raises(NotFound):
            workspace.get_model(name, "4")

    def test_tag_model_merges_into_the_existing_tags(self, workspace, data_paths):
        model = self._model(workspace, data_paths, tags={"metric_auc": "0.81", "mlops_gate": "approved"})
        tagged = workspace.tag_model(model.name, model.version, {"mlops_rolled_back": "true"})
        assert tagged.tags == {"metric_auc": "0.81", "mlops_gate": "approved", "mlops_rolled_back": "true",
                               "mlops_job": model.tags["mlops_job"]}
        assert workspace.get_model(model.name, model.version).tags == tagged.tags
        with pytest.raises(NotFound):
            workspace.tag_model(model.name, "99", {"x": "y"})

    # --- endpoints ----------------------------------------------------------------------------------

    def test_get_endpoint_of_an_unknown_name_is_none(self, workspace):
        assert workspace.get_endpoint("no-such-endpoint") is None

    def test_create_deployment_creates_the_endpoint_with_the_deployment_at_zero_traffic(self, workspace, data_paths):
        endpoint, model = self._endpoint_with(workspace, data_paths, "v1-1")
        got = workspace.get_endpoint(endpoint)
        assert isinstance(got, Endpoint) and got.name == endpoint
        dep = got.deployment("v1-1")
        assert dep is not None
        assert (dep.model_name, dep.model_version) == (model.name, model.version)
        assert dep.tags.get("mlops_owner") == "mlops-automation"
        assert got.traffic.get("v1-1", 0) == 0
        assert endpoint in [e.name for e in workspace.list_endpoints()]

    def test_create_deployment_twice_keeps_one_deployment_and_its_traffic(self, workspace, data_paths):
        endpoint, model = self._endpoint_with(workspace, data_paths, "v1-1")
        workspace.set_traffic(endpoint, {"v1-1": 100})
        workspace.create_deployment(endpoint, "v1-1", model, {"mlops_owner": "mlops-automation"})
        got = workspace.get_endpoint(endpoint)
        assert [d.name for d in got.deployments] == ["v1-1"]
        assert got.traffic.get("v1-1") == 100

    def test_set_traffic_makes_exactly_the_given_split_and_drops_missing_names_to_zero(self, workspace, data_paths):
        endpoint, _ = self._endpoint_with(workspace, data_paths, "blue", "green", "red")
        workspace.set_traffic(endpoint, {"blue": 50, "green": 30, "red": 20})
        got = workspace.set_traffic(endpoint, {"blue": 90, "green": 10})
        assert {k: got.traffic.get(k, 0) for k in ("blue", "green", "red")} == {"blue": 90, "green": 10, "red": 0}
        now = workspace.get_endpoint(endpoint)
        assert {k: now.traffic.get(k, 0) for k in ("blue", "green", "red")} == {"blue": 90, "green": 10, "red": 0}

    def test_rollback_from_ninety_ten_to_one_hundred_zero(self, workspace, data_paths):
        endpoint, _ = self._endpoint_with(workspace, data_paths, "champion", "canary")
        workspace.set_traffic(endpoint, {"champion": 90, "canary": 10})
        workspace.set_traffic(endpoint, {"champion": 100}, deployment_tags={"canary": {"mlops_rolled_back": "true"}})
        got = workspace.get_endpoint(endpoint)
        assert got.traffic.get("champion") == 100 and got.traffic.get("canary", 0) == 0
        assert got.deployment("canary").tags.get("mlops_rolled_back") == "true"

    def test_a_split_that_does_not_sum_to_one_hundred_is_rejected_and_changes_nothing(self, workspace, data_paths):
        endpoint, _ = self._endpoint_with(workspace, data_paths, "blue", "green")
        workspace.set_traffic(endpoint, {"blue": 100})
        with pytest.raises(InvalidPayload):
            workspace.set_traffic(endpoint, {"blue": 90, "green": 20}, tags={"changed": "yes"})
        got = workspace.get_endpoint(endpoint)
        assert got.traffic.get("blue") == 100 and got.traffic.get("green", 0) == 0
        assert "changed" not in got.tags

    def test_traffic_to_an_unknown_deployment_raises_not_found(self, workspace, data_paths):
        endpoint, _ = self._endpoint_with(workspace, data_paths, "blue")
        with pytest.raises(NotFound):
            workspace.set_traffic(endpoint, {"blue": 50, "ghost": 50})
        with pytest.raises(NotFound):
            workspace.set_traffic("no-such-endpoint", {"blue": 100})
        assert workspace.get_endpoint(endpoint).traffic.get("blue", 0) == 0

    def test_set_traffic_merges_tags_into_the_endpoint_and_the_named_deployments(self, workspace, data_paths):
        endpoint, _ = self._endpoint_with(workspace, data_paths, "blue", "green")
        workspace.set_traffic(endpoint, {"blue": 100}, tags={"a": "1"}, deployment_tags={"blue": {"k": "v"}})
        got = workspace.set_traffic(endpoint, {"blue": 90, "green": 10}, tags={"b": "2"},
                                    deployment_tags={"green": {"k": "w"}})
        assert got.tags.get("a") == "1" and got.tags.get("b") == "2"
        assert got.deployment("blue").tags.get("k") == "v"
        assert got.deployment("green").tags.get("k") == "w"
        assert got.deployment("blue").tags.get("mlops_owner") == "mlops-automation"

    def test_tags_for_an_unknown_deployment_raise_not_found_and_change_nothing(self, workspace, data_paths):
        endpoint, _ = self._endpoint_with(workspace, data_paths, "blue")
        with pytest.raises(NotFound):
            workspace.set_traffic(endpoint, {"blue": 100}, tags={"changed": "yes"},
                                  deployment_tags={"ghost": {"k": "v"}})
        got = workspace.get_endpoint(endpoint)
        assert got.traffic.get("blue", 0) == 0 and "changed" not in got.tags
