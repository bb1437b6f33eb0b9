"""`vlit`: run the pipeline through Dagster from a shell and print what it did."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from vlit_assets.resources import PROJECT_ROOT

# In pipeline order; `--stage X` runs X and everything before it (definitions.SOURCE_STAGES).
STAGES = ("raw", "generated", "scored")  # then the final stage across all sources


def _load_env_file(path: Path) -> None:
    """Apply KEY=VALUE lines of .env without overriding variables already set."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        os.environ.setdefault(key.strip(), value.strip().strip('"').strip("'"))


def prepare_environment(db: str | None = None) -> Path:
    """Set the variables the definitions read, and make sure DAGSTER_HOME has our dagster.yaml."""
    _load_env_file(PROJECT_ROOT / ".env")
    defaults = {
        "VLIT_DB_PATH": "data/warehouse/vlit.duckdb",
        "VLIT_DATA_DIR": "data",
        "VLIT_OUTPUT_DIR": "data",
        "VLIT_LLM_BASE_URL": "",
        "VLIT_LLM_MODEL": "",
        "VLIT_LLM_API_KEY": "",
        "DAGSTER_HOME": str(PROJECT_ROOT / ".dagster_home"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if db:
        os.environ["VLIT_DB_PATH"] = str(Path(db).expanduser().resolve())
    home = Path(os.environ["DAGSTER_HOME"]).expanduser().resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    return home


def open_instance(home: Path):
    """The Dagster instance in ``home``, created under a file lock.

    Two processes creating a new DAGSTER_HOME's SQLite storage at the same moment corrupt its
    migration history, so first-time creation (and the dagster.yaml refresh) is serialised.
    """
    import fcntl

    import dagster as dg

    with (home / ".vlit-init.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = home / "dagster.yaml"
        source = PROJECT_ROOT / "dagster.yaml"
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
        return dg.DagsterInstance.get()


def _summary_rows(db_path: Path, source: str) -> tuple[dict[str, int], dict[str, int]]:
    from vlit_assets.core import warehouse
    from vlit_assets.core.schemas import TABLES

    counts: dict[str, int] = {}
    rejects: dict[str, int] = {}
    if not db_path.exists():
        return counts, rejects
    with warehouse.connect(db_path, read_only=True) as con:
        for name, table in TABLES.items():
            if not table.partitioned or not warehouse.table_exists(con, name):
                continue
            row = con.execute(
                f'SELECT count(*) FROM "{name}" WHERE source = ?', [source]
            ).fetchone()
            counts[name] = int(row[0]) if row else 0
        if warehouse.table_exists(con, "raw__rejects"):
            for reason, n in con.execute(
                "SELECT reason, count(*) FROM raw__rejects WHERE source = ? GROUP BY 1 ORDER BY 1",
                [source],
            ).fetchall():
                rejects[reason] = int(n)
    return counts, rejects


def cmd_run(args: argparse.Namespace) -> int:
    home = prepare_environment(args.db)

    from vlit_assets.core import sources
    from vlit_assets.definitions import SOURCE_STAGES
    from vlit_assets.resources import resolve_path
    from vlit_assets.runner import run_final, run_source

    if args.source:
        root = Path(args.source).expanduser().resolve()
        if not root.is_dir():
            print(f"vlit: --source {args.source}: not a directory", file=sys.stderr)
            return 2
        name = sources.check_source_name(args.name) if args.name else sources.source_name(root)
    else:
        root = resolve_path(os.environ["VLIT_DATA_DIR"]) / "sample"
        name = args.name or sources.SAMPLE_SOURCE

    images_dir = None
    if args.images:
        images_dir = Path(args.images).expanduser().resolve()
        if not images_dir.is_dir():
            print(f"vlit: --images {args.images}: not a directory", file=sys.stderr)
            return 2
    stages = SOURCE_STAGES[: SOURCE_STAGES.index(args.stage) + 1] if args.stage else SOURCE_STAGES
    print(f"vlit: source {name!r} <- {root}")
    print(f"vlit: DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    print(f"vlit: db={resolve_path(os.environ['VLIT_DB_PATH'])}")
    instance = open_instance(home)
    result = run_source(
        instance,
        name,
        root,
        split=args.split,
        annotations_source=args.annotations_source,
        images_dir=images_dir,
        stages=stages,
        tags={"vlit/entry": "cli"},
    )
    code = print_summary(result, name, instance)
    if args.stage or code != 0:
        if code != 0:
            print("\nfinal stage not run: this source's run or a blocking check failed")
        return code
    final = run_final(instance, tags={"vlit/entry": "cli"})
    return print_final_summary(final, instance)


def print_summary(result, source: str, instance=None) -> int:
    from vlit_assets.resources import resolve_path

    db_path = resolve_path(os.environ["VLIT_DB_PATH"])
    counts, rejects = _summary_rows(db_path, source)
    print(f"\nrun {result.run_id}: {'succeeded' if result.success else 'FAILED'}")
    print("\nrows per table")
    for name, n in counts.items():
        print(f"  {name:<50} {n:>9,}")
    print("\nrejects per reason" + ("" if rejects else ": none"))
    for reason, n in rejects.items():
        print(f"  {reason:<50} {n:>9,}")
    evaluations = result.get_asset_check_evaluations()
    print("\nchecks")
    failed_checks = print_checks(evaluations)
    print_step_times(result, instance)
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data:
                err = event.step_failure_data.error
                message = err.message.strip() if err else "unknown error"
                print(f"\nstep {event.step_key} failed: {message}", file=sys.stderr)
    return 0 if result.success and not failed_checks else 1


def print_step_times(result, instance) -> None:
    """Wall seconds per step of the run, from the instance's step statistics."""
    if instance is None:
        return
    timed = [s for s in instance.get_run_step_stats(result.run_id) if s.start_time and s.end_time]
    if not timed:
        return
    print("\nseconds per step")
    for step in sorted(timed, key=lambda s: s.start_time):
        print(f"  {step.step_key:<50} {step.end_time - step.start_time:>9.2f}")


def print_checks(evaluations) -> int:
    """One line per check evaluation; returns how many failed as gates (severity ERROR).

    A failed WARN check measured the input and reports what is wrong with it; the run goes on.
    """
    gates_failed = 0
    for ev in evaluations:
        gate = ev.severity.value == "ERROR"
        status = "passed" if ev.passed else ("FAILED" if gate else "WARN (reported, not a gate)")
        gates_failed += gate and not ev.passed
        label = f"{ev.asset_key.to_user_string()}:{ev.check_name}"
        print(f"  {label:<50} {status}")
        if not ev.passed and ev.description:
            print(f"    {ev.description}")
    return gates_failed


def cmd_lineage(args: argparse.Namespace) -> int:
    prepare_environment(args.db)
    import json

    from vlit_assets.core import lineage, warehouse
    from vlit_assets.resources import resolve_path

    db_path = resolve_path(os.environ["VLIT_DB_PATH"])
    if not db_path.exists():
        print(f"vlit: no warehouse at {db_path}; run `vlit run` first", file=sys.stderr)
        return 2
    with warehouse.connect(db_path, read_only=True) as con:
        try:
            chain = lineage.lineage(con, args.conversation_id)
        except KeyError as exc:
            print(f"vlit: {exc.args[0]}", file=sys.stderr)
            return 1
    print(json.dumps(chain, default=str, indent=2) if args.json else lineage.render(chain))
    return 0


def print_final_summary(result, instance=None) -> int:
    from vlit_assets.core import warehouse
    from vlit_assets.resources import resolve_path

    print(f"\nfinal run {result.run_id}: {'succeeded' if result.success else 'FAILED'}")
    db_path = resolve_path(os.environ["VLIT_DB_PATH"])
    with warehouse.connect(db_path, read_only=True) as con:
        if warehouse.table_exists(con, "final__decisions"):
            for kept, rule, n in con.execute(
                "SELECT kept, coalesce(first_failing_rule, ''), count(*) FROM final__decisions "
                "GROUP BY ALL ORDER BY 1 DESC, 3 DESC"
            ).fetchall():
                label = "kept" if kept else f"dropped: {rule}"
                print(f"  {label:<50} {n:>9,}")
        if warehouse.table_exists(con, "final__conversations"):
            for split, n in con.execute(
                "SELECT split, count(*) FROM final__conversations GROUP BY 1 ORDER BY 1"
            ).fetchall():
                print(f"  {'split ' + str(split):<50} {n:>9,}")
    failed = print_checks(result.get_asset_check_evaluations())
    print_step_times(result, instance)
    for mat in result.get_asset_materialization_events():
        if mat.asset_key.to_user_string() == "final__export":
            meta = mat.materialization.metadata
            print(
                f"\nexport {meta['version'].value}: {meta['path'].value} ({meta['status'].value})"
            )
    if failed:
        print("\nexport not written: the final suite failed")
    return 0 if result.success and not failed else 1


def ui_command(host: str, port: int) -> tuple[list[str], Path]:
    """The `dagster dev` command line for this project, and the directory to start it in.

    Dagster's code server loads a ``.env`` from its working directory over the inherited
    environment, which would undo a variable the user exported. So the variables are settled
    here (exported ones win over .env, as for ``vlit run``) and the server starts in
    DAGSTER_HOME, where no .env lives.
    """
    home = prepare_environment()
    open_instance(home)  # our dagster.yaml in place before the daemon reads it
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")]
    return command + ["-h", host, "-p", str(port)], home


def cmd_ui(args: argparse.Namespace) -> int:
    command, cwd = ui_command(args.host, args.port)
    os.chdir(cwd)
    os.execv(command[0], command)  # the server takes this process id, so it stops by it
    return 1  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the pipeline for one source through Dagster")
    run.add_argument(
        "--source",
        help="COCO-layout directory, or a directory of LLaVA / paper-format instruction data "
        "for QC-only scoring (default: the embedded sample)",
    )
    run.add_argument("--name", help="source name / partition key (default: the directory name)")
    run.add_argument("--split", help="COCO split name (default: detected)")
    run.add_argument(
        "--annotations-source",
        help="for an instruction dataset (QC-only): a registered COCO source annotating its images",
    )
    run.add_argument(
        "--images",
        metavar="DIR",
        help="for an instruction dataset (QC-only): the folder its image names are relative to, "
        "like LLaVA's --image_folder (default: SRC/images/, then SRC)",
    )
    run.add_argument(
        "--db", help="DuckDB file (default: $VLIT_DB_PATH or data/warehouse/vlit.duckdb)"
    )
    run.add_argument("--stage", choices=STAGES, help="stop after this stage (default: all)")
    run.set_defaults(func=cmd_run)
    trace = sub.add_parser(
        "lineage", help="print one conversation's chain: annotations -> generation -> scores"
    )
    trace.add_argument("conversation_id")
    trace.add_argument("--db", help="DuckDB file (default: $VLIT_DB_PATH)")
    trace.add_argument("--json", action="store_true", help="print JSON instead of text")
    trace.set_defaults(func=cmd_lineage)
    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev) for this project")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
