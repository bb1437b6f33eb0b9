"""`vlit`: run the pipeline through Dagster from a shell and print what it did."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path

from vlit_assets.resources import PROJECT_ROOT

# In pipeline order; `--stage X` runs X and everything before it (definitions.SOURCE_STAGES).
STAGES = ("raw", "generated", "scored")  # then the final stage across all sources


class Exit(IntEnum):
    """Exit codes of `vlit`; each user error has its own, with a one-line message on stderr."""

    OK = 0
    FAILED = 1  # a step or a blocking check failed (the run is in the Dagster instance)
    USAGE = 2  # the command line itself is wrong (argparse)
    BAD_NAME = 3  # --name is not a valid source name
    NO_NAME = 4  # the folder's name gives no usable source name: pass --name
    NO_SOURCE = 5  # the source folder (or the warehouse, for lineage) does not exist
    BUSY = 6  # another process held the DuckDB file for longer than we wait
    INTERRUPTED = 130  # stopped by SIGINT or SIGTERM


EXIT_CODES_HELP = """exit codes:
  0    success
  1    a step or a blocking check failed (one-line cause here; full trace in the Dagster UI)
  2    wrong command line
  3    --name is not a valid source name (1-64 of a-z, 0-9, '-', '_')
  4    the folder's name gives no usable source name: pass --name
  5    the source folder does not exist
  6    the DuckDB file stayed locked by another process (WarehouseBusy)
  130  stopped by SIGINT or SIGTERM (the run is marked failed, its pool slot freed)
"""


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exits with ``code``."""

    def __init__(self, code: Exit, message: str):
        super().__init__(message)
        self.code = code


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


def _materializations(result, instance, partition: str | None) -> dict[str, dict]:
    """Metadata of the latest materialization of every asset, by asset name: this run's where it
    wrote the asset, else the instance's latest for ``partition`` (an earlier run's). An asset
    written only for other partitions has a table but no rows of this one: its counts are 0."""
    import dagster as dg

    latest: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        if mat.partition == partition:
            latest[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    if instance is None:
        return latest
    from vlit_assets.definitions import defs

    for key in defs.resolve_asset_graph().get_all_asset_keys():
        name = key.to_user_string()
        if name in latest:
            continue
        for partitions in ([partition] if partition else None, None):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=1
            ).records
            mat = records[0].asset_materialization if records else None
            if mat is None:
                continue
            meta = {k: v.value for k, v in mat.metadata.items()}
            if mat.partition != partition:
                meta = {k: 0 for k in meta if k == ROW_COUNT or k.startswith(TABLE_ROWS_PREFIX)}
            latest[name] = meta
            break
    return latest


# Tables a stage writes besides its assets: their row counts are in the asset's metadata.
TABLE_ROWS_PREFIX = "rows/"
ROW_COUNT = "dagster/row_count"


def _summary_rows(materialized: dict[str, dict]) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per per-source table and rejects per reason, from materialization metadata."""
    from vlit_assets.core.schemas import TABLES

    side_tables = {
        key.removeprefix(TABLE_ROWS_PREFIX): int(n)
        for meta in materialized.values()
        for key, n in meta.items()
        if key.startswith(TABLE_ROWS_PREFIX)
    }
    counts: dict[str, int] = {}
    for name, table in TABLES.items():
        if not table.partitioned:
            continue
        if name in materialized:
            counts[name] = int(materialized[name].get(ROW_COUNT, 0))
        elif name in side_tables:
            counts[name] = side_tables[name]
    rejects = {
        key.removeprefix("rejects/"): int(n)
        for key, n in sorted(materialized.get("raw__rejects", {}).items())
        if key.startswith("rejects/")
    }
    return counts, rejects


def _source_and_name(args: argparse.Namespace) -> tuple[Path, str]:
    """The source folder and its partition name, or a UserError saying what is wrong."""
    from vlit_assets.core import sources
    from vlit_assets.resources import resolve_path

    if args.source:
        root = Path(args.source).expanduser().resolve()
        what = f"--source {args.source}"
    else:
        root = resolve_path(os.environ["VLIT_DATA_DIR"]) / "sample"
        what = f"the embedded sample ({root}; VLIT_DATA_DIR={os.environ['VLIT_DATA_DIR']})"
    if not root.is_dir():
        raise UserError(Exit.NO_SOURCE, f"{what}: no such directory")
    if args.name:
        try:
            return root, sources.check_source_name(args.name)
        except ValueError as exc:
            raise UserError(Exit.BAD_NAME, f"--name: {exc}") from None
    if not args.source:
        return root, sources.SAMPLE_SOURCE
    try:
        return root, sources.source_name(root)
    except ValueError:
        raise UserError(
            Exit.NO_NAME,
            f"the folder name {root.name!r} gives no source name (it needs letters or digits); "
            "pass one with --name",
        ) from None


def cmd_run(args: argparse.Namespace) -> int:
    home = prepare_environment(args.db)

    root, name = _source_and_name(args)  # before the slow imports: a typo fails at once

    from vlit_assets.core.vocab import SOURCE_STAGES
    from vlit_assets.resources import env_table_root, resolve_path
    from vlit_assets.runner import run_final, run_source

    images_dir = None
    if args.images:
        images_dir = Path(args.images).expanduser().resolve()
        if not images_dir.is_dir():
            raise UserError(Exit.NO_SOURCE, f"--images {args.images}: no such directory")
    stages = SOURCE_STAGES[: SOURCE_STAGES.index(args.stage) + 1] if args.stage else SOURCE_STAGES
    try:
        run_config = llm_run_config(args, stages)
    except ConfigError as exc:
        print(f"vlit: {exc}", file=sys.stderr)
        return 2
    print(f"vlit: source {name!r} <- {root}")
    print(f"vlit: DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    print(f"vlit: db={resolve_path(os.environ['VLIT_DB_PATH'])}", flush=True)
    if table_root := env_table_root():
        print(f"vlit: table files={table_root}", flush=True)
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
        run_config=run_config,
        short_errors=True,
    )
    code = print_summary(result, name, instance)
    if code == Exit.INTERRUPTED:
        return code
    line = compute_line(result)
    if line:
        print(f"\n{line}")
    if "generated" in stages:
        print_llm_summary(result)
    if args.stage or code != 0:
        if code != 0:
            print("\nfinal stage not run: this source's run or a blocking check failed")
        return code
    final = run_final(instance, tags={"vlit/entry": "cli"}, short_errors=True)
    return print_final_summary(final, instance)


def _stopped(result) -> bool:
    """Whether the run ended because this process was told to stop; says so if it did."""
    from vlit_assets.run_guard import was_interrupted

    if result.success or not was_interrupted(result):
        return False
    print(f"\nvlit: run {result.run_id} stopped by a signal; marked failed", file=sys.stderr)
    return True


def _failure_code(result) -> Exit | None:
    """For a failed run: print each failed step's one-line cause; the exit code, or None."""
    from vlit_assets.runner import error_chain, one_line_cause

    if result.success:
        return None
    code = Exit.FAILED
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            err = event.step_failure_data.error
            print(f"\nstep {event.step_key} failed: {one_line_cause(err)}", file=sys.stderr)
            if any(e.cls_name == "WarehouseBusy" for e in error_chain(err)):
                code = Exit.BUSY
    print(
        f"vlit: the full error is in the run's event log (Dagster UI, run {result.run_id})",
        file=sys.stderr,
    )
    return code


def print_summary(result, source: str, instance=None) -> int:
    if _stopped(result):
        return Exit.INTERRUPTED
    counts, rejects = _summary_rows(_materializations(result, instance, source))
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
    failure = _failure_code(result)
    if failure is not None:
        return failure
    return Exit.FAILED if failed_checks else Exit.OK


def compute_line(result) -> str | None:
    """Where the run's heavy per-row work ran, from its steps' ``compute`` metadata
    (core.shards.compute_metadata); None when no step reports it."""
    steps = [
        {k: _metadata_value(v) for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if "compute" in event.materialization.metadata
    ]
    remote = [m for m in steps if m["compute"] != "local"]
    if not remote:
        return "compute: local (this process and its process pools)" if steps else None
    nodes = {
        part.split(":")[0].strip()
        for m in remote
        for key, value in m.items()
        if key.endswith("/shards_per_node")
        for part in str(value).split(",")
    }
    shards = sum(int(m.get("compute/shards", 0)) for m in remote)  # type: ignore[call-overload]
    retries = sum(int(m.get("compute/retries", 0)) for m in remote)  # type: ignore[call-overload]
    where = " ".join(sorted({f"{m['compute']} at {m.get('compute/address', '?')}" for m in remote}))
    return f"compute: {where}, {shards} shards on {len(nodes)} nodes, {retries} retries"


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
    from vlit_assets.resources import env_table_root, resolve_path

    db_path = resolve_path(os.environ["VLIT_DB_PATH"])
    if not db_path.exists():
        raise UserError(Exit.NO_SOURCE, f"no warehouse at {db_path}; run `vlit run` first")
    with warehouse.connect(db_path, read_only=True, table_root=env_table_root()) as con:
        try:
            chain = lineage.lineage(con, args.conversation_id)
        except KeyError as exc:
            print(f"vlit: {exc.args[0]}", file=sys.stderr)
            return 1
    print(json.dumps(chain, default=str, indent=2) if args.json else lineage.render(chain))
    return 0


def print_final_summary(result, instance=None) -> int:
    if _stopped(result):
        return Exit.INTERRUPTED
    print(f"\nfinal run {result.run_id}: {'succeeded' if result.success else 'FAILED'}")
    materialized = _materializations(result, instance, None)
    decisions = materialized.get("final__decisions")
    if decisions is not None:
        drops = {
            k.removeprefix("drops/"): int(n) for k, n in decisions.items() if k.startswith("drops/")
        }
        kept = int(decisions["dagster/row_count"]) - int(decisions["dropped"])
        if kept:
            print(f"  {'kept':<50} {kept:>9,}")
        for rule, n in sorted(drops.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {'dropped: ' + rule:<50} {n:>9,}")
    shipped = materialized.get("final__conversations", {})
    for key, n in sorted(shipped.items()):
        if key.startswith("split/"):
            print(f"  {'split ' + key.removeprefix('split/'):<50} {int(n):>9,}")
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
    failure = _failure_code(result)
    if failure is not None:
        return failure
    return Exit.FAILED if failed else Exit.OK


# ---------------------------------------------------------------------------------------------
# LLM settings (self-instruct): flags, VLIT_LLM_* variables, --config run.yaml, the summary

GENERATED_OP = "generated__conversations"

# Flag destination -> LLMResource field. The resource falls back on its VLIT_LLM_* variable
# when a run starts (also under `vlit ui`, see resources.LLM_ENV); a flag wins over both.
_RESOURCE_FLAGS = {
    "llm_url": "base_url",
    "llm_model": "model",
    "llm_concurrency": "concurrency",
    "llm_max_concurrency": "max_concurrency",
    "llm_timeout": "timeout_s",
    "llm_retries": "max_retries",
    "llm_deadline": "deadline_s",
    "llm_temperature": "temperature",
    "llm_max_tokens": "max_tokens",
    "llm_verify_url": "verify_base_url",
    "llm_verify_model": "verify_model",
}
# Flag destination -> (GeneratedConfig field, variable read by `vlit run`, parser).
_OP_FLAGS: dict[str, tuple[str, str, object]] = {
    "llm_budget_requests": ("max_requests", "VLIT_LLM_BUDGET_REQUESTS", int),
    "llm_budget_tokens": ("max_tokens", "VLIT_LLM_BUDGET_TOKENS", int),
    "llm_budget_usd": ("max_cost_usd", "VLIT_LLM_BUDGET_USD", float),
    "llm_types": ("llm_types", "VLIT_LLM_TYPES", None),
    "llm_per_image": ("llm_per_image", "VLIT_LLM_PER_IMAGE", int),
    "llm_max_images": ("llm_max_images", "VLIT_LLM_MAX_IMAGES", int),
    "llm_warn_share": ("llm_warn_share", "VLIT_LLM_WARN_SHARE", float),
    "llm_fail_share": ("llm_fail_share", "VLIT_LLM_FAIL_SHARE", float),
    "llm_verify": ("llm_verify", "VLIT_LLM_VERIFY", "bool"),
}
_TYPES = ("global", "negative", "region")


class ConfigError(ValueError):
    """A run config, flag or variable that cannot be used; the message names which."""


def _types(value: str) -> list[str]:
    types = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in _TYPES]
    if not types or unknown:
        raise argparse.ArgumentTypeError(
            f"{value!r}: a comma-separated list of {', '.join(_TYPES)}"
        )
    return types


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("true/false, yes/no, on/off or 1/0")


def _concurrency(value: str) -> str:
    text = value.strip().lower()
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{value!r}: 'auto' or a positive integer")
    return text


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: a share between 0 and 1")
    return share


def add_llm_arguments(run: argparse.ArgumentParser) -> None:
    """The LLM flags of `vlit run`, in a group of their own."""
    group = run.add_argument_group(
        "LLM self-instruct",
        "Each flag overrides its VLIT_LLM_* variable (from the shell or .env), which overrides "
        "the default; --config run.yaml sits between the variables and the flags. The API key "
        "is read from VLIT_LLM_API_KEY only. Endpoint settings are also read by `vlit ui` runs.",
    )
    add = group.add_argument
    add("--config", metavar="RUN.yaml",
        help="Dagster run config (ops/resources) merged under these flags, e.g. "
        "resources: {llm: {config: {timeout_s: 120}}}")  # fmt: skip
    add("--no-llm", action="store_true", help="templates only, even with an endpoint set")
    add("--llm-url", metavar="URL", help="OpenAI-compatible base URL ($VLIT_LLM_BASE_URL)")
    add("--llm-model", metavar="NAME", help="model name ($VLIT_LLM_MODEL)")
    add("--llm-concurrency", type=_concurrency, metavar="auto|N",
        help="requests in flight: 'auto' adapts to what the server takes, N is fixed "
        "($VLIT_LLM_CONCURRENCY, default auto)")  # fmt: skip
    add("--llm-max-concurrency", type=int, metavar="N",
        help="ceiling for auto ($VLIT_LLM_MAX_CONCURRENCY, default 16)")  # fmt: skip
    add("--llm-timeout", type=float, metavar="S",
        help="seconds per attempt without any reply from the server ($VLIT_LLM_TIMEOUT_S, "
        "default 60)")  # fmt: skip
    add("--llm-retries", type=int, metavar="N",
        help="retries per request ($VLIT_LLM_MAX_RETRIES, default 4)")  # fmt: skip
    add("--llm-deadline", type=float, metavar="S",
        help="whole-stage limit; what is not done by then is dropped as llm_error with "
        "detail deadline ($VLIT_LLM_DEADLINE_S, default none)")  # fmt: skip
    add(
        "--llm-max-tokens",
        type=int,
        metavar="N",
        help="reply length limit per request ($VLIT_LLM_MAX_TOKENS, default 1024)",
    )
    add(
        "--llm-temperature",
        type=float,
        metavar="T",
        help="sampling temperature ($VLIT_LLM_TEMPERATURE, default 0.7)",
    )
    add(
        "--llm-budget-requests",
        type=int,
        metavar="N",
        help="send at most N requests ($VLIT_LLM_BUDGET_REQUESTS)",
    )
    add(
        "--llm-budget-tokens",
        type=int,
        metavar="N",
        help="stop sending after N tokens ($VLIT_LLM_BUDGET_TOKENS)",
    )
    add(
        "--llm-budget-usd",
        type=float,
        metavar="USD",
        help="stop sending after this cost; needs a known price ($VLIT_LLM_BUDGET_USD)",
    )
    add(
        "--llm-types",
        type=_types,
        metavar="T,T",
        help="instruction types for the LLM: global,negative,region ($VLIT_LLM_TYPES)",
    )
    add(
        "--llm-per-image",
        type=int,
        metavar="N",
        help="LLM conversations per image and type ($VLIT_LLM_PER_IMAGE, default 1)",
    )
    add(
        "--llm-max-images",
        type=int,
        metavar="N",
        help="self-instruct for the first N images only ($VLIT_LLM_MAX_IMAGES)",
    )
    add("--llm-warn-share", type=_share, metavar="X",
        help="warn when at least this share of LLM requests failed ($VLIT_LLM_WARN_SHARE, "
        "default 0.5)")  # fmt: skip
    add("--llm-verify", action="store_true", default=None,
        help="verification pass: ask the verifier whether each answer of every usable LLM "
        "conversation is supported by the annotations; counted in the budget "
        "($VLIT_LLM_VERIFY)")  # fmt: skip
    add(
        "--llm-verify-url",
        metavar="URL",
        help="verifier endpoint ($VLIT_LLM_VERIFY_BASE_URL, default: --llm-url)",
    )
    add(
        "--llm-verify-model",
        metavar="NAME",
        help="verifier model ($VLIT_LLM_VERIFY_MODEL, default: --llm-model)",
    )
    add("--llm-fail-share", type=_share, metavar="X",
        help="fail the stage (keeping the previous rows) when more than this share of LLM "
        "requests failed; 0 fails on any ($VLIT_LLM_FAIL_SHARE, default: never)")  # fmt: skip


def load_run_config(path: str) -> dict:
    """A Dagster run config from a YAML file; a clear error when it is not one."""
    import yaml

    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping, got a "
                          f"{type(data).__name__}")  # fmt: skip
    return data


def _env_op_config(environ: Mapping[str, str]) -> dict:
    config: dict[str, object] = {}
    for field, variable, kind in _OP_FLAGS.values():
        raw = (environ.get(variable) or "").strip()
        if not raw:
            continue
        try:
            if kind is None:
                config[field] = _types(raw)
            elif kind == "bool":
                config[field] = _flag(raw)
            else:
                config[field] = kind(raw)  # type: ignore[operator]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"${variable}={raw!r}: {exc}") from exc
    return config


def llm_run_config(
    args: argparse.Namespace, stages: Sequence[str], environ: Mapping[str, str] | None = None
) -> dict:
    """The run config for `vlit run`: variables, then --config, then flags (later wins)."""
    from vlit_assets.runner import merge_config

    environ = os.environ if environ is None else environ
    from_file = load_run_config(args.config) if getattr(args, "config", None) else {}
    if "generated" not in stages:
        return from_file
    op: dict[str, object] = {}
    resource: dict[str, object] = {}
    for dest, field in _RESOURCE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            resource[field] = str(value) if field == "concurrency" else value
    for dest, (field, _, _) in _OP_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            op[field] = value
    if getattr(args, "no_llm", False):
        op["use_llm"] = False
    base = {"ops": {GENERATED_OP: {"config": _env_op_config(environ)}}}
    flags: dict[str, object] = {"ops": {GENERATED_OP: {"config": op}}}
    if resource:
        flags["resources"] = {"llm": {"config": resource}}
    return merge_config(merge_config(base, from_file), flags)


def _metadata_value(value: object) -> object:
    return getattr(value, "value", getattr(value, "data", value))


def llm_summary_lines(metadata: Mapping[str, object]) -> list[str]:
    """The LLM section of the run summary, from generated__conversations' metadata."""
    meta = {k: _metadata_value(v) for k, v in metadata.items()}
    generators = str(meta.get("generators", ""))
    if "llm/requests" not in meta:
        return ["", f"LLM: not used ({generators or 'stage not run'})"]
    lines = ["", f"LLM: {generators}"]

    def row(label: str, value: object) -> None:
        lines.append(f"  {label:<50} {value!s:>9}")

    row("requests planned", meta["llm/requests"])
    row("sent", meta.get("llm/sent", "?"))
    row("attempts", meta.get("llm/attempts", "?"))
    row("retries", meta.get("llm/retries", "?"))
    row("cache hits", meta["llm/cache_hits"])
    row("parsed", meta.get("llm/parsed", "?"))
    row("repaired by the parser", meta.get("llm/repaired", 0))
    for key in sorted(k for k in meta if k.startswith("drops/llm/")):
        row(f"dropped: {key.removeprefix('drops/llm/')}", meta[key])
    for key in sorted(k for k in meta if k.startswith("llm/no_reply/")):
        row(f"no reply: {key.removeprefix('llm/no_reply/')}", meta[key])
    for key in sorted(k for k in meta if k.startswith("llm/failed_attempts/")):
        row(f"failed attempts: {key.removeprefix('llm/failed_attempts/')}", meta[key])
    row("prompt tokens", meta["llm/prompt_tokens"])
    row("completion tokens", meta["llm/completion_tokens"])
    row("cost (USD)", meta["llm/cost_usd"])
    lines.append(f"  {'concurrency':<30} {meta.get('llm/concurrency', '?')!s:>29}")
    if meta.get("llm/elapsed_s") is not None:
        row("seconds", meta["llm/elapsed_s"])
    if meta.get("llm/budget_stop", "no") != "no":
        lines.append(f"  budget reached: {meta['llm/budget_stop']}")
    if meta.get("llm/stopped", "no") != "no":
        lines.append(f"  stopped early: {meta['llm/stopped']}")
    if "verify/requests" in meta:
        row("verification requests", meta["verify/requests"])
        row("verified conversations", meta["verify/verified"])
        row("answers supported", meta["verify/answers_supported"])
        row("answers contradicted", meta["verify/answers_contradicted"])
        row("answers unknown", meta["verify/answers_unknown"])
        for key in sorted(k for k in meta if k.startswith("verify/errors/")):
            row(f"verification failed: {key.removeprefix('verify/errors/')}", meta[key])
    warning = meta.get("llm/warning", "none")
    if warning and warning != "none":
        lines += ["", f"!!! WARNING: {warning}"]
    return lines


def print_llm_summary(result) -> None:
    for mat in result.get_asset_materialization_events():
        if mat.asset_key.to_user_string() == GENERATED_OP:
            for line in llm_summary_lines(mat.materialization.metadata):
                print(line, file=sys.stderr if line.startswith("!!!") else sys.stdout)
            return
    for event in result.all_events:
        if event.is_step_failure and event.step_key and GENERATED_OP in event.step_key:
            err = event.step_failure_data.error if event.step_failure_data else None
            message = err.message.strip() if err else "unknown error"
            if "llm_fail_share" in message:
                print(f"\n!!! {message}", file=sys.stderr)


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
    parser = argparse.ArgumentParser(
        prog="vlit",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="materialize the pipeline for one source through Dagster",
        description="Materialize the per-source stages of one source, then the final split, "
        "through Dagster (recorded in $DAGSTER_HOME). A run whose process died is marked failed "
        "and its pool slot freed before this one starts or while it waits.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    add_llm_arguments(run)
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


class _Stop(KeyboardInterrupt):
    """SIGTERM outside a run, raised like Ctrl-C so that cleanup (finally blocks) runs."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop `vlit` cleanly. During a run Dagster takes both over and ends the
    run as interrupted (see run_guard); between runs they raise here."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    from vlit_assets.core.warehouse import WarehouseBusy

    args = build_parser().parse_args(argv)
    try:
        with _stop_on_signals():
            return int(args.func(args))
    except UserError as exc:
        print(f"vlit: {exc}", file=sys.stderr)
        return int(exc.code)
    except WarehouseBusy as exc:
        print(f"vlit: the warehouse is busy: {exc}", file=sys.stderr)
        return int(Exit.BUSY)
    except KeyboardInterrupt as exc:
        why = str(exc) or "SIGINT"
        print(f"\nvlit: stopped by {why}", file=sys.stderr)
        return int(Exit.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
