import pytest
from report_helpers import write_grid


@pytest.fixture
def grid(tmp_path):
    return write_grid(tmp_path / "grid")
