"""Names in reports: display names for paper tables, and did-you-mean hints for misspelt names.

Pivot tables show the raw labels of the results (`uformer-nano`, `pgd`, `purify+ft`) unless asked for display
names (`udcbench leaderboard DIR --names display`): then models, attacks, defenses and threat models get the
names papers use (`Uformer-nano`, `PGD`, `Purify+FT`, `Gray-box`), the headers are capitalised and an ε column
dimension reads `ε = 8/255` (`$\\epsilon = 8/255$` in LaTeX). `--names FILE.yaml` adds a lab's own names to the
built-in ones, either for every dimension or under one:

    my-net: MyNet            # any dimension
    model:
      uformer-nano: Uformer (ours)
    defense:
      jpeg:75: JPEG-75

A defense of several parts (`purify:auto+ft`) is shown part by part, each part's name mapped and its
arguments kept (`Purify:auto+FT`), unless the whole label has a name of its own. Names that neither table
knows stay as they are. Display names are plain text; each renderer escapes them for its format.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from udcbench.errors import SpecError

# names papers use for what udcbench registers (a test checks every registered name has one)
MODELS = {"bnudc": "BNUDC", "dagf": "DAGF", "discnet": "DISCNet", "discnet-nano": "DISCNet-nano",
          "dwformer": "DWFormer", "dwformer-nano": "DWFormer-nano", "ecfnet": "ECFNet", "nafnet-nano": "NAFNet-nano",
          "nafnet-w32": "NAFNet-w32", "nafnet-w64": "NAFNet-w64", "restormer": "Restormer", "udcunet": "UDC-UNet",
          "uformer-b": "Uformer-B", "uformer-nano": "Uformer-nano", "uformer-s": "Uformer-S", "uformer-t": "Uformer-T",
          "wiener": "Wiener"}
ATTACKS = {"advertorch:pgd": "PGD (AdverTorch)", "cw": "C&W", "difgsm": "DI-FGSM", "fgsm": "FGSM",
           "foolbox:pgd": "PGD (Foolbox)", "ifgsm": "I-FGSM", "lpips-pgd": "LPIPS-PGD", "mifgsm": "MI-FGSM",
           "pgd": "PGD", "pgd-l2": "PGD-L2", "simba": "SimBA", "square": "Square", "square-l2": "Square-L2",
           "transfer": "Transfer"}
DEFENSES = {"bits": "Bit depth", "blur": "Blur", "ft": "FT", "jpeg": "JPEG", "median": "Median", "none": "None",
            "purify": "Purify", "smooth": "Smoothing"}
THREATS = {"gray-box": "Gray-box", "adaptive": "Adaptive"}
BUILT_IN = {"model": MODELS, "attack": ATTACKS, "defense": DEFENSES, "threat": THREATS}
NAMED = tuple(BUILT_IN)  # the dimensions whose values get display names
HEADERS = {"eps": "ε", "batch_size": "Batch size", "eps_batch": "ε values per batch", "eot": "EOT draws",
           "model_options": "Model options", "weights_digest": "Weights digest", "settings": "Attack settings"}
RAW, DISPLAY = "raw", "display"
_EPS = re.compile(r"(L2 )?(\d+(?:\.\d+)?(?:e[-+]?\d+)?(?:/\d+)?)")  # format_eps: '8/255', 'L2 0.5', '0.0314'


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'model'?)' when `name` is close to one of `choices`, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Names:
    """Display names: {dimension: {raw label: display name}} on top of the built-in table, plus names that apply
    to every named dimension (from a file's top level)."""

    own: dict = field(default_factory=dict)  # dimension -> {raw: display}
    anywhere: dict = field(default_factory=dict)  # raw -> display, for every named dimension

    def show(self, dimension: str, label: str) -> str:
        """The display name of a label of `dimension` (the label itself where no table names it)."""
        if dimension not in NAMED:
            return label
        found = self._lookup(dimension, label)
        if found is not None:
            return found
        if dimension != "defense" or ("+" not in label and ":" not in label):
            return label
        parts = []
        for part in label.split("+"):
            name, colon, argument = part.partition(":")
            whole = self._lookup(dimension, part)
            parts.append(whole if whole is not None else (self._lookup(dimension, name) or name) + colon + argument)
        return "+".join(parts)

    def _lookup(self, dimension: str, label: str) -> str | None:
        for table in (self.own.get(dimension, {}), self.anywhere, BUILT_IN[dimension]):
            if label in table:
                return table[label]
        return None

    @staticmethod
    def header(dimension: str) -> str:
        """'Model', 'Defense', 'ε', 'Batch size', ... for a dimension's column header."""
        return HEADERS.get(dimension, dimension[:1].upper() + dimension[1:])


def eps_header(label: str, latex: bool = False) -> str | None:
    """'ε = 8/255' (LaTeX: '$\\epsilon = 8/255$'; an L2 budget: ε₂) for an eps label, None for '-' or any label
    that is not a budget."""
    found = _EPS.fullmatch(label)
    if found is None:
        return None
    if latex:
        return rf"$\epsilon{'_2' if found.group(1) else ''} = {found.group(2)}$"
    return f"ε{'₂' if found.group(1) else ''} = {found.group(2)}"


def load_names(choice: str | None) -> Names | None:
    """--names: None or 'raw' (the labels as stored: None), 'display' (the built-in display names) or a YAML
    file of a lab's own names on top of them."""
    if choice is None or choice == RAW:
        return None
    if choice == DISPLAY:
        return Names()
    path = Path(choice)
    fix = ("pass --names raw, --names display or a YAML file mapping raw names to display names, e.g. "
           "`my-net: MyNet` or `model: {my-net: MyNet}`")
    if not path.is_file():
        raise SpecError(f"--names {choice}: no such file; {fix}")
    import yaml

    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise SpecError(f"--names {path}: not a readable YAML file ({problem}); {fix}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"--names {path} holds a {type(data).__name__}, not a mapping; {fix}")
    own, anywhere = {}, {}
    for key, value in data.items():
        if key in NAMED and isinstance(value, dict):
            own[key] = {_text(path, raw, "name"): _text(path, shown, "display name") for raw, shown in value.items()}
        else:
            anywhere[_text(path, key, "name")] = _text(path, value, "display name")
    return Names(own, anywhere)


def _text(path: Path, value, what: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise SpecError(f"--names {path}: {what} {value!r} is not text; quote names (\"no\": \"No\") and map each "
                    "raw name to one display name")


def relabel(labels, dimension: str, names: Names) -> dict:
    """{raw label: display name} for the labels of one dimension; two labels shown alike are refused (the table
    would hold two rows or columns under one name)."""
    shown = {label: names.show(dimension, label) for label in sorted(labels)}
    seen: dict = {}
    for label, text in shown.items():
        if text in seen and seen[text] != label:
            raise SpecError(f"--names shows both {seen[text]!r} and {label!r} of {dimension} as {text!r}; give them "
                            "different display names")
        seen[text] = label
    return shown
