"""``reidcam eval-mtmc``: score a run's cross-camera trajectories against multi-camera ground truth."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from reidcam.tracking.mtmc_metrics import (
    IOU_THRESHOLD,
    MtmcReport,
    Sighting,
    evaluate_mtmc,
    load_ground_truth,
    load_trajectories_csv,
)


def load_predictions(db: str, run_id: int | None = None) -> list[Sighting]:
    """Predicted sightings of a run: from a database URL (through the exporter) or a trajectories CSV."""
    as_path = Path(db)
    if as_path.suffix.lower() == ".csv":
        return load_trajectories_csv(as_path)
    from reidcam.storage.export import export_trajectories

    with tempfile.TemporaryDirectory(prefix="reidcam-eval-") as tmp:
        csv_path = Path(tmp) / "trajectories.csv"
        export_trajectories(db, csv_path, fmt="csv", run_id=run_id)
        return load_trajectories_csv(csv_path)


def evaluate_run(gt_dir: Path, db: str, run_id: int | None = None, iou_threshold: float = IOU_THRESHOLD) -> MtmcReport:
    return evaluate_mtmc(load_ground_truth(gt_dir), load_predictions(db, run_id), iou_threshold)


def evaluate_mtmc_cli(
    gt_dir: Path, db: str, run_id: int | None = None, as_json: bool = False, iou_threshold: float = IOU_THRESHOLD
) -> MtmcReport:
    """Evaluate and print one JSON object or a table."""
    report = evaluate_run(gt_dir, db, run_id, iou_threshold)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_table(report)
    return report


def _print_table(report: MtmcReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Per camera (global ids; IoU >= 0.5)")
    for column in ("camera", "HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDP", "IDR", "IDSW", "GT ids", "pred ids"):
        table.add_column(column, justify="left" if column == "camera" else "right")
    rows = [*report.cameras.items(), ("combined", report.combined)]
    for name, s in rows:
        table.add_row(
            name, *(f"{100 * v:.1f}" for v in (s.hota, s.deta, s.assa, s.mota, s.idf1, s.idp, s.idr)),
            str(s.id_switches), str(s.gt_identities), str(s.predicted_identities),
        )
    cross = report.cross_camera
    summary = Table(title="Cross camera (all cameras as one sequence, global ids)")
    for column in ("IDF1", "IDP", "IDR", "IDTP", "IDFP", "IDFN", "GT ids", "pred ids"):
        summary.add_column(column, justify="right")
    summary.add_row(
        *(f"{100 * v:.1f}" for v in (cross.idf1, cross.idp, cross.idr)),
        *(str(v) for v in (cross.idtp, cross.idfp, cross.idfn, cross.gt_identities, cross.predicted_identities)),
    )
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # piped output: do not squeeze the figures
    console.print(table)
    console.print(summary)
