"""Template rows: the configuration, the per-image loop, helper processes or shards, regions."""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from vlit_assets.core.generated.regions import (
    RenderJob,
    choose_regions,
    region_stems,
    render_regions,
)
from vlit_assets.core.generated.templates.builders import (
    MIN_PAIRS,
    Pair,
    build_global,
    build_negative,
    build_region,
)
from vlit_assets.core.generated.templates.frames import (
    Frames,
    prepare_frames,
    quotable_captions,
    to_images,
)
from vlit_assets.core.generated.templates.scene import Draw, ImageRecord, Scene
from vlit_assets.core.ids import stable_id
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.shards import ShardMap, cut, shard_count
from vlit_assets.core.text.reading import caption_mentions
from vlit_assets.core.vocab import INSTRUCTION_TYPES

TEMPLATE_VERSION = "template-4"  # bump whenever a template, rule or selection changes
GENERATOR = "template"
OUTPUT_SCHEMA = GENERATED_CONVERSATIONS.polars_schema


@dataclass(frozen=True)
class TemplateConfig:
    types: tuple[str, ...] = ("global", "negative", "region")
    per_image: int = 1  # conversations per image for global and negative
    seed: int = 0
    region_min_area_frac: float = 0.02  # box area over image area
    max_regions_per_image: int = 2  # region conversations per image (variant = region index)
    render_regions: bool = True
    render_workers: int | None = None  # None: every core
    # Processes that write conversations; None: every core once a source has at least
    # PARALLEL_MIN_IMAGES images (below that, starting a process costs more than it saves).
    workers: int | None = None


PARALLEL_MIN_IMAGES = 20_000
# A shard's floor. Larger sources are cut by the cluster's slots, so it only matters for small
# ones, where a few tasks of ~50 images cost some tens of ms.
SHARD_MIN_IMAGES = 16


class _Rows:
    """Column buffers for the output frame; turns and ids go in flat, with list offsets."""

    def __init__(self) -> None:
        self.conv_id: list[str] = []
        self.image_id: list[str] = []
        self.itype: list[str] = []
        self.variant: list[int] = []
        self.image_path: list[str] = []
        self.region_object_id: list[str | None] = []
        self.drop_reason: list[str | None] = []
        self.drop_detail: list[str | None] = []
        self.turn_off = [0]
        self.turn_value: list[str] = []
        self.ids_off = [0]
        self.ids: list[str] = []

    def add(
        self,
        conv_id: str,
        image_id: str,
        itype: str,
        variant: int,
        image_path: str,
        region_object_id: str | None,
        pairs: list[Pair],
        ids: list[str],
    ) -> None:
        self.conv_id.append(conv_id)
        self.image_id.append(image_id)
        self.itype.append(itype)
        self.variant.append(variant)
        self.image_path.append(image_path)
        self.region_object_id.append(region_object_id)
        if len(pairs) < MIN_PAIRS:
            self.drop_reason.append("too_few_facts")
            self.drop_detail.append(
                f"the annotations support {len(pairs)} of the {MIN_PAIRS} "
                f"question/answer pairs a {itype} conversation needs"
            )
            pairs = []
        else:
            self.drop_reason.append(None)
            self.drop_detail.append(None)
        for pair in pairs:
            self.turn_value.extend(pair)
        self.turn_off.append(len(self.turn_value))
        self.ids.extend(dict.fromkeys(ids))
        self.ids_off.append(len(self.ids))

    def table(self) -> pa.Table:
        """The per-row columns; ``_frame`` adds the constant ones and the final types."""
        # Every conversation alternates human/gpt from its first turn, so the speakers of the
        # flat turn list are one repeating pattern.
        speakers = ["human", "gpt"] * (len(self.turn_value) // 2)
        turns = pa.ListArray.from_arrays(
            pa.array(self.turn_off, pa.int32()),
            pa.StructArray.from_arrays(
                [pa.array(speakers, pa.string()), pa.array(self.turn_value, pa.string())],
                names=["from", "value"],
            ),
        )
        ids = pa.ListArray.from_arrays(
            pa.array(self.ids_off, pa.int32()), pa.array(self.ids, pa.string())
        )
        table = pa.table(
            {
                "conversation_id": pa.array(self.conv_id, pa.string()),
                "image_id": pa.array(self.image_id, pa.string()),
                "instruction_type": pa.array(self.itype, pa.string()),
                "variant": pa.array(self.variant, pa.int32()),
                "turns": turns,
                "image_path": pa.array(self.image_path, pa.string()),
                "region_object_id": pa.array(self.region_object_id, pa.string()),
                "source_annotation_ids": ids,
                "drop_reason": pa.array(self.drop_reason, pa.string()),
                "drop_detail": pa.array(self.drop_detail, pa.string()),
            }
        )
        return table


def _from_arrow(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)  # a Table converts to a frame, never a Series
    return df


def _frame(table: pa.Table, source: str, run_id: str) -> pl.DataFrame:
    df = _from_arrow(table)
    consts = {
        "source": source,
        "generator": GENERATOR,
        "model": None,
        "prompt_version": TEMPLATE_VERSION,
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_ms": None,
        "cache_hit": None,
        "run_id": run_id,
    }
    return df.with_columns(
        pl.lit(v, dtype=OUTPUT_SCHEMA[k]).alias(k) for k, v in consts.items()
    ).select(pl.col(c).cast(t) for c, t in OUTPUT_SCHEMA.items())


def _check_config(config: TemplateConfig) -> None:
    unknown = [t for t in config.types if t not in INSTRUCTION_TYPES]
    if unknown:
        raise ValueError(f"TemplateConfig.types: unknown instruction types {unknown}")
    if config.per_image < 1 or config.max_regions_per_image < 0:
        raise ValueError("TemplateConfig: per_image must be >= 1, max_regions_per_image >= 0")
    if not 0 <= config.region_min_area_frac < 1:
        raise ValueError("TemplateConfig.region_min_area_frac must be in [0, 1)")
    if config.workers is not None and config.workers < 1:
        raise ValueError(f"TemplateConfig.workers must be >= 1, got {config.workers}")


def generate_templates(
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    categories: pl.DataFrame,
    tags: pl.DataFrame,
    *,
    source: str,
    image_root: Path,
    regions_dir: Path,
    config: TemplateConfig = TemplateConfig(),  # noqa: B008 (frozen, so sharing is safe)
    run_id: str = "",
    mapper: ShardMap | None = None,
) -> pl.DataFrame:
    """One row per template conversation (``generated__conversations`` columns).

    Global and negative rows point at the original image under ``image_root``; region rows at
    ``regions_dir/<source>/<image stem>_<k>.jpg``, rendered here when
    ``config.render_regions`` (``<out>.stamp`` sidecars let a re-run skip them). A
    conversation the annotations cannot fill with ``MIN_PAIRS`` question/answer pairs is a
    row with empty turns and a ``drop_reason``; a region whose image fails to render keeps its
    turns and gets one too. Rows come sorted by image id, then type order, then variant.

    A ``mapper`` (a cluster) writes contiguous chunks of images as shards and renders the
    regions as shards, instead of ``config.workers`` and ``config.render_workers`` processes;
    the rows are the same.
    """
    _check_config(config)
    # The loop allocates millions of small objects that all stay alive until the frame is
    # built; letting the cyclic GC rescan them again and again made 100k images 40% slower.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    workers = generation_workers(config, images.height) if mapper is None else 1
    pool: ProcessPoolExecutor | None = None
    try:
        # Helper processes start first: importing this module in them overlaps the preparation.
        if workers > 1:
            pool = _start_pool(workers - 1)
        frames = prepare_frames(images, captions, objects, categories, tags, source)
        names = categories.filter(pl.col("source") == source).get_column("name")
        # Captions are ground truth for presence (the scorer's CHAIR reads them too), so what
        # they name is never denied, even where COCO drew no box.
        named = caption_mentions(frames.captions)
        frames = frames._replace(captions=quotable_captions(frames.captions, frames.objects, names))
        stems = (
            region_stems(frames.images.select("image_id", "file_name").iter_rows())
            if "region" in config.types
            else {}
        )
        paths = (str(Path(image_root).resolve()), str(Path(regions_dir).resolve() / source))
        inputs = (frames, named, stems, paths, source, config, run_id)
        if mapper is not None:
            df, jobs = _generate_sharded(*inputs, mapper)
        else:
            df, jobs = _generate(*inputs, pool, workers)
        if config.render_regions and jobs:
            df = _render(df, jobs, config.render_workers, mapper)
        return df
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if gc_was_enabled:
            gc.enable()


_Job = tuple[int, RenderJob]  # output row, what to render


def _generate(
    frames: Frames,
    named: pl.DataFrame,
    stems: dict[str, str],
    paths: tuple[str, str],
    source: str,
    config: TemplateConfig,
    run_id: str,
    pool: ProcessPoolExecutor | None = None,
    workers: int = 1,
) -> tuple[pl.DataFrame, list[_Job]]:
    if pool is None or workers < 2 or frames.images.height < 2:
        table, jobs = _template_rows(to_images(frames, named), source, paths, stems, config)
        return _frame(table, source, run_id), jobs
    # Contiguous chunks of images (sorted by id), so concatenating the parts keeps the row
    # order. Each helper gets its chunk's rows as Arrow tables, whose buffers cross the process
    # boundary without per-value pickling, builds its own records and sends an Arrow table
    # back; this process writes the first chunk meanwhile.
    size = -(-frames.images.height // workers)
    chunks = [
        _chunk(frames, named, frames.images.slice(start, size))
        for start in range(0, frames.images.height, size)
    ]
    futures = [
        pool.submit(
            _chunk_rows,
            tuple(frame.to_arrow() for frame in chunk_frames),
            chunk_named.to_arrow(),
            paths,
            {i: stems[i] for i in chunk_frames.images["image_id"].to_list()} if stems else {},
            source,
            config,
        )
        for chunk_frames, chunk_named in chunks[1:]
    ]
    parts = [_template_rows(to_images(*chunks[0]), source, paths, stems, config)]
    parts += [future.result() for future in futures]
    return _joined(parts, source, run_id)


def _joined(
    parts: list[tuple[pa.Table, list[_Job]]], source: str, run_id: str
) -> tuple[pl.DataFrame, list[_Job]]:
    """The chunks' rows in chunk order, with each render job's row moved by the rows before."""
    jobs: list[_Job] = []
    offset = 0
    for table, part_jobs in parts:
        jobs += [(row + offset, job) for row, job in part_jobs]
        offset += table.num_rows
    return _frame(pa.concat_tables([table for table, _ in parts]), source, run_id), jobs


def _generate_sharded(
    frames: Frames,
    named: pl.DataFrame,
    stems: dict[str, str],
    paths: tuple[str, str],
    source: str,
    config: TemplateConfig,
    run_id: str,
    mapper: ShardMap,
) -> tuple[pl.DataFrame, list[_Job]]:
    """``_generate`` with every chunk a shard of ``mapper``: the same contiguous chunks of
    images, sent as Arrow tables, so the joined rows keep their order."""
    n = frames.images.height
    shards = cut(n, shard_count(mapper, n, min_items=SHARD_MIN_IMAGES))
    work = []
    for start, length in shards:
        chunk_frames, chunk_named = _chunk(frames, named, frames.images.slice(start, length))
        ids = chunk_frames.images["image_id"].to_list()
        work.append(
            (
                tuple(frame.to_arrow() for frame in chunk_frames),
                chunk_named.to_arrow(),
                paths,
                {i: stems[i] for i in ids} if stems else {},
                source,
                config,
            )
        )
    parts = mapper.map(_shard_rows, work, step="generated/templates", sizes=[k for _, k in shards])
    if not parts:  # a source without images
        return _generate(frames, named, stems, paths, source, config, run_id)
    return _joined(parts, source, run_id)


def _chunk(
    frames: Frames, named: pl.DataFrame, images: pl.DataFrame
) -> tuple[Frames, pl.DataFrame]:
    ids = images["image_id"].implode()
    inside = pl.col("image_id").is_in(ids)
    return (
        Frames(
            images,
            frames.captions.filter(inside),
            frames.objects.filter(inside),
            frames.tags.filter(inside),
        ),
        named.filter(inside),
    )


def _chunk_rows(
    tables: tuple[pa.Table, ...],
    named: pa.Table,
    paths: tuple[str, str],
    stems: dict[str, str],
    source: str,
    config: TemplateConfig,
) -> tuple[pa.Table, list[_Job]]:
    """A helper process's part: records from its chunk's rows, then the conversations."""
    gc.disable()  # a helper's own process; see generate_templates
    frames = Frames(*(_from_arrow(t) for t in tables))
    imgs = to_images(frames, _from_arrow(named))
    return _template_rows(imgs, source, paths, stems, config)


def _shard_rows(args: tuple) -> tuple[pa.Table, list[_Job]]:
    """One shard's rows; the GC is switched back on after it, since the process lives on."""
    was_enabled = gc.isenabled()
    try:
        return _chunk_rows(*args)
    finally:
        if was_enabled:
            gc.enable()


def generation_workers(config: TemplateConfig, n_images: int) -> int:
    """Processes that write template conversations for a source of ``n_images`` images."""
    if config.workers is not None:
        return max(1, min(config.workers, n_images))
    if n_images < PARALLEL_MIN_IMAGES:
        return 1
    return max(1, min(os.cpu_count() or 1, n_images))


def _start_pool(helpers: int) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded Dagster process
    pool = ProcessPoolExecutor(max_workers=helpers, mp_context=ctx)
    for _ in range(helpers):
        pool.submit(_ready)  # starts the processes now rather than at the first real task
    return pool


def _ready() -> bool:
    return True


def _render(
    df: pl.DataFrame, jobs: list[_Job], workers: int | None, mapper: ShardMap | None
) -> pl.DataFrame:
    results = render_regions([job for _, job in jobs], workers=workers, mapper=mapper)
    reasons, details = df["drop_reason"].to_list(), df["drop_detail"].to_list()
    failed = 0
    for (row, _), result in zip(jobs, results, strict=True):
        if result.status == "failed":
            reasons[row], details[row] = "region_render_failed", result.error
            failed += 1
    if not failed:
        return df
    return df.with_columns(
        pl.Series("drop_reason", reasons, dtype=pl.String),
        pl.Series("drop_detail", details, dtype=pl.String),
    )


def _template_rows(
    imgs: list[ImageRecord],
    source: str,
    paths: tuple[str, str],
    stems: dict[str, str],
    config: TemplateConfig,
) -> tuple[pa.Table, list[_Job]]:
    """Rows of ``imgs`` with the render jobs indexed by row (callers have the GC off)."""
    root, region_root = paths
    rows = _Rows()
    jobs: list[_Job] = []
    seed = config.seed
    for img in imgs:
        scene = Scene(img)
        image_path = os.path.join(root, img.file_name)
        for itype in config.types:
            if itype == "region":
                area = img.width * img.height
                picked = choose_regions(
                    [(o[0], o[1], o[4] * o[5] / area, o[6]) for o in img.objects],
                    config.region_min_area_frac,
                    config.max_regions_per_image,
                )
                for k, obj in enumerate(img.objects[i][:6] for i in picked):
                    conv_id = stable_id(
                        "conv", source, img.image_id, itype, GENERATOR, TEMPLATE_VERSION, k
                    )
                    out = os.path.join(region_root, f"{stems[img.image_id]}_{k}.jpg")
                    pairs, ids = build_region(Draw(f"{seed}\x1f{conv_id}"), scene, obj)
                    if config.render_regions:
                        jobs.append((len(rows.conv_id), RenderJob(image_path, obj[2:6], out)))
                    rows.add(conv_id, img.image_id, itype, k, out, obj[0], pairs, ids)
                continue
            build = build_global if itype == "global" else build_negative
            for v in range(config.per_image):
                conv_id = stable_id(
                    "conv", source, img.image_id, itype, GENERATOR, TEMPLATE_VERSION, v
                )
                pairs, ids = build(Draw(f"{seed}\x1f{conv_id}"), scene)
                rows.add(conv_id, img.image_id, itype, v, image_path, None, pairs, ids)
    return rows.table(), jobs
