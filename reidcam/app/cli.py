"""The ``reidcam`` command line.

Each command is a thin wrapper: it parses options and hands them to the module that does the
work, imported lazily so that ``reidcam --help`` stays fast (torch and ultralytics are heavy).
Bad input raises ``ReidcamError``; ``main`` turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from reidcam.errors import ReidcamError

app = typer.Typer(
    name="reidcam",
    help="Follow people across many cameras: detect, track, re-identify, store, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def run(
    sources: Annotated[Path, typer.Option(help="cams.yaml describing the cameras.")],
    db: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL of the store (default: sqlite in --out).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: from cams.yaml, else ./out).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_frames: Annotated[Optional[int], typer.Option(help="Stop each camera after N frames.")] = None,
    video: Annotated[bool, typer.Option(help="Write an annotated video per camera.")] = False,
    contact_sheets: Annotated[bool, typer.Option(help="Write a contact sheet PNG per identity.")] = False,
) -> None:
    """The main job: cameras -> detection -> tracking -> ReID -> global identities -> store + CSV."""
    from reidcam.app.run import run_from_config

    run_from_config(
        sources, db_url=db, out_dir=out, device=device, max_frames=max_frames,
        write_video=video, write_contact_sheets=contact_sheets,
    )


@app.command()
def export(
    db: Annotated[str, typer.Option(help="SQLAlchemy URL (or path of a SQLite file).")],
    out: Annotated[Path, typer.Option(help="CSV file, or folder for --format mot.")],
    format: Annotated[str, typer.Option(help="csv or mot.")] = "csv",
    run_id: Annotated[Optional[int], typer.Option(help="Only this run (default: the latest).")] = None,
) -> None:
    """Export cross-camera trajectories of a finished or running database."""
    from reidcam.storage.export import export_trajectories

    export_trajectories(db, out, fmt=format, run_id=run_id)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option(help="Recipe YAML (configs/reid/*.yaml).")],
    data_root: Annotated[Path, typer.Option(help="The dataset's own folder.")],
    output: Annotated[Path, typer.Option(help="Folder for last.pt, metrics.json and logs.")],
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's epochs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Resume from OUTPUT/last.pt.")] = False,
) -> None:
    """Train a ReIDMamba model; extra key=value arguments override the recipe."""
    from reidcam.reid.engine.train import train_from_recipe

    train_from_recipe(
        config, data_root=data_root, output=output, epochs=epochs, device=device,
        resume=resume, overrides=list(ctx.args),
    )


@app.command(name="eval")
def evaluate(
    weights: Annotated[Path, typer.Option(help="Checkpoint written by reidcam train.")],
    data_root: Annotated[Path, typer.Option(help="The dataset's own folder.")],
    dataset: Annotated[str, typer.Option(help="market1501, dukemtmc, occluded_duke, msmt17, cuhk03_labeled, cuhk03_detected, mined, or market (any Market-layout folder).")] = "market",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    flip: Annotated[bool, typer.Option(help="Average with the flipped image's embedding.")] = True,
    rerank: Annotated[bool, typer.Option(help="k-reciprocal re-ranking.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 128,
) -> None:
    """Score a checkpoint: mAP, CMC rank-1/5/10 and mINP under the standard protocol."""
    from reidcam.reid.engine.evaluate import evaluate_checkpoint_cli

    evaluate_checkpoint_cli(
        weights, data_root=data_root, dataset=dataset, as_json=json_output, flip=flip,
        rerank=rerank, device=device, batch_size=batch_size,
    )


@app.command(name="eval-mtmc")
def eval_mtmc(
    gt: Annotated[Path, typer.Option(help="Ground-truth folder: <camera>/gt.txt in MOTChallenge format (seqmap.txt optional).")],
    db: Annotated[str, typer.Option(help="SQLAlchemy URL (or SQLite path) of a run, or a trajectories CSV.")],
    run_id: Annotated[Optional[int], typer.Option(help="Only this run (default: the latest).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    iou: Annotated[float, typer.Option(help="IoU for a box to count as matched (CLEAR, Identity).")] = 0.5,
) -> None:
    """Multi-camera tracking metrics: per-camera HOTA, MOTA, IDF1; cross-camera IDF1, IDP, IDR."""
    from reidcam.app.eval_mtmc import evaluate_mtmc_cli

    evaluate_mtmc_cli(gt, db, run_id=run_id, as_json=json_output, iou_threshold=iou)


@app.command()
def mine(
    sources: Annotated[Path, typer.Option(help="cams.yaml describing the cameras.")],
    out: Annotated[Path, typer.Option(help="Folder for the Market-layout dataset.")],
    max_frames: Annotated[Optional[int], typer.Option(help="Stop each camera after N frames.")] = None,
    crops_per_tracklet: Annotated[int, typer.Option(help="Crops kept per tracklet, spread over its life.")] = 8,
    min_height: Annotated[int, typer.Option(help="Drop crops shorter than this (pixels).")] = 64,
    query_fraction: Annotated[float, typer.Option(help="Share of identities held out for query/gallery.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the train / test split.")] = 0,
) -> None:
    """Turn your own footage into a Market-1501-style ReID dataset (one pid per tracklet)."""
    from reidcam.app.mine import mine_dataset_cli

    mine_dataset_cli(
        sources, out_dir=out, max_frames=max_frames, crops_per_tracklet=crops_per_tracklet,
        min_height=min_height, query_fraction=query_fraction, device=device, seed=seed,
    )


@app.command()
def bench(
    sources: Annotated[Path, typer.Option(help="cams.yaml describing the cameras.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_frames: Annotated[Optional[int], typer.Option(help="Stop each camera after N frames.")] = 200,
) -> None:
    """Time the main job on your cameras and machine, stage by stage (nothing of yours is written)."""
    from reidcam.app.bench import bench_cli

    typer.echo(bench_cli(sources, device=device, max_frames=max_frames))


def main() -> None:
    """Console entry point: one line and exit code 2 for bad input, never a traceback."""
    try:
        app()
    except ReidcamError as error:
        typer.echo(f"reidcam: error: {error}", err=True)
        sys.exit(2)
