import pytest

from prior_helpers import save_tiny_prior


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    return save_tiny_prior(tmp_path_factory.mktemp("prior") / "prior.safetensors")
