"""UDC data: the capture simulator, the bundled `udc-mini` set and loaders."""

from udcbench.data.datasets import DatasetInfo, Sample, load_dataset

__all__ = ["DatasetInfo", "Sample", "load_dataset"]
