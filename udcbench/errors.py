"""Typed errors. Library code raises these; the CLI prints one red line and exits 2."""


class UdcbenchError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class SpecError(UdcbenchError):
    """A run specification, parameter or name is invalid."""


class UnknownNameError(SpecError):
    """A model, attack, defense, dataset or metric name is not registered."""


class DataError(UdcbenchError):
    """A dataset is missing, malformed or empty."""


class CheckpointError(UdcbenchError):
    """A checkpoint file cannot be loaded into the model."""


class MissingExtraError(UdcbenchError):
    """An optional dependency is not installed."""


class StoreError(UdcbenchError):
    """The results store cannot be opened or written."""


class MissingWeightsError(UdcbenchError):
    """Weights that udcbench cannot bundle (e.g. LPIPS backbones) are not on this machine."""


class PluginError(UdcbenchError):
    """An installed third-party package's entry point does not import or registers an incomplete entry."""
