"""The ``comptlib`` command line. Its run options are generated from :class:`~comptlib.config.RunConfig`."""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from importlib.metadata import version as _version
from pathlib import Path
from typing import Annotated, Any, Optional

import attrs
import typer

from comptlib.config import ConfigError, RunConfig

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep, not spin, on shared cores
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards" bars on every save

app = typer.Typer(
    name="comptlib",
    help="Chain-of-Models Pre-Training: grow and distil a model family in ascending size.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"comptlib {_version('comptlib')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Chain-of-Models Pre-Training (CoM-PT) for vision and language model families."""


def _fail(message: str, debug: bool, err: BaseException | None = None, code: int = 2) -> None:
    """One paragraph, exit code 2 (bad input) or ``code``, no traceback unless --debug."""
    if debug and err is not None:
        raise err
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]Error:[/bold red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _friendly(command: Callable[..., None]) -> Callable[..., None]:
    """comptlib's own errors become one message: exit 2 for a wrong input, 1 for a failed run or a disk fault.

    comptlib's errors name the field, model, file or path; anything else is
    a bug and keeps its traceback.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from comptlib.errors import ComptError, DivergenceError

        debug = kwargs.get("debug", False)
        try:
            command(*args, **kwargs)
        except ConfigError as err:
            _fail(err.for_cli(), debug, err)
        except DivergenceError as err:  # a run that failed, not bad input
            _fail(str(err), debug, err, code=1)
        except ComptError as err:
            _fail(str(err), debug, err)
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            _fail(f"the machine refused a file operation{where}: {err.strerror or err}", debug, err, code=1)

    return run


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A TOML file with the run's fields (flags win).")]
DebugOpt = Annotated[bool, typer.Option(help="Show tracebacks.")]


def _parse(field: attrs.Attribute, text: Any) -> Any:
    """A flag's value as the field takes it: a comma-separated list becomes a list."""
    kind = field.metadata["cli"]
    if text is None or kind not in ("floats", "names"):
        return text
    if kind == "names":
        return text.split(",")
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        flag = "--" + field.name.replace("_", "-")
        raise typer.BadParameter(f"must be comma-separated numbers, got {text!r}", param_hint=flag) from None


def _option(field: attrs.Attribute, default: Any = None) -> inspect.Parameter:
    """The typer option of a :class:`~comptlib.config.RunConfig` field: its flag, type and help."""
    kind, flag = field.metadata["cli"], field.name.replace("_", "-")
    if kind is bool:
        info, annotation = typer.Option(f"--{flag}/--no-{flag}", help=field.metadata["help"]), Optional[bool]
    else:
        info, annotation = typer.Option(help=field.metadata["help"]), Optional[kind if isinstance(kind, type) else str]
    if default is not None:
        annotation = type(default)
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, info]
    )


def settings(*names: str, **defaults: Any):
    """Give a command a flag for each named RunConfig field (all with a flag when none is named).

    The command takes them as one ``flags`` dict (parsed; None where not given);
    ``defaults`` replaces a flag's None default.
    """
    fields = [f for f in attrs.fields(RunConfig) if f.metadata.get("cli") and (not names or f.name in names)]

    def decorate(command):
        params = inspect.signature(command, eval_str=True).parameters.values()
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params if p.name != "flags"]
        first = 1 if own and own[0].name == "config" else sum(p.default is p.empty for p in own)

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            flags = {f.name: _parse(f, kwargs.pop(f.name)) for f in fields}
            return command(flags=flags, **kwargs)

        generated = [_option(f, defaults.get(f.name)) for f in fields]
        run.__signature__ = inspect.Signature([*own[:first], *generated, *own[first:]])
        return run

    return decorate


def _rank() -> int:
    """This process's rank under torchrun (0 when launched alone): only rank 0 writes and prints."""
    return int(os.environ.get("RANK", "0"))


def _relaunch(nproc: int) -> None:
    """Run this very command again under torchrun on ``nproc`` local processes; exits with its status."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    raise typer.Exit(subprocess.call([*launcher, "-m", "comptlib", *args]))


def _config(config: Path | None, debug: bool, **flags: Any) -> RunConfig:
    try:
        return RunConfig.resolve(config, **flags)
    except ConfigError as err:
        _fail(str(err), debug, err)


def _setup(cfg, progress: bool, debug: bool, out: Path | None = None, resume: bool = False):
    """The Chain a config describes (models seeded by the config's seed) and its loaders, validated."""
    import torch

    from comptlib import Chain

    torch.set_flush_denormal(True)
    try:
        options = {"text_column": cfg.text_column, "max_bytes": cfg.max_bytes, "val_path": cfg.val_data}
        options["image_size"] = cfg.image_size
        train, val, options = cfg.recipe.data_loaders(cfg.batch_size, cfg.seed, cfg.data, **options)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err), debug, err)
    if cfg.data is not None and _rank() == 0:
        _describe_data(cfg, train, val, options)
    if cfg.num_workers:  # worker processes load batches; pinned memory speeds the copies to a GPU
        from comptlib.data import rebuild

        pin = torch.cuda.is_available() and cfg.device != "cpu"
        train, val = (rebuild(loader, num_workers=cfg.num_workers, pin_memory=pin) for loader in (train, val))
    torch.manual_seed(cfg.seed)
    models = cfg.recipe.models(cfg.sizes, **options)
    from comptlib.settings import ChainSettings, Optim, Runtime

    chain = Chain(
        models,
        grower=cfg.recipe.grower(cfg.method),
        transferer="auto" if cfg.transfer else None,
        optim=Optim(**cfg.group(Optim)),
        runtime=Runtime(**cfg.group(Runtime)),
        **cfg.group(ChainSettings)
        | {
            "budgets": list(cfg.budgets),
            "names": [s if s in cfg.recipe.presets else f"{cfg.family}-{s}" for s in cfg.sizes],
            "progress": progress,
            "checkpoint_dir": None if out is None else str(out),
            "resume": resume,
            "targets": None if cfg.targets is None else [None, *cfg.targets],
            "eval_every": cfg.eval_every or (10 if cfg.targets else 0),
            "loggers": cfg.log_to,
        },
    )
    try:
        chain.validate(train)
    except (ValueError, TypeError) as err:
        _fail(str(err), debug, err)
    return chain, train, val


def _describe_data(cfg: RunConfig, train: Any, val: Any, options: dict[str, Any]) -> None:
    """What of the user's data is used: no folder is cut short or split without a word."""
    from comptlib import data

    source, held_out = data.splits(cfg.data, cfg.val_data) if cfg.data != "stdlib" else ("stdlib", cfg.val_data)
    if cfg.recipe.user_data == "text":
        cap = cfg.max_bytes or (data.DEFAULT_TEXT_BYTES if cfg.tokenizer is None else None)
        typer.echo(f"text: {data.describe_text(source, cap)}")
    else:
        size, given = options["image_size"], "--image-size" if cfg.image_size else "the data"
        count = f"{len(train.dataset):,} for training from {source}"
        channels = "1 channel (grey)" if options.get("in_channels") == 1 else "3 channels (RGB)"
        typer.echo(f"images: {size}x{size} from {given}, as {channels}; {count}")
    where = f"from {held_out}" if held_out is not None else f"split from {source}"
    typer.echo(f"held out: {len(val.dataset):,} {'windows' if cfg.recipe.user_data == 'text' else 'images'} {where}")


@app.command()
@_friendly
@settings()
def grow(
    config: ConfigOpt = None,
    flags: dict[str, Any] | None = None,
    nproc: Annotated[
        int, typer.Option(help="Train data-parallel on N local processes (runs torchrun for you); 1: no.")
    ] = 1,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/default"),
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Replace the comptlib run in --out (only its own files).")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Train a model family as a chain on built-in offline data and report its acceleration ratio.

    With no options: three ViTs (widths 32, 64, 128) on scikit-learn's digits, a minute or two on 2 CPU cores.

    Examples:

        comptlib grow

        comptlib grow --family llama --out runs/llama

        comptlib grow --sizes 64x4,128x6,256x8 --budgets 40,8,6

        comptlib grow --config chain.toml --out runs/mine --resume

        comptlib grow --nproc 2 --precision bf16   (or: torchrun --nproc_per_node 2 -m comptlib grow ...)

    Under torchrun --batch-size is per process: the global batch is N times larger.
    """
    if nproc < 1:
        _fail(f"--nproc must be at least 1, got {nproc}", debug)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch(nproc)
    cfg = _config(config, debug, **flags)
    chain, train, val = _setup(cfg, progress, debug, out, resume=resume)  # every check, before anything is written
    main = _rank() == 0  # under torchrun, rank 0 alone owns --out, writes reports and prints
    from comptlib.distributed import DistributedError
    from comptlib.rundir import open_run

    run = open_run(out, cfg.to_dict(), resume=resume, force=force, stages=chain.names) if main else nullcontext()
    with run:
        try:
            chain.fit(train, val)
        except KeyboardInterrupt:
            typer.echo(f"\nInterrupted. Continue from the last checkpoint in {out} with the same command and --resume.")
            raise typer.Exit(130) from None
        except DistributedError as err:
            _fail(f"{err}. Continue from the last checkpoint in {out} with the same command and --resume.", debug, err)
        if main:
            _write_reports(out, cfg, chain)


def _write_reports(out: Path, cfg: RunConfig, chain: Any) -> None:
    """report.json, report.md and report.png of a finished run, and the table on the terminal."""
    from comptlib.bench import plot
    from comptlib.io import write_json

    write_json(out / "report.json", {"data": cfg.data_name, "report": chain.report_, "history": chain.history_})
    picture = plot(chain, [], out / "report.png")
    _write_markdown(out / "report.md", chain.report_, cfg.data_name, picture)
    _print_report(chain.report_)
    typer.echo(f"Models, checkpoints, metrics.jsonl, lineage.json and report.json are in {out}")


@app.command()
@_friendly
def config(
    family: Annotated[str, typer.Option(help="The recipe whose values fill the file.")] = "vit",
    debug: DebugOpt = False,
) -> None:
    """Print a TOML config with every field of a run, at a recipe's values, each under its help.

    Examples:

        comptlib config > chain.toml

        comptlib config --family llama > llama.toml && comptlib grow --config llama.toml
    """
    from comptlib.config import toml_template

    typer.echo(toml_template(family), nl=False)


@app.command()
@_friendly
@settings(
    "family", "sizes", "budgets", "unit", "data", "val_data", "image_size", "batch_size", "seed", "tokenizer",
    "vocab_size", "text_column", "max_bytes",
)  # fmt: skip
def plan(config: ConfigOpt = None, flags: dict[str, Any] | None = None, debug: DebugOpt = False) -> None:
    """Dry run: each model's parameters and measured FLOPs per sample, and the projected acceleration ratio.

    Nothing is trained. Examples:

        comptlib plan

        comptlib plan --family llama --sizes 64x2,128x4,256x4,512x8 --budgets 600,120,80,80
    """
    cfg = _config(config, debug, **flags)
    chain, train, _ = _setup(cfg, False, debug)
    projected = chain.plan(train)
    _print_plan(projected, cfg)


@app.command()
@_friendly
@settings(
    "family", "sizes", "budgets", "unit", "method", "transfer", "lr", "data", "batch_size", "seed", "device",
    "precision", "eval_every", "val_data", "image_size", "tokenizer", "vocab_size", "text_column", "max_bytes",
    eval_every=20,
)  # fmt: skip
def bench(
    config: ConfigOpt = None,
    flags: dict[str, Any] | None = None,
    out: Annotated[Path, typer.Option(help="Where bench.json and bench.png go.")] = Path("runs/bench"),
    search: Annotated[
        bool,
        typer.Option(
            help="Also the budget search: each grown model again until it matches its baseline, "
            "for the matched-quality ratio."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    debug: DebugOpt = False,
) -> None:
    """Train the family both ways, as a chain and each model alone, and compare them side by side.

    Writes bench.json and bench.png: the validation metric against cumulative training FLOPs.
    With --search, the grown models train again from the chain's first model until each reaches
    its baseline's final metric (capped at the baseline's budget): the matched-quality ratio.
    Examples:

        comptlib bench

        comptlib bench --family resnet --out runs/resnet-bench

        comptlib bench --data images/ --search
    """
    cfg = _config(config, debug, **flags)
    chain, train, val = _setup(cfg, progress, debug)
    from comptlib.bench import budget_search, compare, fit_alone, format_table, plot
    from comptlib.io import write_json

    chain.fit(train, val)
    shared = {k: chain.get_params()[k] for k in ("unit", "optim", "runtime", "seed", "progress", "eval_every")}
    alone = fit_alone(chain.models, train, val, budget=cfg.budgets[0], names=chain.names, **shared)
    result = compare(chain, alone, budget_search(chain, alone, train, val) if search else None)
    write_json(out / "bench.json", {"config": cfg.to_dict(), "data": cfg.data_name, **result})
    picture = plot(chain, alone, out / "bench.png")
    typer.echo(format_table(result))
    typer.echo(f"Wrote {out / 'bench.json'} and {picture}")


tokenizer_app = typer.Typer(help="Train a tokenizer for the language recipes' --tokenizer.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
_TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
"""What ``save_pretrained`` writes for a tokenizer: a folder holding only these may be trained again."""


@tokenizer_app.command("train")
@_friendly
@settings("vocab_size", "text_column", "max_bytes")
def tokenizer_train(
    data: Annotated[str, typer.Option(help="The corpus: stdlib, a text file or folder, jsonl/parquet or datasets.")],
    out: Annotated[Path, typer.Option(help="The folder the tokenizer goes to (--tokenizer takes it).")],
    flags: dict[str, Any] | None = None,
    debug: DebugOpt = False,
) -> None:
    """Train a byte-level BPE on your corpus with the tokenizers package, for --tokenizer.

    Examples:

        comptlib tokenizer train --data stdlib --vocab-size 4096 --out tokenizers/stdlib

        comptlib tokenizer train --data corpus.jsonl --text-column body --vocab-size 8000 --out tok
    """
    fields = attrs.fields_dict(RunConfig)
    for name, value in flags.items():
        if value is not None:
            fields[name].metadata["check"](name, value)
    if flags["vocab_size"] is None:
        _fail("vocab_size: give --vocab-size (e.g. 4096)", debug)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file, not a folder", debug)
    strangers = sorted(p.name for p in out.iterdir() if p.name not in _TOKENIZER_FILES) if out.is_dir() else []
    if strangers:
        names = ", ".join(strangers)
        _fail(f"--out {out} holds files that are not a tokenizer's ({names}): choose another --out", debug)
    if data != "stdlib" and not Path(data).exists():
        _fail(f"data: no corpus at {data}", debug)
    from comptlib.text import train_tokenizer

    options = {"text_column": flags["text_column"] or "text", "max_bytes": flags["max_bytes"]}
    try:
        tokenizer = train_tokenizer(data, flags["vocab_size"], out, **options)
    except ValueError as err:
        _fail(str(err), debug, err)
    asked = flags["vocab_size"]
    short = f" (of {asked:,} asked: the corpus has no more merges)" if len(tokenizer) < asked else ""
    typer.echo(f"Trained a byte-level BPE of {len(tokenizer):,} tokens{short} on {data}; saved to {out}")
    typer.echo(f"Use it with: comptlib grow --family llama --tokenizer {out}")


@app.command()
@_friendly
@settings("family", "method", "seed")
def check(
    source: Annotated[str, typer.Argument(help="Source: WIDTHxDEPTH, or a save_pretrained folder (its weights).")],
    target: Annotated[str, typer.Argument(help="Target: WIDTHxDEPTH, or a transformers config.json or folder.")],
    flags: dict[str, Any] | None = None,
    weights: Annotated[
        Optional[Path],
        typer.Option(help="The source's trained weights: a safetensors file or a save_pretrained folder."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Grow a SOURCE model into a TARGET and print the function-preservation report.

    Without --weights the source's random init is perturbed, as training would move it.

    Examples:

        comptlib check 64x4 96x6

        comptlib check 32x2 64x4 --weights runs/default/vit-32x2/model.safetensors

        comptlib check 64x2 128x4 --family llama --method compt

        comptlib check runs/llama/llama-32x2/model bigger/config.json --family llama
    """
    hub = [_transformers_model(arg, pretrained=i == 0, debug=debug) for i, arg in enumerate((source, target))]
    sizes = ["1x1" if model is not None else arg for model, arg in zip(hub, (source, target))]
    cfg = _config(None, debug, **flags, sizes=sizes, budgets=[1, 1])
    import torch

    from comptlib.family import family_of

    torch.manual_seed(cfg.seed)
    small, large = (m if m is not None else cfg.recipe.models((arg,))[0] for m, arg in zip(hub, (source, target)))
    grower = family_of(small).grower(cfg.method, **cfg.recipe.grower_options)
    try:
        grower.validate(small, large)
    except (ValueError, TypeError) as err:
        _fail(f"{source} -> {target}: {err}", debug, err)
    if weights is None and hub[0] is None:
        _perturb(small)
    elif weights is not None:
        from comptlib.checkpoint import CheckpointError, load_weights

        try:
            load_weights(weights, small)
        except CheckpointError as err:
            _fail(str(err), debug, err)
    grower.grow(small, large)
    train, _ = cfg.recipe.loaders(4, cfg.seed)
    report = grower.check(small, large, _inputs(next(iter(train))))
    _print_check(family_of(small).dims(small), family_of(large).dims(large), report)


def _transformers_model(arg: str, pretrained: bool, debug: bool):
    """A transformers model from a local config.json or save_pretrained folder; None for a WIDTHxDEPTH size."""
    path = Path(arg)
    if not path.exists():
        return None
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        if config.architectures:
            cls = getattr(transformers, config.architectures[0])
            return cls.from_pretrained(str(path), local_files_only=True) if pretrained else cls(config)
        return transformers.AutoModelForCausalLM.from_config(config)  # a bare config: a causal LM by default
    except Exception as err:  # a folder or file transformers cannot read: say which
        _fail(f"{arg}: not a transformers config or checkpoint ({err})", debug, err)


def _perturb(model) -> None:
    """Stand in for training: move every weight off its init, so the check is not trivially exact."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _inputs(batch):
    """The model inputs of a built-in batch (images, or the token dict)."""
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    return batch[0]


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = report["metric"]
    table = Table(title=f"{report['family']} chain")
    for col in ("model", "params", "steps", metric, "train FLOPs", "wall time"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in report["models"]:
        value = row[metric]
        table.add_row(
            row["name"],
            f"{row['params'] / 1e6:.2f}M",
            str(row["steps"]),
            "-" if value is None else f"{value:.4f}",
            f"{row['flops']:.3g}",
            f"{row['wall_time']:.1f}s",
        )
    console = Console()
    console.print(table)
    console.print(
        f"chain FLOPs {report['chain_flops']:.3g}, independent training {report['independent_flops']:.3g} "
        f"(each model for {report['baseline_samples']} samples): "
        f"[bold]acceleration ratio {report['acceleration_ratio']:.2f}x[/bold]"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()


def _print_plan(projected: dict[str, Any], cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.family} chain plan ({cfg.data_name}, batch {cfg.batch_size})")
    for col in ("model", "params", "train FLOPs/sample", "teacher FLOPs/sample", "steps", "stage FLOPs"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in projected["models"]:
        table.add_row(
            row["name"],
            f"{row['params'] / 1e6:.2f}M",
            f"{row['student_flops']:.3g}",
            f"{row['teacher_flops']:.3g}",
            str(row["steps"]),
            f"{row['total']:.3g}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"projected chain FLOPs {projected['chain_flops']:.3g}, independent training {projected['independent_flops']:.3g}: "
        f"[bold]projected acceleration ratio {projected['acceleration_ratio']:.2f}x[/bold]"
    )


def _print_check(source: dict[str, int], target: dict[str, int], report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"growth check: {report}")
    for col in ("dimension", "source", "target", "change"):
        table.add_column(col)
    for key in source:
        change = "same" if source[key] == target[key] else f"x{target[key] / max(source[key], 1):.3g}"
        table.add_row(key, str(source[key]), str(target[key]), change)
    console = Console()
    console.print(table)
    verdict = "function kept" if report.exact else "function changed (a warm start or approximate growth)"
    console.print(f"max |diff| {report.max_abs:.3g}, relative {report.max_rel:.3g}: {verdict}")


def _write_markdown(path: Path, report: dict[str, Any], data: str, picture: Path) -> None:
    from comptlib.io import atomic_write

    metric = report["metric"]
    lines = [
        f"# {report['family']} chain on {data}",
        "",
        f"| model | params | steps | {metric} | train FLOPs | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["models"]:
        value = "-" if row[metric] is None else f"{row[metric]:.4f}"
        lines.append(
            f"| {row['name']} | {row['params']:,} | {row['steps']} | {value} | {row['flops']:.3g} | {row['wall_time']:.1f} |"
        )
    lines += [
        "",
        f"Chain FLOPs {report['chain_flops']:.3g}; training each model alone for {report['baseline_samples']} samples: "
        f"{report['independent_flops']:.3g}. **Acceleration ratio {report['acceleration_ratio']:.2f}x.**",
        "",
    ]
    lines += [f"![validation {metric} against cumulative training FLOPs]({picture.name})", ""]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
