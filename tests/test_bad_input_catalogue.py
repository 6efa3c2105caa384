"""The catalogue of bad inputs (issue 15): every command, every class of mistake a user or a hostile file can
make. Each must end in exactly one `error:` line that names the problem (the case's fragment) and the fix, exit
code 2, no traceback, and nothing created or changed under any path the command could write — the folders of its
inputs and outputs and the working directory, compared file by file (name, size, mtime) before and after.

Cases run in-process through Click's runner with the working directory in a fresh temporary folder; the slow
assets (a finished run folder, weights files, datasets) are made once per module."""

import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.models import bundled_weights

runner = CliRunner()
FAST = ["--limit", "1", "--steps", "1"]
# a fix is named: a clause after ';' or '—', or a 'e.g.', 'use …', 'pass …' instruction
FIX = re.compile(r";|—|e\.g\.|\b(use|pass|choose|give|remove|rename|pick|see|drop|lower|raise|delete|save|"
                 r"re-download|list|run|add|free|name|write|fix|downscale|convert)\b", re.IGNORECASE)


class Payload:
    """Unpickling this would create the marker file: the proof that a file never ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(path: Path, side: int, idat: bytes) -> Path:
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def _photo(path: Path, seed: int = 0, side: int = 64) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _pairs(root: Path, write) -> Path:
    for side in ("input", "gt"):
        (root / side).mkdir(parents=True)
        write(root / side / "a.png")
    return root


def _suite(path: Path, body: str) -> Path:
    path.write_text("suite: bad\nmodels: [uformer]\nattacks: [pgd]\n" + body)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    a = tmp_path_factory.mktemp("assets")
    base = a / "base"
    assert runner.invoke(app, ["run", *FAST, "--out", str(base)]).exit_code == 0
    (a / "afile.txt").write_text("a file, not a folder\n")
    (a / "empty.pth").write_bytes(b"")
    (a / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 8)
    weights = load_file(str(bundled_weights("uformer-nano")))
    first = next(key for key, value in weights.items() if value.is_floating_point())
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, str(a / "nan.safetensors"))
    marker = a / "PAYLOAD-RAN"
    torch.save({"state_dict": Payload(marker)}, a / "payload.pth")
    (a / "payload.bin").write_bytes(pickle.dumps(Payload(marker)))
    bomb = _png(a / "bomb.png", 20000, zlib.compress(b"\x00" * 64))
    _pairs(a / "bombdata", lambda p: _png(p, 20000, zlib.compress(b"\x00" * 64)))
    _pairs(a / "corruptdata", lambda p: _png(p, 32, b"\x78\x9c" + b"garbage!" * 16))
    (a / "photos").mkdir()
    for index in range(3):
        _photo(a / "photos" / f"p{index}.png", index)
    (a / "bombphotos").mkdir()
    _photo(a / "bombphotos" / "fine.png")
    _png(a / "bombphotos" / "huge.png", 20000, zlib.compress(b"\x00" * 64))
    for name, content in (("zerodb", b""), ("notdb", b"not a database at all, just text\n" * 4)):
        (a / name).mkdir()
        (a / name / "results.db").write_bytes(content)
    (a / "bad.csv").write_text("what,is,this\n1,2,3\n")
    suites = {"seed": "seed: abc\n", "limit": "limit: many\n", "limit0": "limit: 0\n", "batch": "batch_size: '4'\n",
              "seeds": "seeds: [0, 2.5]\n", "key": "colour: blue\n", "syntax": "defenses: [none\n",
              "models": "models: []\n", "tag": f"seeds: !!python/object/apply:os.system ['touch {marker}']\n",
              "hugeseed": "seed: 99999999999999999999\n", "device": "device: tpu\n"}
    for name, body in suites.items():
        _suite(a / f"s-{name}.yaml", body)
    (a / "s-latin.yaml").write_bytes("suite: caf\xe9\nmodels: [uformer]\n".encode("latin-1"))
    (a / "s-empty.yaml").write_text("")
    return {"A": a, "base": base, "file": a / "afile.txt", "empty": a / "empty.pth", "garbage": a / "garbage.pth",
            "nan": a / "nan.safetensors", "other": bundled_weights("nafnet-nano"), "pickle": a / "payload.pth",
            "pickle_bin": a / "payload.bin", "marker": marker, "bomb": bomb, "bombdata": a / "bombdata",
            "corruptdata": a / "corruptdata", "photos": a / "photos", "bombphotos": a / "bombphotos",
            "zerodb": a / "zerodb", "notdb": a / "notdb", "badcsv": a / "bad.csv",
            **{f"s_{name}": a / f"s-{name}.yaml" for name in [*suites, "latin", "empty"]}}


def R(*args):  # a `run` into a folder that must never appear
    return ["run", *FAST, *args] if "--out" in args else ["run", *FAST, *args, "--out", "{new}"]


W = "{new}/w.safetensors"
CASES = {
    # --- run: names, numbers, parameters ---------------------------------------------------------------------
    "run model unknown": (R("--model", "nosuch"), "nosuch"),
    "run attack unknown": (R("--attack", "nosuch"), "nosuch"),
    "run defense unknown": (R("--defense", "nosuch"), "nosuch"),
    "run eps negative": (R("--eps", "-1"), "eps"),
    "run eps infinite": (R("--eps", "inf"), "eps"),
    "run eps empty": (R("--eps", ""), "--eps is empty"),
    "run eps text": (R("--eps", "abc"), "cannot read eps"),
    "run param not a number": (R("-p", "steps=abc"), "steps must be a number"),
    "run param infinite": (R("-p", "alpha=inf"), "alpha must be a finite number"),
    "run param nan": (R("--alpha", "nan"), "alpha"),
    "run param fractional count": (R("-p", "steps=2.5"), "whole number"),
    "run steps absurd": (R("--steps", "99999999999999999999"), "more than udcbench runs"),
    "run param flag": (R("-p", "random_start=maybe"), "true or false"),
    "run param unknown": (R("-p", "nosuch=1"), "nosuch"),
    "run param no value": (R("-p", "novalue"), "KEY=VALUE"),
    "run restarts negative": (R("--restarts", "-1"), "restarts"),
    "run queries zero": (R("--attack", "square", "--queries", "0"), "queries"),
    "run steps not an int": (R("--steps", "abc"), "--steps"),
    "run seed huge": (R("--seed", "99999999999999999999"), "--seed"),
    "run seed negative": (R("--seed", "-1"), "--seed"),
    "run limit zero": (R("--limit", "0"), "--limit"),
    "run batch zero": (R("--batch-size", "0"), "--batch-size"),
    "run device": (R("--device", "tpu"), "tpu"),
    "run precision": (R("--precision", "fp8"), "fp8"),
    "run memory": (R("--memory", "huge"), "huge"),
    "run scoring": (R("--scoring", "4bit"), "4bit"),
    "run norm": (R("--norm", "l3"), "l3"),
    "run threat": (R("--threat", "whitebox"), "whitebox"),
    "run eot zero": (R("--defense", "purify", "--threat", "adaptive", "--eot", "0"), "eot"),
    "run objective unknown": (R("--objective", "nosuch"), "nosuch"),
    "run metric unknown": (R("--metrics", "nosuch"), "nosuch"),
    "run lpips net": (R("--lpips", "squeeze"), "squeeze"),
    "run radius text": (R("--defense", "smooth", "--radius", "abc"), "abc"),
    "run radius without smoothing": (R("--radius", "0.25"), "smooth"),
    "run mask box": (R("--mask", "box:2,2,2,2"), "box"),
    "run executor": (R("--executor", "nosuch"), "nosuch"),
    "run option unknown": (R("--nosuch"), "--nosuch"),
    "run weights need file": (R("--model", "uformer-t"), "--weights"),
    # --- run: defenses ----------------------------------------------------------------------------------------
    "run blur huge": (R("--defense", "blur:1e9"), "does not fit"),
    "run median huge": (R("--defense", "median:99999"), "does not fit"),
    "run median even": (R("--defense", "median:4"), "odd"),
    "run jpeg quality": (R("--defense", "jpeg:200"), "jpeg"),
    "run smooth not last": (R("--defense", "smooth+jpeg"), "last"),
    "run ft pickled": (R("--defense", "ft:{pickle}"), "pickled code"),
    "run ft other model": (R("--defense", "ft:{other}"), "nafnet-nano"),
    "run ft missing file": (R("--defense", "ft:/no/such.safetensors"), "/no/such"),
    # --- run: files -------------------------------------------------------------------------------------------
    "run weights empty": (R("--weights", "{empty}"), "empty (0 bytes)"),
    "run weights garbage": (R("--weights", "{garbage}"), "garbage.pth"),
    "run weights nan": (R("--weights", "{nan}"), "NaN"),
    "run weights other model": (R("--weights", "{other}"), "nafnet-nano"),
    "run weights pickled": (R("--weights", "{pickle}"), "pickled code"),
    "run weights pickled bin": (R("--weights", "{pickle_bin}"), "pickled code"),
    "run weights missing": (R("--weights", "/no/such.pth"), "/no/such.pth"),
    "run surrogate pickled": (R("--attack", "transfer", "--surrogate", "{pickle}"), "pickled code"),
    "run data missing": (R("--data", "/no/such/dir"), "/no/such/dir"),
    "run data bomb": (R("--data", "{bombdata}"), "Mpx"),
    "run data corrupt pixels": (R("--data", "{corruptdata}"), "a.png"),
    "run target bomb": (R("--objective", "targeted:{bomb}"), "Mpx"),
    "run mask bomb": (R("--mask", "{bomb}"), "Mpx"),
    # --- run: the output folder -------------------------------------------------------------------------------
    "run out is a file": (R("--out", "{file}"), "is a file"),
    "run out through a file": (R("--out", "{file}/x"), "not a folder"),
    "run out 0-byte results.db": (R("--out", "{zerodb}"), "empty (0 bytes)"),
    "run out foreign results.db": (R("--out", "{notdb}"), "not a SQLite database"),
    # --- run --suite ------------------------------------------------------------------------------------------
    "suite missing": (["run", "--suite", "/no/such.yaml", "--out", "{new}"], "/no/such.yaml"),
    "suite seed text": (["run", "--suite", "{s_seed}", "--out", "{new}"], "s-seed.yaml:4"),
    "suite seed huge": (["run", "--suite", "{s_hugeseed}", "--out", "{new}"], "s-hugeseed.yaml:4"),
    "suite limit text": (["run", "--suite", "{s_limit}", "--out", "{new}"], "s-limit.yaml:4"),
    "suite limit zero under --limit": (["run", "--suite", "{s_limit0}", "--limit", "1", "--out", "{new}"],
                                       "s-limit0.yaml:4"),
    "suite batch text": (["run", "--suite", "{s_batch}", "--out", "{new}"], "batch_size"),
    "suite seeds fraction": (["run", "--suite", "{s_seeds}", "--out", "{new}"], "whole number"),
    "suite unknown key": (["run", "--suite", "{s_key}", "--out", "{new}"], "colour"),
    "suite syntax": (["run", "--suite", "{s_syntax}", "--out", "{new}"], "not valid YAML"),
    "suite empty list": (["run", "--suite", "{s_models}", "--out", "{new}"], "models"),
    "suite device": (["run", "--suite", "{s_device}", "--out", "{new}"], "tpu"),
    "suite python tag": (["run", "--suite", "{s_tag}", "--out", "{new}"], "refusing the tag"),
    "suite not utf-8": (["run", "--suite", "{s_latin}", "--out", "{new}"], "UTF-8"),
    "suite empty file": (["run", "--suite", "{s_empty}", "--out", "{new}"], "empty"),
    "suite and --model": (["run", "--suite", "{s_seed}", "--model", "uformer", "--out", "{new}"], "--model"),
    # --- list, load -------------------------------------------------------------------------------------------
    "list nothing": (["list"], "kind"),
    "list unknown": (["list", "nosuch"], "nosuch"),
    "command unknown": (["nosuch"], "nosuch"),
    "load unknown": (["load", "nosuch"], "nosuch"),
    "load size zero": (["load", "uformer-nano", "--size", "0"], "--size"),
    "load size negative": (["load", "uformer-nano", "--size", "-3"], "--size"),
    "load empty": (["load", "uformer-nano", "--weights", "{empty}"], "empty (0 bytes)"),
    "load pickled": (["load", "uformer-nano", "--weights", "{pickle}"], "pickled code"),
    "load nan": (["load", "uformer-nano", "--weights", "{nan}"], "NaN"),
    # --- leaderboard, check, plot -----------------------------------------------------------------------------
    "leaderboard missing": (["leaderboard", "/no/such"], "/no/such"),
    "leaderboard 0-byte db": (["leaderboard", "{zerodb}"], "empty (0 bytes)"),
    "leaderboard foreign db": (["leaderboard", "{notdb}"], "not a SQLite database"),
    "leaderboard format": (["leaderboard", "{base}", "--format", "nosuch"], "nosuch"),
    "leaderboard output through a file": (["leaderboard", "{base}", "--out", "{file}/x.md"], "not a folder"),
    "leaderboard output a folder": (["leaderboard", "{base}", "--out", "{A}"], "is a folder"),
    "leaderboard metric": (["leaderboard", "{base}", "--metric", "nosuch"], "nosuch"),
    "leaderboard rows": (["leaderboard", "{base}", "--rows", "nosuch"], "nosuch"),
    "check baseline missing": (["check", "{base}", "--baseline", "/no/such.csv"], "/no/such.csv"),
    "check baseline not a leaderboard": (["check", "{base}", "--baseline", "{badcsv}"], "bad.csv"),
    "check 0-byte db": (["check", "{zerodb}", "--baseline", "{base}/leaderboard.csv"], "empty (0 bytes)"),
    "plot metric": (["plot", "{base}", "--metric", "nosuch", "--out", "{new}"], "nosuch"),
    "plot out a file": (["plot", "{base}", "--out", "{file}"], "is a file"),
    "plot run": (["plot", "{base}", "--run", "nosuch", "--out", "{new}"], "nosuch"),
    "plot image": (["plot", "{base}", "--image", "nosuch", "--out", "{new}"], "nosuch"),
    "plot 0-byte db": (["plot", "{zerodb}", "--out", "{new}"], "empty (0 bytes)"),
    # --- synth, psf -------------------------------------------------------------------------------------------
    "synth src missing": (["synth", "--src", "/no/such", "--out", "{new}"], "/no/such"),
    "synth size zero": (["synth", "--src", "{photos}", "--out", "{new}", "--size", "0"], "--size"),
    "synth src bomb": (["synth", "--src", "{bombphotos}", "--out", "{new}", "--size", "32"], "Mpx"),
    "synth out a file": (["synth", "--src", "{photos}", "--out", "{file}"], "afile.txt"),
    "synth layout": (["synth", "--src", "{photos}", "--out", "{new}", "--layout", "nosuch"], "nosuch"),
    "synth test fraction": (["synth", "--src", "{photos}", "--out", "{new}", "--test-fraction", "2"], "fraction"),
    "psf not png": (["psf", "--out", "{new}/psf.jpg"], ".png"),
    "psf out through a file": (["psf", "--out", "{file}/x.png"], "not a folder"),
    "psf display bomb": (["psf", "--display", "{bomb}", "--out", "{new}/p.png"], "Mpx"),
    "psf decades": (["psf", "--decades", "0", "--out", "{new}/p.png"], "--decades"),
    "psf display unknown": (["psf", "--display", "nosuch", "--out", "{new}/p.png"], "nosuch"),
    # --- train, train-prior, finetune, distill ----------------------------------------------------------------
    "train training-free": (["train", "--model", "wiener", "--out", W], "no parameters to train"),
    "train crop zero": (["train", "--model", "uformer-nano", "--crop", "0", "--out", W], "--crop"),
    "train lr nan": (["train", "--model", "uformer-nano", "--lr", "nan", "--out", W], "--lr"),
    "train steps zero": (["train", "--model", "uformer-nano", "--steps", "0", "--out", W], "--steps"),
    "train out suffix": (["train", "--model", "uformer-nano", "--out", "{new}/w.pth"], ".safetensors"),
    "train model unknown": (["train", "--model", "nosuch", "--out", W], "nosuch"),
    "train-prior crop zero": (["train-prior", "--crop", "0", "--out", W], "--crop"),
    "train-prior out suffix": (["train-prior", "--out", "{new}/p.pt"], ".safetensors"),
    "train-prior data missing": (["train-prior", "--data", "/no/such", "--out", W], "/no/such"),
    "finetune steps zero": (["finetune", "--steps", "0", "--out", W], "--steps"),
    "finetune lr negative": (["finetune", "--lr", "-1", "--out", W], "--lr"),
    "finetune on ft": (["finetune", "--defense", "ft", "--out", W], "ft"),
    "finetune adv": (["finetune", "--adv", "fgsm", "--out", W], "fgsm"),
    "finetune out through a file": (["finetune", "--out", "{file}/x.safetensors"], "not a folder"),
    "distill queries zero": (["distill", "--target", "uformer-nano", "--queries", "0", "--out", W], "--queries"),
}


def _snapshot(*roots: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for root in roots for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, assets, tmp_path, monkeypatch):
    args, fragment = CASES[name]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # default outputs (udcbench-out, psf.png) would land here
    values = {key: str(value) for key, value in assets.items()} | {"new": str(tmp_path / "new")}
    argv = [arg.format(**values) for arg in args]
    before = _snapshot(assets["A"], tmp_path)
    result = runner.invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (argv, result.output, result.exception)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0], (fragment, lines[0])
    assert FIX.search(lines[0].removeprefix("error:")), f"no fix named: {lines[0]}"
    assert _snapshot(assets["A"], tmp_path) == before, "something was created or changed"
    assert not assets["marker"].exists(), "a pickled payload ran"


def test_the_catalogue_covers_every_command():
    commands = {args[0] for args, _ in CASES.values()}
    assert commands >= {"run", "list", "load", "leaderboard", "check", "plot", "synth", "psf", "train",
                        "train-prior", "finetune"}
    assert any("--suite" in args for args, _ in CASES.values())
    assert len(CASES) >= 80


@pytest.mark.parametrize("argv", [
    ["run", *FAST, "--out", "{ro}/run"],
    ["leaderboard", "{base}", "--out", "{ro}/table.md"],
    ["plot", "{base}", "--out", "{ro}/plots"],
    ["psf", "--out", "{ro}/psf.png"],
    ["synth", "--src", "{photos}", "--out", "{ro}/synth"],
    ["train", "--model", "uformer-nano", "--out", "{ro}/w.safetensors"],
])
def test_an_output_folder_that_is_not_writable_is_refused_before_any_work(argv, assets, tmp_path, monkeypatch):
    """A read-only folder (simulated: the tests may run as root, whom chmod does not stop) is refused up front."""
    import udcbench.outputs

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real = os.access
    monkeypatch.setattr(udcbench.outputs.os, "access",
                        lambda path, mode: False if Path(path) == read_only else real(path, mode))
    values = {key: str(value) for key, value in assets.items()} | {"ro": str(read_only)}
    result = runner.invoke(app, [arg.format(**values) for arg in argv])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "is not writable" in lines[0] and "choose another" in lines[0], lines[0]
    assert list(read_only.iterdir()) == []
