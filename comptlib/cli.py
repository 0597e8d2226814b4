"""The ``comptlib`` command line. torch is imported lazily so ``--help`` is instant."""

from __future__ import annotations

from importlib.metadata import version as _version
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

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


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


@app.command()
def grow(
    family: Annotated[str, typer.Option(help="vit, resnet, convnext, llama, qwen2 or gpt2.")] = "vit",
    sizes: Annotated[
        Optional[str], typer.Option(help="Sizes, smallest first, as WIDTHxDEPTH,... [default: the family's ladder]")
    ] = None,
    budgets: Annotated[Optional[str], typer.Option(help="Budget per model, comma-separated, in --unit.")] = None,
    unit: Annotated[Optional[str], typer.Option(help="Budget unit: epochs or steps.")] = None,
    method: Annotated[str, typer.Option(help="Growth: exact (function-preserving) or compt (the paper's).")] = "exact",
    transfer: Annotated[bool, typer.Option(help="Distil each model from its predecessor.")] = True,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the first model.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for models, data order and growth.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    out: Annotated[Path, typer.Option(help="Run directory for models and report.json.")] = Path("runs/default"),
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a model family as a chain on built-in offline data and report its acceleration ratio.

    With no options: three ViTs (widths 32, 64, 128) on scikit-learn's digits, about a minute on 2 CPU cores.

    Examples:

        comptlib grow

        comptlib grow --family llama --out runs/llama

        comptlib grow --sizes 64x4,128x6,256x8 --budgets 40,8,6

        comptlib grow --family resnet --method compt --no-transfer
    """
    from comptlib.recipes import RECIPES

    if family not in RECIPES:
        raise typer.BadParameter(f"unknown family {family!r}; choose from {', '.join(RECIPES)}", param_hint="--family")
    recipe = RECIPES[family]
    try:
        size_list = tuple(sizes.split(",")) if sizes else recipe.sizes
        models = _build(recipe, size_list, seed)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--sizes") from None

    import torch

    from comptlib import Chain
    from comptlib.io import save_model, write_json

    torch.set_flush_denormal(True)
    chain = Chain(
        models,
        grower=recipe.grower(method),
        transferer="auto" if transfer else None,
        budgets=_floats(budgets, "--budgets") or list(recipe.budgets),
        unit=unit or recipe.unit,
        lr=lr or recipe.lr,
        device=device,
        seed=seed,
        names=[f"{family}-{s}" for s in size_list],
        progress=progress,
    )
    train, val = recipe.loaders(batch_size or recipe.batch_size, seed)
    try:
        chain.fit(train, val)
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err)) from None
    for row, model in zip(chain.report_["models"], chain.models_):
        suffix = "" if hasattr(model, "save_pretrained") else ".safetensors"
        save_model(model.cpu(), out / f"{row['name']}{suffix}")
    write_json(out / "report.json", {"data": recipe.data, "report": chain.report_, "history": chain.history_})
    _print_report(chain.report_)
    typer.echo(f"Saved models and report.json to {out}")


def _build(recipe, sizes: tuple[str, ...], seed: int) -> list:
    import torch

    torch.manual_seed(seed)
    return recipe.models(sizes)


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
