"""Training-ready exports of a selection: LLaVA and paper-format JSON, Parquet, manifest, card.

:func:`write_export` writes one version folder ``<out_dir>/<version>/`` atomically (built in a
hidden sibling folder, then renamed), so a failed export leaves nothing behind, and refuses to
replace an existing version unless told to. Layout and choices are in docs/selection.md.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl

from vlit_assets.core.final.report import PRINCIPLE_METRICS
from vlit_assets.core.final.rules import RULES
from vlit_assets.core.formats.writers import llava_json, paper_json
from vlit_assets.core.vocab import IMAGE_TOKEN, INSTRUCTION_TYPES, TRAIN, UNLABELLED, VAL

SPLITS = (TRAIN, VAL)
CHART_DIR = "charts"
CHARTS = {
    "type_histogram": "Instruction types before and after selection",
    "category_histogram": "Categories mentioned (top 30 after selection)",
    "score_distributions": "Relevance, novelty and answer length before and after selection",
}
TOP_CATEGORIES = 30
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MANIFEST_KEYS = (
    "version",
    "created_at",
    "counts",
    "paper_skipped",
    "images",
    "selection",
    "drops_by_first_rule",
    "files",
)
_REPORT_KEYS = ("settings", "counts", "drops_by_first_rule", "histograms", "metrics")


@dataclass(frozen=True)
class ExportResult:
    version_dir: Path  # the final folder
    files: dict[str, Path]  # relative name -> path, every file but manifest.json
    manifest: dict
    manifest_sha256: str


# ---------------------------------------------------------------- checks


def _check_inputs(kept: pl.DataFrame, decisions: pl.DataFrame, version: str, report: dict) -> None:
    if not _VERSION.match(version):
        raise ValueError(
            f"version {version!r} must start with a letter or digit and hold only "
            "letters, digits, '.', '_' and '-'"
        )
    needed = ("conversation_id", "source", "instruction_type", "turns", "image_path", "split")
    missing = [c for c in needed if c not in kept.columns]
    if missing:
        raise ValueError(f"kept rows lack columns {missing}")
    bad = kept.filter(~pl.col("split").is_in(SPLITS) | pl.col("split").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise ValueError(
            f"conversation {row['conversation_id']}: split is {row['split']!r}, expected "
            f"one of {SPLITS}"
        )
    # null is a text-only conversation (imported LLaVA-1.5 style); "" is a broken row
    no_image = kept.filter(pl.col("image_path") == "")
    if no_image.height:
        cid = no_image["conversation_id"][0]
        raise ValueError(f"conversation {cid}: image_path is empty; nothing to train on")
    if kept["conversation_id"].n_unique() != kept.height:
        raise ValueError("kept rows: conversation_id is not unique")
    marked = decisions.filter(pl.col("kept")).select("conversation_id", "split")
    joined = kept.select("conversation_id", "split").join(
        marked, on="conversation_id", how="full", suffix="_decided"
    )
    off = joined.filter(
        pl.col("conversation_id").is_null()
        | pl.col("conversation_id_decided").is_null()
        | (pl.col("split") != pl.col("split_decided"))
    )
    if off.height:
        row = off.row(0, named=True)
        cid = row["conversation_id"] or row["conversation_id_decided"]
        raise ValueError(
            f"conversation {cid}: kept rows and decisions disagree (kept/split differ); "
            "export the kept frame and decisions of the same Selection"
        )
    absent = [k for k in _REPORT_KEYS if k not in report]
    if absent:
        raise ValueError(f"report lacks {absent}; pass Selection.report from select.decide")


# ---------------------------------------------------------------- image paths


def _absolute_image(path: str, source: str, roots: Mapping[str, Path]) -> str | None:
    if os.path.isabs(path):
        return os.path.normpath(path)
    root = roots.get(source)
    return os.path.normpath(os.path.join(str(root), path)) if root is not None else None


def export_image_paths(
    kept: pl.DataFrame, image_root_by_source: Mapping[str, Path] | None
) -> tuple[pl.Series, dict]:
    """The ``image`` value each record gets, and how paths are to be read.

    When every path resolves to an absolute one (absolute already, or relative to its source's
    root), paths are written relative to their deepest common folder (``image_root``), unless
    that is the filesystem root; then they are absolute. Paths of a source without a root stay
    as stored and the manifest names that source.
    """
    roots = {k: Path(v) for k, v in (image_root_by_source or {}).items()}
    # Paths repeat (many conversations per image): resolve each distinct one once.
    pairs = kept.select("image_path", "source").unique(maintain_order=True)
    stored = pairs["image_path"].to_list()
    sources = pairs["source"].to_list()
    absolute = [
        None if p is None else _absolute_image(p, s, roots)
        for p, s in zip(stored, sources, strict=True)
    ]
    unresolved_pairs = {
        (p, s) for p, s, a in zip(stored, sources, absolute, strict=True) if a is None and p
    }
    unresolved = (
        dict(
            sorted(
                Counter(
                    s
                    for p, s in kept.select("image_path", "source").iter_rows()
                    if (p, s) in unresolved_pairs
                ).items()
            )
        )
        if unresolved_pairs
        else {}
    )
    resolved = [a for a in absolute if a is not None]
    common = None
    if resolved and not unresolved:
        common = os.path.commonpath([os.path.dirname(p) for p in resolved])
        if os.path.dirname(common) == common:  # the filesystem root helps no one
            common = None
    if common is not None:
        mapped = [
            None if a is None else Path(os.path.relpath(a, common)).as_posix() for a in absolute
        ]
        mode = "relative_to_image_root"
    else:
        mapped = [a if a is not None else p for a, p in zip(absolute, stored, strict=True)]
        mode = "absolute" if not unresolved else "absolute_except_unresolved_sources"
    info = {"mode": mode, "image_root": common, "unresolved_sources": unresolved}
    lookup = pairs.with_columns(_mapped=pl.Series(mapped, dtype=pl.String))
    values = kept.select("image_path", "source").join(
        lookup, on=["image_path", "source"], how="left", nulls_equal=True, maintain_order="left"
    )["_mapped"]
    return values.alias("image_path"), info


def _prepare(kept: pl.DataFrame, image_root_by_source: Mapping[str, Path] | None) -> tuple:
    images, info = export_image_paths(kept, image_root_by_source)
    # Drop an <image> token at the start or end of the first turn (valid per format_check);
    # the LLaVA writer puts its own back and the paper format has none.
    first = pl.col("turns").list.first()
    value = first.struct.field("value")
    trimmed = value.str.strip_chars()
    value = (
        pl.when(trimmed.str.starts_with(IMAGE_TOKEN))
        .then(trimmed.str.strip_prefix(IMAGE_TOKEN).str.strip_chars_start())
        .when(trimmed.str.ends_with(IMAGE_TOKEN))
        .then(trimmed.str.strip_suffix(IMAGE_TOKEN).str.strip_chars_end())
        .otherwise(value)
    )
    turns = (
        pl.when(pl.col("turns").list.len() > 0)
        .then(
            pl.concat_list(
                pl.struct(first.struct.field("from").alias("from"), value.alias("value")),
                pl.col("turns").list.slice(1),
            )
        )
        .otherwise(pl.col("turns"))
    )
    frame = kept.with_columns(images, turns.cast(kept.schema["turns"]).alias("turns"))
    return frame.sort("split", "conversation_id"), info


# ---------------------------------------------------------------- writers


def _json_ready(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, doc: object) -> None:
    # orjson: the training files run to gigabytes, where the json module takes minutes.
    # It writes NaN and infinities as null, as _json_ready does.
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    path.write_bytes(orjson.dumps(doc, option=options, default=_json_default) + b"\n")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_training_files(
    tmp: Path, frame: pl.DataFrame, *, image_source: str, construction_time: str
) -> tuple[dict[str, int], dict[str, int]]:
    """LLaVA and paper files per split; returns records per file and unlabelled skips per split."""
    records: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for split in SPLITS:
        rows = frame.filter(pl.col("split") == split)
        if "type_inferred" in rows.columns:
            # an inferred type is our reading, not the dataset's label: it is not written out
            inferred = pl.col("type_inferred").fill_null(False)
            rows = rows.with_columns(
                instruction_type=pl.when(inferred)
                .then(pl.lit(UNLABELLED))
                .otherwise(pl.col("instruction_type"))
            )
        (tmp / f"llava_{split}.json").write_bytes(llava_json(rows) + b"\n")
        records[f"llava_{split}.json"] = rows.height
        # the paper format has no text-only record: those rows ship in the LLaVA file only
        labelled = rows.filter(
            pl.col("instruction_type").is_in(INSTRUCTION_TYPES) & pl.col("image_path").is_not_null()
        )
        skipped[split] = rows.filter(pl.col("instruction_type") == UNLABELLED).height
        other = rows.filter(
            ~pl.col("instruction_type").is_in([*INSTRUCTION_TYPES, UNLABELLED])
        ).height
        if other:
            bad = rows.filter(~pl.col("instruction_type").is_in([*INSTRUCTION_TYPES, UNLABELLED]))
            row = bad.row(0, named=True)
            raise ValueError(
                f"conversation {row['conversation_id']}: instruction_type "
                f"{row['instruction_type']!r} is neither a paper type nor {UNLABELLED!r}"
            )
        paper = paper_json(labelled, image_source=image_source, construction_time=construction_time)
        (tmp / f"paper_{split}.json").write_bytes(paper + b"\n")
        records[f"paper_{split}.json"] = labelled.height
    return records, skipped


def _counts(frame: pl.DataFrame) -> dict:
    by_split: dict = {}
    for split in SPLITS:
        rows = frame.filter(pl.col("split") == split)
        cats = (
            rows.select(pl.col("mentioned_categories").alias("c"))
            .explode("c", keep_nulls=False)
            .group_by("c")
            .len()
            .sort(["len", "c"], descending=[True, False])
            if "mentioned_categories" in rows.columns
            else pl.DataFrame(schema={"c": pl.String, "len": pl.UInt32})
        )
        by_split[split] = {
            "conversations": rows.height,
            "instruction_type": dict(
                rows.group_by("instruction_type").len().sort("instruction_type").iter_rows()
            ),
            "source": dict(rows.group_by("source").len().sort("source").iter_rows()),
            "category": dict(cats.iter_rows()),
        }
    return {"conversations": frame.height, "by_split": by_split}


# ---------------------------------------------------------------- charts


def _figure(width: float, height: float):
    # Figure + Agg canvas, never pyplot: no global backend state in a long-lived process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _grouped_bars(ax, labels: list[str], before: list[int], after: list[int], horizontal: bool):
    import numpy as np

    pos = np.arange(len(labels))
    width = 0.4
    bar = ax.barh if horizontal else ax.bar
    bar(pos - width / 2, before, width, label="before", color="#bbbbbb")
    bar(pos + width / 2, after, width, label="after", color="#3b75af")
    if horizontal:
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
        ax.set_xlabel("conversations")
    else:
        ax.set_xticks(pos, labels)
        ax.set_ylabel("conversations")
    ax.legend()


def _type_chart(hist: dict, path: Path) -> None:
    labels = sorted(set(hist["before"]) | set(hist["after"]))
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    before = [hist["before"].get(k, 0) for k in labels]
    after = [hist["after"].get(k, 0) for k in labels]
    _grouped_bars(ax, labels, before, after, horizontal=False)
    ax.set_title("Instruction types")
    _save(fig, path)


def _category_chart(hist: dict, path: Path) -> None:
    after = hist["after"]
    labels = sorted(after, key=lambda k: (-after[k], k))[:TOP_CATEGORIES]
    if not labels:
        labels = sorted(hist["before"], key=lambda k: (-hist["before"][k], k))[:TOP_CATEGORIES]
    fig = _figure(7, max(3.0, 0.28 * len(labels) + 1.2))
    ax = fig.add_subplot()
    before = [hist["before"].get(k, 0) for k in labels]
    kept = [after.get(k, 0) for k in labels]
    _grouped_bars(ax, labels, before, kept, horizontal=True)
    ax.set_title(f"Categories mentioned (top {TOP_CATEGORIES} after selection)")
    _save(fig, path)


def _distribution_chart(distributions: dict, path: Path) -> None:
    names = list(distributions) or ["(none)"]
    fig = _figure(4.2 * len(names), 3.6)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.set_title(name)
        if name not in distributions:
            continue
        for when, color in (("before", "#bbbbbb"), ("after", "#3b75af")):
            d = distributions[name][when]
            ax.stairs(d["counts"], d["edges"], label=f"{when} ({d['nulls']} null)", color=color)
        ax.set_ylabel("conversations")
        ax.legend(fontsize="small")
    _save(fig, path)


def _write_charts(tmp: Path, report: dict) -> dict[str, str]:
    folder = tmp / CHART_DIR
    folder.mkdir()
    paths = {name: f"{CHART_DIR}/{name}.png" for name in CHARTS}
    _type_chart(report["histograms"]["instruction_type"], tmp / paths["type_histogram"])
    _category_chart(report["histograms"]["category"], tmp / paths["category_histogram"])
    _distribution_chart(report.get("distributions", {}), tmp / paths["score_distributions"])
    return paths


# ---------------------------------------------------------------- dataset card


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric_rows(report: dict) -> list[str]:
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    lines = ["| principle | metric | before | after |", "|---|---|---|---|"]
    for principle, keys in PRINCIPLE_METRICS.items():
        for key in keys:
            lines.append(
                f"| {principle} | `{key}` | {_fmt(before.get(key))} | {_fmt(after.get(key))} |"
            )
    return lines


def _drop_rows(report: dict) -> list[str]:
    failing = report.get("rows_failing_rule", {})
    lines = [
        "| rule | meaning | dropped (first failing rule) | rows failing it |",
        "|---|---|---|---|",
    ]
    for rule, meaning in RULES.items():
        first = report["drops_by_first_rule"].get(rule, 0)
        lines.append(f"| `{rule}` | {meaning} | {first} | {failing.get(rule, '—')} |")
    total = sum(report["drops_by_first_rule"].values())
    lines.append(f"| **total** | | **{total}** | |")
    return lines


def _count_rows(manifest: dict) -> list[str]:
    by_split = manifest["counts"]["by_split"]
    types = sorted({t for s in SPLITS for t in by_split[s]["instruction_type"]})
    lines = ["| split | conversations | " + " | ".join(types) + " |"]
    lines.append("|---|---|" + "---|" * len(types))
    for split in SPLITS:
        row = by_split[split]
        cells = [str(row["instruction_type"].get(t, 0)) for t in types]
        lines.append(f"| {split} | {row['conversations']} | " + " | ".join(cells) + " |")
    return lines


def _card(manifest: dict, report: dict, charts: dict[str, str]) -> str:
    counts = report["counts"]
    images = manifest["images"]
    lines = [
        f"# VLIT dataset {manifest['version']}",
        "",
        f"Built {manifest['created_at']} by vlit_assets from "
        f"{counts['scored']} scored conversations: {counts['kept']} kept, "
        f"{counts['dropped']} dropped. Every threshold and balance setting, the sources and "
        "the sha256 of every file are in `manifest.json`.",
        "",
        "## Files",
        "",
        "- `llava_train.json`, `llava_val.json`: LLaVA training records (`<image>` leads the "
        "first user turn; an extra `instruction_type` key when the type is known).",
        "- `paper_train.json`, `paper_val.json`: the review paper's release format; "
        f"rows without an instruction type are left out "
        f"({manifest['paper_skipped']['train']} train, {manifest['paper_skipped']['val']} val).",
        "- `conversations.parquet`: every kept row with its split and every metric.",
        "- `decisions.parquet`: every scored row, kept or not, with all rules it failed.",
        "",
        f"Image paths: `{images['mode']}`"
        + (f", relative to `{images['image_root']}`." if images["image_root"] else "."),
        "",
        "## Counts",
        "",
        *_count_rows(manifest),
        "",
        "## Quality before and after selection",
        "",
        *_metric_rows(report),
        "",
        "## Drops per rule",
        "",
        "Rules run in this order; each dropped row is counted once, under its first failing "
        "rule. A null metric (not judged) never fails a rule.",
        "",
        *_drop_rows(report),
        "",
        "## Charts",
        "",
    ]
    for name, title in CHARTS.items():
        lines += [f"![{title}]({charts[name]})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- atomic folder


@contextmanager
def _staging(out_dir: Path, version: str, overwrite: bool) -> Iterator[Path]:
    """A hidden sibling folder that becomes ``out_dir/version`` only if the body succeeds."""
    final = out_dir / version
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{version}.partial-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = out_dir / f".{version}.replaced-{uuid.uuid4().hex}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- entry point


def _manifest(
    *,
    version: str,
    created_at: datetime,
    frame: pl.DataFrame,
    skipped: dict[str, int],
    images: dict,
    report: dict,
    manifest_extra: Mapping,
) -> dict:
    clash = sorted(set(manifest_extra) & set(_MANIFEST_KEYS))
    if clash:
        raise ValueError(f"manifest_extra keys {clash} collide with the manifest's own keys")
    return {
        "version": version,
        "created_at": created_at.isoformat(),
        "counts": _counts(frame),
        "paper_skipped": {**skipped, "reason": f"instruction_type {UNLABELLED!r}"},
        "images": images,
        "selection": report["settings"],
        "drops_by_first_rule": report["drops_by_first_rule"],
        **manifest_extra,
    }


def write_export(
    kept: pl.DataFrame,
    decisions: pl.DataFrame,
    *,
    out_dir: Path,
    version: str,
    image_root_by_source: Mapping[str, Path] | None,
    manifest_extra: Mapping,
    report: dict,
    overwrite: bool = False,
    created_at: datetime | None = None,
) -> ExportResult:
    """Write ``out_dir/<version>/`` from a Selection's kept rows, decisions and report.

    ``manifest_extra`` (sources and their file hashes, code and prompt/template versions, an
    optional ``image_source`` label for the paper files) is merged into the manifest's top
    level. ``created_at`` defaults to now (UTC); pass it for byte-identical re-exports.
    """
    _check_inputs(kept, decisions, version, report)
    created_at = created_at or datetime.now(UTC)
    out_dir = Path(out_dir)
    frame, images = _prepare(kept, image_root_by_source)
    image_source = str(
        manifest_extra.get("image_source") or ", ".join(sorted(frame["source"].unique()))
    )
    with _staging(out_dir, version, overwrite) as tmp:
        records, skipped = _write_training_files(
            tmp, frame, image_source=image_source, construction_time=created_at.date().isoformat()
        )
        kept.sort("split", "conversation_id").write_parquet(tmp / "conversations.parquet")
        decisions.sort("conversation_id").write_parquet(tmp / "decisions.parquet")
        records |= {"conversations.parquet": kept.height, "decisions.parquet": decisions.height}
        charts = _write_charts(tmp, report)
        manifest = _manifest(
            version=version,
            created_at=created_at,
            frame=frame,
            skipped=skipped,
            images=images,
            report=report,
            manifest_extra=manifest_extra,
        )
        (tmp / "README.md").write_text(_card(manifest, report, charts) + "\n", encoding="utf-8")
        names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest["files"] = {
            name: {
                "sha256": sha256_file(tmp / name),
                "bytes": (tmp / name).stat().st_size,
                **({"records": records[name]} if name in records else {}),
            }
            for name in names
        }
        _write_json(tmp / "manifest.json", manifest)
        manifest_sha = sha256_file(tmp / "manifest.json")
    final = out_dir / version
    return ExportResult(
        version_dir=final,
        files={name: final / name for name in names},
        manifest=_json_ready(manifest),  # type: ignore[arg-type]
        manifest_sha256=manifest_sha,
    )
