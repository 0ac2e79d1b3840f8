"""The small runner every figure script shares: arguments, datasets, Trainer, resolved config, TensorBoard scalars.

Each experiment is one readable script over the library (the library never imports the experiments). A script
defines a dataclass config, calls :func:`parse_config` (command-line flags for every field, ``--quick`` for a
CPU-sized run), builds datamodules with :func:`make_datamodule` and Trainers with :func:`make_trainer`, and writes
its resolved config, TensorBoard logs and figure side by side under ``runs/<figure>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO, TypeVar, get_args, get_origin, get_type_hints

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python experiments/figN.py` from a checkout
    sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402

from datamodules import NoisyCIFAR10, NoisyDataModule, NoisyDigits, NoisyImageFolder, NoisyMNIST  # noqa: E402
from datamodules.checks import check_bool, check_int, check_real, check_seed, check_str  # noqa: E402

C = TypeVar("C")

#: The CIFAR-10 JPEGs shipped for offline work (see ../shared/data/README.md), relative to the repository.
SHARED_CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

#: The paper's noise variants, by the names its figures use.
VARIANTS: dict[str, dict[str, Any]] = {
    "real": dict(noise="none"),
    "randX": dict(noise="random_inputs"),
    "randY": dict(noise="random_labels"),
}

#: String choices of the configs' fields (``Literal`` types: :func:`parse_config` reads the choices from them).
Dataset = Literal["mnist", "cifar10", "cifar10-jpg", "digits"]
Variant = Literal["real", "randX", "randY"]
NoiseKind = Literal["randY", "randX"]
Model = Literal["cnn", "mlp"]
Accelerator = Literal["auto", "cpu", "gpu"]
Precision = Literal["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"]


@dataclasses.dataclass
class RunArgs:
    """Arguments every experiment takes (besides its own config)."""

    accelerator: Accelerator = "auto"  # resolved by parse_config to "cpu" or "gpu"
    devices: int = 1  # processes per node (GPUs, or CPU processes); more than one trains under DDP
    gpus: int = 0  # shorthand for --accelerator gpu --devices N (parse_config sets it to the GPUs used per node)
    nodes: int = 1  # Lightning's num_nodes (launch one process per GPU per node, e.g. with torchrun or SLURM)
    out: str = "runs"  # root of all outputs
    precision: Precision = "32-true"  # Trainer precision; LASS always runs in float32 whatever this is
    quick: bool = False  # a CPU-sized run on real data that finishes in minutes


#: What each flag means, by field name, for the fields many configs share. A field's own
#: ``dataclasses.field(metadata={"help": ...})`` wins; the field's trailing comment in its class is appended.
FIELD_HELP: dict[str, str] = {
    "accelerator": "where to train: cpu, gpu, or auto (a CUDA GPU when there is one, else the CPU)",
    "devices": "processes per node: GPUs with --accelerator gpu, CPU processes with --accelerator cpu; "
               "more than 1 trains under DDP (Lightning re-launches the script once per extra process)",
    "gpus": "shorthand for --accelerator gpu --devices N (0: use --accelerator and --devices)",
    "nodes": "machines (Lightning's num_nodes); launch the processes of every node yourself (torchrun, SLURM)",
    "out": "root folder of all outputs (created if missing; must be writable)",
    "precision": "Trainer precision; LASS always searches in float32",
    "quick": "a CPU-sized run that finishes in minutes; explicit flags still override it",
    "dataset": "the datamodule",
    "data_dir": "where the datasets are (downloaded or extracted there when missing)",
    "variants": "the data variants trained: real, randX (random inputs), randY (random labels)",
    "noises": "noise kinds: randY (random labels), randX (random inputs)",
    "fractions": "noise fractions of the training set, each in [0, 1] (0 = real data)",
    "model": "the network: cnn (the paper's CIFAR-10 CNN) or mlp",
    "width": "CNN width multiplier (1.0 = the paper's 200 channels)",
    "hidden": "MLP hidden layer widths",
    "hidden_units": "units per hidden layer, one run each",
    "layers": "hidden layers of the MLP",
    "epochs": "training epochs",
    "max_epochs": "epoch cap of each run",
    "batch_size": "minibatch size",
    "lr": "SGD learning rate",
    "momentum": "SGD momentum",
    "lr_halving_epochs": "halve the learning rate every this many epochs (0 = constant)",
    "subset": "training examples used (0 = all)",
    "examples": "training examples",
    "seed": "seed of the initialisation, the data order and the noise",
    "seeds": "seeds, one run per seed and condition",
    "csr_samples": "validation examples searched by LASS for the critical sample ratio",
    "csr_every": "epochs between CSR measurements",
    "radius": "LASS radius r on the 0-255 pixel scale (step and noise keep the paper's ratios 0.25/0.3, 0.2/0.3)",
    "max_iter": "LASS iterations per sample",
    "steps": "SGD steps T of each run",
    "window": "steps measured at the end of each run",
    "measure_every": "measure every this many steps of the window",
    "norm": "norm of the input gradients",
    "engine": "how the protocol runs: functional (the library's functions) or callback (a Trainer + LossSensitivity)",
    "crop": "random-crop padding of the CNN's input (0 = none)",
    "val_every": "validate every this many epochs (0 = after the last epoch only)",
    "max_filters": "filters shown per variant (0 = all)",
    "one_class_per_example": "also run the 'as many classes as examples' variants",
    "dataset_sizes": "training-set sizes of the size sweep, one run each",
    "runs": "E, the independent runs (initialisation and data order) of the ensemble",
    "num_models": "E, models trained on random subsets per (fraction, seed)",
    "subset_ratio": "share of the training set each model trains on",
    "recompute_samples": "clean training images the BatchNorm statistics are recomputed on",
    "regularisers": "the regularisers swept",
    "dropout": "dropout rates swept",
    "input_dropout": "input dropout rates swept",
    "input_noise": "input Gaussian noise std swept (model-input units)",
    "hidden_noise": "hidden-layer Gaussian noise std swept",
    "weight_decay": "weight decay values swept",
    "adversarial": "adversarial loss weights w swept",
    "adversarial_dropout": "dropout combined with adversarial training",
    "adversarial_max_iter": "LASS steps per training batch of adversarial training",
    "adversarial_radius": "LASS radius r of adversarial training, 0-255 pixel units (step and noise keep the paper's ratios)",
}

#: Ranges of the fields many configs share, by field name (keys of :func:`check_int` / :func:`check_real`:
#: ``min``, ``max``, ``strict_min``, ``strict_max``; ``repeats`` lets a list repeat a value). A field's own metadata
#: wins. Integers named ``seed``/``seeds`` are checked as seeds.
FIELD_RULES: dict[str, dict[str, Any]] = {
    "devices": dict(min=1), "gpus": dict(min=0), "nodes": dict(min=1),
    "epochs": dict(min=1), "max_epochs": dict(min=1), "batch_size": dict(min=1), "examples": dict(min=1),
    "lr": dict(min=0.0, strict_min=True), "momentum": dict(min=0.0, max=1.0, strict_max=True),
    "width": dict(min=0.0, strict_min=True), "hidden": dict(min=1, repeats=True), "hidden_units": dict(min=1),
    "layers": dict(min=1), "lr_halving_epochs": dict(min=0), "subset": dict(min=0),
    "fractions": dict(min=0.0, max=1.0), "csr_samples": dict(min=1), "csr_every": dict(min=1),
    "radius": dict(min=0.0, strict_min=True), "max_iter": dict(min=1), "steps": dict(min=1), "window": dict(min=1),
    "measure_every": dict(min=1), "crop": dict(min=0), "val_every": dict(min=0), "max_filters": dict(min=0),
    "dataset_sizes": dict(min=1), "runs": dict(min=1), "num_models": dict(min=2),
    "subset_ratio": dict(min=0.0, max=1.0, strict_min=True, strict_max=True), "recompute_samples": dict(min=1),
    "dropout": dict(min=0.0, max=1.0, strict_max=True), "input_dropout": dict(min=0.0, max=1.0, strict_max=True),
    "input_noise": dict(min=0.0), "hidden_noise": dict(min=0.0), "weight_decay": dict(min=0.0),
    "adversarial": dict(min=0.0, max=1.0), "adversarial_dropout": dict(min=0.0, max=1.0, strict_max=True),
    "adversarial_max_iter": dict(min=1), "adversarial_radius": dict(min=0.0, strict_min=True),
}


class UsageError(SystemExit):
    """A bad command line: ``str(error)`` is the message, the exit status is 2 (argparse's)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 2


class _Parser(argparse.ArgumentParser):
    """argparse that prints usage and ``error: ...`` to stderr and raises :class:`UsageError` (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)


@dataclasses.dataclass(frozen=True)
class _Option:
    """One flag: its field, its element type, its choices (from ``Literal``) and its rules."""

    field: dataclasses.Field
    flag: str
    kind: type
    sequence: bool
    choices: tuple[str, ...] | None
    rules: dict[str, Any]
    default: Any


def _options(cls: type) -> list[_Option]:
    """The flags of a dataclass, typed from its resolved annotations."""
    hints = get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        tp, sequence = hints[f.name], False
        if get_origin(tp) in (tuple, list):
            tp, sequence = get_args(tp)[0], True
        choices = None
        if get_origin(tp) is Literal:
            choices, tp = tuple(get_args(tp)), str
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if tp not in (int, float, str, bool):
            raise TypeError(f"{cls.__name__}.{f.name}: parse_config handles int, float, str, bool, Literal and "
                            f"tuples of them, got {hints[f.name]!r}")
        rules = {**FIELD_RULES.get(f.name, {}), **{k: v for k, v in f.metadata.items() if k != "help"}}
        options.append(_Option(f, "--" + f.name.replace("_", "-"), tp, sequence, choices, rules, default))
    return options


def _comments(cls: type) -> dict[str, str]:
    """``{field: its trailing comment}`` in the class body of ``cls`` and of its dataclass bases."""
    import inspect
    import io
    import tokenize

    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        line_field: dict[int, str] = {}
        for line_no, line in enumerate(source.splitlines(), 1):
            name = line.strip().split(":", 1)[0]
            if name.isidentifier() and name in {f.name for f in dataclasses.fields(klass)}:
                line_field[line_no] = name
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
                found[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return found


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


def _help(option: _Option, comment: str | None, quick: dict[str, Any]) -> str:
    name = option.field.name
    text = option.field.metadata.get("help") or FIELD_HELP.get(name, "")
    if comment and option.choices and " | " in comment:
        comment = None  # a list of the choices: they are shown below
    if comment:
        words = set(re.findall(r"[a-z0-9]+", comment.lower()))
        if not text:
            text = comment
        elif len(words & set(re.findall(r"[a-z0-9]+", text.lower()))) < len(words) / 2:  # says something new
            text = f"{text} ({comment})"
    if option.choices:
        text += f"; {'any of' if option.sequence else 'one of'} {', '.join(option.choices)}"
    text += f" (default: {_show(option.default)}" + (f"; --quick: {_show(quick[name])}" if name in quick else "") + ")"
    return text.replace("%", "%%")


def _check(option: _Option, value: Any) -> Any:
    """``value`` checked against the option's choices and rules (the checks of ``datamodules/checks.py``), with
    the flag's name in the message; raises ValueError or TypeError."""
    items = list(value) if option.sequence else [value]
    flag = option.flag
    if option.sequence and not items:
        raise ValueError(f"{flag} needs at least one value")
    if option.choices is not None:
        bad = [v for v in items if v not in option.choices]
        if bad:
            if option.sequence:
                raise ValueError(f"{flag} must be among {sorted(option.choices)}, got {items}")
            alternatives = ", ".join(option.choices[:-1]) + f" or {option.choices[-1]}"
            raise ValueError(f"{flag} must be {alternatives}, got {value!r}")
    r = option.rules
    for v in items:
        if option.kind is bool:
            check_bool(v, flag)
        elif option.field.name in ("seed", "seeds"):
            check_seed(v, flag)
        elif option.kind is int:
            check_int(v, flag, minimum=r.get("min"))
            if "max" in r and v > r["max"]:
                raise ValueError(f"`{flag}` must be an int <= {r['max']}, got {v}")
        elif option.kind is float:
            check_real(v, flag, r.get("min"), r.get("max"), strict_minimum=r.get("strict_min", False),
                       strict_maximum=r.get("strict_max", False))
        elif option.kind is str and option.choices is None:
            check_str(v, flag)
    if option.sequence and not r.get("repeats") and len(set(items)) < len(items):
        raise ValueError(f"{flag} lists a value twice, got {' '.join(map(str, items))}")
    return tuple(items) if option.sequence else value


def _add_flag(group: argparse._ArgumentGroup, option: _Option, help_text: str) -> None:
    if option.kind is bool and not option.sequence:
        group.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        group.add_argument(option.flag, nargs="+" if option.sequence else None, type=option.kind, default=None,
                           help=help_text, metavar=option.field.name.upper() if option.choices else None)


def is_rank_zero() -> bool:
    """Whether this is the first process, from the launcher's environment (Lightning, torchrun or SLURM set it for
    the processes they start; a script run by hand is rank 0)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _check_out(parser: _Parser, out: str) -> None:
    """``--out`` exists (created here) and is a writable folder, or a usage error."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {out!r} cannot be created ({e.strerror or e}); pass a folder you can write to")
    if not os.access(path, os.W_OK | os.X_OK):
        parser.error(f"--out {out!r} is not writable; pass a folder you can write to")


def _check_devices(parser: _Parser, run: RunArgs, explicit: set[str], script: str,
                   single_process: str | None, argv: list[str] | None) -> RunArgs:
    """Resolve ``--accelerator``/``--devices``/``--gpus`` and check this machine has the devices asked for."""
    accelerator, devices = run.accelerator, run.devices
    if run.gpus:
        if accelerator == "cpu":
            parser.error(f"--gpus {run.gpus} asks for GPUs, --accelerator cpu for the CPU: pass one of them")
        if "devices" in explicit and devices != run.gpus:
            parser.error(f"--gpus {run.gpus} is --accelerator gpu --devices {run.gpus}, but --devices {devices} "
                         "was passed too: pass one of them")
        accelerator, devices = "gpu", run.gpus
    cuda = torch.cuda.is_available()
    if accelerator == "auto":
        accelerator = "gpu" if cuda else "cpu"
    if accelerator == "gpu":
        if not cuda:
            parser.error(
                f"{'--gpus ' + str(run.gpus) if run.gpus else '--accelerator gpu'} needs a CUDA GPU, and this machine "
                f"has none that torch can use (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda or 'none'}: torch.cuda.is_available() is False). Run on the CPU with "
                "--accelerator cpu (add --devices N for N processes under DDP)"
            )
        if devices > torch.cuda.device_count():
            parser.error(f"--devices {devices} asks for {devices} GPUs per node, this machine has "
                         f"{torch.cuda.device_count()}; pass --devices {torch.cuda.device_count()} or fewer")
    processes = devices * run.nodes
    if processes > 1 and single_process:
        parser.error(f"{script} runs in one process ({single_process}), so it cannot use --devices {devices}"
                     f"{f' --nodes {run.nodes}' if run.nodes > 1 else ''}; pass --devices 1"
                     f"{' (with --accelerator gpu for one GPU)' if accelerator == 'gpu' else ''}")
    if processes > 1 and argv is not None and list(argv) != sys.argv[1:]:
        parser.error(f"--devices {devices} trains under DDP, and Lightning re-launches the script with its own command "
                     f"line for every extra process: run it as `python experiments/{script}.py ...`, not main([...])")
    gpus = devices if accelerator == "gpu" else 0
    return dataclasses.replace(run, accelerator=accelerator, devices=devices, gpus=gpus)


def parse_config(config_cls: type[C], quick: dict[str, Any], description: str, argv: list[str] | None = None, *,
                 figure: str | None = None, single_process: str | None = None) -> tuple[C, RunArgs]:
    """Command-line flags for every field of ``config_cls`` and of :class:`RunArgs`; ``--quick`` applies ``quick``
    first, so explicit flags still override it.

    Everything is checked here, before any data work, and a bad value is a usage error (exit status 2, the message
    on stderr, :class:`UsageError`): the choices of ``Literal`` fields, the ranges of :data:`FIELD_RULES` (or of a
    field's ``metadata``), seeds, ``--out`` (created, must be writable) and the devices (a GPU must be there;
    ``single_process``, the reason a script trains outside a Trainer, refuses ``--devices`` above 1).

    Args:
        config_cls: the experiment's dataclass config.
        quick: the values ``--quick`` sets.
        description: the first line of ``--help``.
        argv: the arguments (default: ``sys.argv[1:]``).
        figure: the script's output folder under ``--out``; when given, the figure files of an earlier run there
            are moved to ``previous/<timestamp>/`` (see :func:`archive_previous`).
        single_process: why the script cannot run several processes (None: it can, through DDP).
    """
    script = figure or Path(sys.argv[0]).stem
    parser = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = [(config_cls, parser.add_argument_group("experiment"), quick),
                (RunArgs, parser.add_argument_group("run"), {})]
    specs: list[tuple[type, list[_Option]]] = []
    for cls, group, shown_quick in sections:
        comments, options = _comments(cls), _options(cls)
        for option in options:
            _add_flag(group, option, _help(option, comments.get(option.field.name), shown_quick))
        specs.append((cls, options))
    ns = vars(parser.parse_args(argv))
    explicit = {k for k, v in ns.items() if v is not None}
    (_, config_options), (_, run_options) = specs
    run_values = {o.field.name: ns[o.field.name] for o in run_options if ns[o.field.name] is not None}
    values: dict[str, Any] = dict(quick) if run_values.get("quick") else {}
    values.update({o.field.name: ns[o.field.name] for o in config_options if ns[o.field.name] is not None})
    for options, given in ((config_options, values), (run_options, run_values)):
        for option in options:
            name = option.field.name
            try:
                given[name] = _check(option, given.get(name, option.default))
            except (TypeError, ValueError) as e:
                parser.error(str(e).replace("`", ""))
    config, run = config_cls(**values), RunArgs(**run_values)
    data_dir = getattr(config, "data_dir", None)
    if isinstance(data_dir, str) and Path(data_dir).exists() and not Path(data_dir).is_dir():
        parser.error(f"--data-dir {data_dir!r} is a file, not a folder")
    run = _check_devices(parser, run, explicit, script, single_process, argv)
    _check_out(parser, run.out)
    if figure is not None and is_rank_zero():
        archive_previous(run, figure)
    return config, run


def resolve_cifar_folder(data_dir: str) -> Path:
    """The CIFAR-10 JPEG folder under ``data_dir``, extracted from the shared archive on first use."""
    folder = Path(data_dir) / "cifar10-jpg"
    if (folder / "train").is_dir():
        return folder
    if not SHARED_CIFAR_ARCHIVE.exists():
        raise SystemExit(
            f"no CIFAR-10 JPEG folder at {folder} and no archive at {SHARED_CIFAR_ARCHIVE}; use --dataset cifar10 "
            "with torchvision's files in --data-dir, or --dataset digits"
        )
    import tarfile

    print(f"extracting {SHARED_CIFAR_ARCHIVE} to {data_dir} (once)")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with tarfile.open(SHARED_CIFAR_ARCHIVE) as tar:
        tar.extractall(data_dir, filter="data")
    return folder


def make_datamodule(dataset: str, data_dir: str, variant: str, **kwargs: Any) -> NoisyDataModule:
    """A datamodule by name: ``mnist``, ``cifar10`` (torchvision files), ``cifar10-jpg`` (the JPEG folder),
    ``digits``; ``variant`` is ``real``, ``randX`` or ``randY`` (see :data:`VARIANTS`); kwargs override."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    options = {**VARIANTS[variant], **kwargs}
    if options.get("noise") == "none":
        options.pop("noise_fraction", None)
    if dataset == "mnist":
        return NoisyMNIST(data_dir, download=True, **options)
    if dataset == "cifar10":
        return NoisyCIFAR10(data_dir, download=True, **options)
    if dataset == "cifar10-jpg":
        return NoisyImageFolder(str(resolve_cifar_folder(data_dir)), val_dir="test", **options)
    if dataset == "digits":
        return NoisyDigits(data_dir, **options)
    raise SystemExit(f"unknown dataset {dataset!r}; expected mnist, cifar10, cifar10-jpg or digits")


def make_trainer(run: RunArgs, figure: str, name: str, epochs: int, callbacks: list, **kwargs: Any) -> pl.Trainer:
    """A Trainer that logs to ``<out>/<figure>/<name>`` in TensorBoard; DDP when more than one process.

    On a terminal Lightning's progress bar shows the epoch; otherwise (a log file, CI) :class:`EpochProgress` prints
    a line per block of epochs with the elapsed and the expected time. Lightning's banners are kept quiet
    (:func:`quiet_lightning`).
    """
    distributed = run.devices > 1 or run.nodes > 1
    terminal = sys.stderr.isatty()
    progress = [] if terminal else [EpochProgress(f"[{figure}] {name}")]
    with quiet_lightning():
        return pl.Trainer(
            accelerator="gpu" if run.accelerator == "gpu" else "cpu",
            devices=run.devices,
            num_nodes=run.nodes,
            strategy="ddp" if distributed else "auto",
            precision=run.precision,
            max_epochs=epochs,
            logger=TensorBoardLogger(os.path.join(run.out, figure), name=name, default_hp_metric=False),
            callbacks=[*callbacks, *progress],
            enable_progress_bar=terminal,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            **kwargs,
        )


def torch_device(run: RunArgs) -> torch.device:
    """The device of a script that trains outside a Trainer (``--accelerator`` resolved by :func:`parse_config`)."""
    return torch.device("cuda" if run.accelerator == "gpu" else "cpu")


#: Lightning's messages that say nothing about an experiment: info banners go through these loggers (set to WARNING
#: inside :func:`quiet_lightning`), and these warnings, which the scripts trigger knowingly, are ignored there.
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
_LIGHTNING_NOISE = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # epoch-level logging here
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own pytree code on torch >= 2.6
    r".*does not have many workers which may be a bottleneck",  # in-memory tensors: workers would only cost
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banners ("GPU available: ...", "💡 Tip: ...", "`Trainer.fit` stopped ...") and the few
    warnings an experiment triggers knowingly (:data:`_LIGHTNING_NOISE`) while the block runs; every other
    warning, ours or Lightning's, still shows. Levels and filters are restored on exit."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for message in _LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def format_duration(seconds: float) -> str:
    """``12 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Progress of one long job of ``total`` units (epochs, SGD steps, runs): on a terminal (``bar=True`` and a
    tty) a bar redrawn in place, otherwise a line at the first unit (the first estimate) and then every
    ``max(1, total // blocks)`` units and at the end, each with the elapsed time and the expected duration of the
    whole job (elapsed / done * total). Prints on rank 0 only.

    Args:
        prefix: the start of every line, e.g. ``"[fig9] real"``.
        total: units of work in the job.
        unit: their name (``"epoch"``, ``"step"``, ``"run"``).
        stream: where to print (default: ``sys.stdout``).
        bar: a bar when ``stream`` is a terminal (lines otherwise).
        blocks: lines per job (besides the first), at most.
        quiet_below: a job expected, after its first unit, to take less than this many seconds prints nothing
            (short runs: the line per condition is enough).

    Example:
        >>> import io
        >>> p = Progress("[fig0] real", 4, "epoch", stream=io.StringIO(), blocks=2)
        >>> p.update(1); p.update(2); p.update(3); p.update(4)
        >>> len(p.stream.getvalue().splitlines())  # epochs 1, 2 and 4
        3
    """

    def __init__(self, prefix: str, total: int, unit: str, *, stream: TextIO | None = None, bar: bool = False,
                 blocks: int = 10, quiet_below: float = 0.0) -> None:
        self.prefix, self.total, self.unit = prefix, max(1, int(total)), unit
        self.stream = stream if stream is not None else sys.stdout
        self.bar = bar and self.stream.isatty()
        self.every = max(1, self.total // max(1, blocks))
        self.quiet_below = quiet_below
        self.enabled = is_rank_zero()
        self.start = time.perf_counter()
        self._last_bar = 0.0
        self._first = True

    def update(self, done: int, note: str = "") -> None:
        """``done`` units finished (of ``total``); ``note`` is appended to the line."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        expected = elapsed / max(done, 1) * self.total
        if self._first:
            self._first = False
            if expected < self.quiet_below:
                self.enabled = False
                return
        tail = f"{format_duration(elapsed)} elapsed, ~{format_duration(expected)} expected"
        tail += f"; {note}" if note else ""
        if self.bar:
            now = time.perf_counter()
            if done < self.total and now - self._last_bar < 0.2:
                return
            self._last_bar = now
            filled = round(20 * done / self.total)
            end = "\n" if done >= self.total else ""
            self.stream.write(f"\r{self.prefix} [{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} "
                              f"{self.unit}s, {tail}\033[K{end}")
            self.stream.flush()
        elif done == 1 or done % self.every == 0 or done >= self.total:
            sep = " " if self.prefix.endswith("]") else ": "
            print(f"{self.prefix}{sep}{self.unit} {done}/{self.total} ({done / self.total:.0%}), {tail}",
                  file=self.stream, flush=True)

    def print(self, message: str) -> None:
        """Print a line of the job's own (a result) without tearing the bar: it is redrawn at the next update."""
        if self.bar and self.enabled:
            self.stream.write("\r\033[K")
            self._last_bar = 0.0
        print(message, file=self.stream, flush=True)


class EpochProgress(pl.Callback):
    """A :class:`Progress` line per block of training epochs (the first epoch gives the first estimate), for runs
    without Lightning's bar (output to a file or a pipe); silent for a run expected to take under ``quiet_below``
    seconds."""

    def __init__(self, prefix: str, blocks: int = 10, quiet_below: float = 20.0) -> None:
        self.prefix, self.blocks, self.quiet_below = prefix, blocks, quiet_below
        self._progress: Progress | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        self._progress = Progress(self.prefix, total, "epoch", blocks=self.blocks, quiet_below=self.quiet_below)
        self._progress.enabled = trainer.is_global_zero

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._progress is None:
            return
        acc = trainer.callback_metrics.get("train/acc")
        self._progress.update(trainer.current_epoch + 1, "" if acc is None else f"train acc {float(acc):.3f}")


#: The files of a figure folder that one sweep draws (its PNGs, summaries, resolved config), moved aside together.
_FIGURE_FILES = ("*.png", "*.json", "*.md", "*.pt", "events.out.tfevents.*", "summary")


def archive_previous(run: RunArgs, figure: str) -> Path | None:
    """Move the figure files of an earlier run of ``figure`` (``<out>/<figure>/*.png``, its JSON summaries,
    tables, tensors, top-level TensorBoard scalars and ``summary/``) to ``<out>/<figure>/previous/<timestamp>/``,
    the timestamp being when that figure was written; says so in a printed line. A figure thus always matches the
    logs it was drawn from, even when a re-run trains fewer variants. The per-run TensorBoard folders stay (they are
    versioned: ``version_N``). Returns the folder, or None when there was nothing to move."""
    folder = Path(run.out) / figure
    if not folder.is_dir():
        return None
    old = sorted({p for pattern in _FIGURE_FILES for p in folder.glob(pattern)})
    if not old:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in old)))
    target = folder / "previous" / stamp
    suffix = 1
    while target.exists():
        suffix += 1
        target = folder / "previous" / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    for path in old:
        shutil.move(str(path), str(target / path.name))
    print(f"[{figure}] moved the previous run's figure and summaries ({', '.join(p.name for p in old)}) to {target}",
          flush=True)
    return target


def output_folder(run: RunArgs, figure: str, config: Any) -> Path:
    """``<--out>/<figure>``, created, with the resolved configuration in its ``config.json``: the output folder of a
    script that trains outside a Trainer (one process; Trainer runs write theirs with :func:`save_config`)."""
    out = Path(run.out) / figure
    out.mkdir(parents=True, exist_ok=True)
    blob = {"config": dataclasses.asdict(config), "run": dataclasses.asdict(run), "torch": torch.__version__}
    (out / "config.json").write_text(json.dumps(blob, indent=2, default=str))
    return out


def write_table(out: Path, rows: list[dict], table: str) -> None:
    """``results.json`` (the rows) and ``table.md`` (the table, also printed) in ``out``."""
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "table.md").write_text(table)
    print(table)


def save_config(trainer: pl.Trainer, config: Any, run: RunArgs, **extra: Any) -> None:
    """Write the resolved configuration beside the run's TensorBoard logs (rank 0 only)."""
    if trainer.global_rank != 0 or trainer.logger is None:
        return
    path = Path(trainer.logger.log_dir)
    path.mkdir(parents=True, exist_ok=True)
    blob = {"config": dataclasses.asdict(config), "run": dataclasses.asdict(run), "torch": torch.__version__,
            "lightning": pl.__version__, "world_size": trainer.world_size, **extra}
    (path / "config.json").write_text(json.dumps(blob, indent=2, default=str))


def read_scalars(log_dir: str | os.PathLike, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one scalar tag, read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


class EpochMetrics(pl.Callback):
    """Records the Trainer's epoch-level metrics (``trainer.callback_metrics``, already synced across ranks) once
    per training epoch, so a script can plot curves without re-reading the event files.

    An epoch's row is taken when the *next* epoch starts (or training ends): only then has Lightning folded in what
    the LightningModule logs in its own ``on_train_epoch_end``, which runs after the callbacks' hook.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.is_global_zero = True
        self._pending: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def _flush(self, trainer: pl.Trainer) -> None:
        if self._pending is None:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        row["epoch"] = self._pending
        self.rows.append(row)
        self._pending = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"] + 1, r[key]) for r in self.rows if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]


def plot_panels(path: Path, panels: list[tuple[str, dict[str, tuple[list, list]]]], xlabel: str = "epoch",
                title: str = "", logx: bool = False, ncols: int | None = None) -> None:
    """Line plots, one row (or rows of ``ncols``): each panel is ``(ylabel, {curve name: (xs, ys)})``, or
    ``(xs, ys, low, high)`` to shade a band (see :func:`seed_band`). Saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (ylabel, curves) in zip(axes.flat, panels):
        for name, curve in curves.items():
            (line,) = ax.plot(curve[0], curve[1], marker="o", markersize=3, label=name)
            if len(curve) == 4:
                ax.fill_between(curve[0], curve[2], curve[3], color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_classifier(kind: str, dm: NoisyDataModule, *, seed: int, width: float = 1.0,
                     hidden: tuple[int, ...] = (4096, 4096), **kwargs: Any) -> pl.LightningModule:
    """The paper's CNN (``kind="cnn"``) or MLP (``"mlp"``) for a datamodule, initialised from ``seed`` (the global
    RNGs are seeded here, so the initialisation, dropout and noise of the run that follows are reproducible);
    kwargs go to the classifier (optimisation and regularisers)."""
    from models import CNNClassifier, MLPClassifier

    pl.seed_everything(seed, workers=True, verbose=False)

    if kind == "cnn":
        return CNNClassifier(dm.input_shape, dm.num_classes, width=width, **kwargs)
    if kind == "mlp":
        return MLPClassifier(dm.input_shape, dm.num_classes, hidden=hidden, **kwargs)
    raise SystemExit(f"--model must be cnn or mlp, got {kind!r}")


def fit(run: RunArgs, figure: str, name: str, config: Any, dm: NoisyDataModule, model: pl.LightningModule,
        epochs: int, callbacks: list | None = None, **extra: Any) -> EpochMetrics:
    """Train one model, logging to ``<out>/<figure>/<name>``; returns its per-epoch metrics."""
    metrics = EpochMetrics()
    trainer = make_trainer(run, figure, name, epochs, [*(callbacks or []), metrics])
    save_config(trainer, config, run, name=name, **extra)
    with quiet_lightning():
        trainer.fit(model, dm)
    metrics.is_global_zero = trainer.global_rank == 0
    return metrics

class StopWhenReached(pl.Callback):
    """Stops training at the end of the first training epoch whose ``monitor`` (an epoch-level metric such as
    ``train/acc``) is at least ``target``, and records how many epochs that took.

    :attr:`reached_epoch` is the number of epochs trained when the target was first met (1 = after the first
    epoch), or None when training ended (at ``max_epochs``) without meeting it. The decision goes through
    ``trainer.strategy.reduce_boolean_decision``, so every DDP rank stops at the same epoch.

    Example:
        >>> stop = StopWhenReached("train/acc", 1.0)
        >>> stop.reached_epoch is None
        True
    """

    def __init__(self, monitor: str = "train/acc", target: float = 1.0) -> None:
        self.monitor = monitor
        self.target = target
        self.reached_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, target=self.target)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reached_epoch is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        reached = value is not None and float(value) >= self.target
        if trainer.strategy.reduce_boolean_decision(reached, all=False):
            self.reached_epoch = trainer.current_epoch + 1
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"reached_epoch": self.reached_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached_epoch = state_dict["reached_epoch"]


def noise_name(variant: str, fraction: float) -> str:
    """A short run name for a noise level: ``real`` for no noise, else e.g. ``randY0.4``."""
    return "real" if variant == "real" or fraction == 0 else f"{variant}{fraction:g}"


def noisy_datamodule(dataset: str, data_dir: str, variant: str, fraction: float, **kwargs: Any) -> NoisyDataModule:
    """:func:`make_datamodule` for a noise level: ``fraction`` of the training set corrupted the ``variant`` way
    (``randX`` or ``randY``); fraction 0 (or ``variant="real"``) is the clean dataset."""
    if not 0.0 <= fraction <= 1.0:
        raise SystemExit(f"noise fractions must be in [0, 1], got {fraction}")
    if variant == "real" or fraction == 0:
        return make_datamodule(dataset, data_dir, "real", **kwargs)
    return make_datamodule(dataset, data_dir, variant, noise_fraction=fraction, **kwargs)


def write_summary(run: RunArgs, figure: str, scalars: dict[str, list[tuple[int, float]]], results: Any = None) -> Path:
    """Log a figure's own curves (e.g. accuracy against hidden units) to TensorBoard under
    ``<out>/<figure>/summary`` as ``tag -> [(x, y), ...]`` with x as the step, and, when given, write ``results``
    as JSON beside them. Call on rank 0 only. Returns the summary folder."""
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(run.out) / figure / "summary"
    for old in folder.glob("events.out.tfevents.*"):  # the summary of the latest sweep only, like its PNG
        old.unlink()
    writer = SummaryWriter(str(folder))
    try:
        for tag, points in scalars.items():
            for x, y in points:
                writer.add_scalar(tag, y, global_step=x)
    finally:
        writer.close()
    if results is not None:
        (Path(run.out) / figure / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return folder


def seed_band(curves: list[tuple[list, list]]) -> tuple[list, list, list, list]:
    """One curve per seed ``(xs, ys)`` -> ``(xs, mean, min, max)`` over the seeds, at the x values every seed has
    (for :func:`plot_panels`: the mean with a min-max band)."""
    common = sorted(set.intersection(*(set(xs) for xs, _ in curves))) if curves else []
    table = [[dict(zip(xs, ys))[x] for xs, ys in curves] for x in common]  # [X, seeds]
    return (common, [sum(v) / len(v) for v in table], [min(v) for v in table], [max(v) for v in table])


def mean_std(values: list[float]) -> str:
    """``"m ± sd"`` (sample std) of per-seed values for a results table; just ``"m"`` for one value."""
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.3f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.3f} ± {sd:.3f}"
