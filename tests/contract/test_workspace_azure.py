"""The Workspace contract against the Azure ML adapter: the real MLClient, its requests answered by a fake service."""
from __future__ import annotations

import pytest

from shared.adapters.azureml import build_workspace
from shared.config import Settings
from tests.contract.workspace_contract import WorkspaceContract
from tests.fakes.azureml_service import FakeAzureML, FakeCredential

# azure-ai-ml builds its marshmallow schemas with options marshmallow 4 drops: not ours to fix, only noise.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


class TestAzureMLWorkspace(WorkspaceContract):
    @pytest.fixture
    def fake(self):
        service = FakeAzureML()
        yield service
        service.shutdown()
        assert service.unexpected == [], "the adapter reached for a host the fake does not serve"

    @pytest.fixture
    def workspace(self, fake):
        settings = Settings(backend="azure", subscription_id=fake.subscription_id,
                            resource_group=fake.resource_group, workspace=fake.workspace, datastore="landing")
        ws = build_workspace(settings, FakeCredential(), transport=fake)
        ws.fake = fake
        yield ws
        ws.close()

    @pytest.fixture
    def data_paths(self) -> tuple[str, str]:
        return ("azureml://datastores/landing/paths/churn/1/churn.csv",
                "https://mlopsdata.blob.core.windows.net/landing/churn/2/churn.csv")

    def finish_job(self, workspace, name: str, metrics: dict[str, float]) -> None:
        workspace.fake.finish_job(name, "Completed", metrics=metrics)
        return None
