"""The README's model-zoo table lists every built-in network with the parameter count udcbench builds."""

import re
from pathlib import Path

import torch

from udcbench.registry import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def zoo_counts(markdown: str) -> dict[str, int]:
    """{model: parameters} from the rows under '### Model zoo' whose first cell is a `name`, read from the column
    headed 'parameters'."""
    section = markdown.split("### Model zoo", 1)[1].split("\n## ", 1)[0]
    counts, column = {}, None
    for line in section.splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if "parameters" in cells:
            column = cells.index("parameters")
            continue
        name = re.match(r"`([\w-]+)`", cells[0])
        if column is not None and name:
            counts[name.group(1)] = int(re.match(r"[\d,]+", cells[column]).group().replace(",", ""))
    return counts


def built_parameters(name: str) -> int:
    with torch.device("meta"):  # shapes only: the 116 M-parameter NAFNet-w64 costs no memory
        return sum(parameter.numel() for parameter in MODELS.get(name).factory().parameters())


def test_the_model_zoo_table_lists_every_built_in_model_once():
    counts = zoo_counts(README.read_text(encoding="utf-8"))
    built_in = {name for name in MODELS.names() if MODELS.get(name).factory.__module__.startswith("udcbench.")}
    assert set(counts) == built_in


def test_the_model_zoo_parameter_counts_are_what_udcbench_builds():
    counts = zoo_counts(README.read_text(encoding="utf-8"))
    assert counts == {name: built_parameters(name) for name in counts}
