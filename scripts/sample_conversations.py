"""A by-eye sample of template conversations on coco-mini, and the share of stated relations
whose boxes overlap.

Run: ``PYTHONPATH=. .venv/bin/python scripts/sample_conversations.py [--per-type 30]
[--out docs/sample_conversations.md]``. It collects coco-mini (``VLIT_COCO_MINI``, default
``../shared/coco-mini``), writes every template conversation (regions not rendered), prints
``--per-type`` conversations of each instruction type as Markdown (drawn by a fixed hash, so
the sample is stable), and ends with the relation figure: of the left/right/above/below
relations the answers state, how many are about boxes that overlap (intersect). The parser
reads both the old wording ("to the left of") and the new one ("further left in the picture
than"), so the figure can be measured on any commit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates  # noqa: E402
from vlit_assets.core.raw.annotations import find_coco_files  # noqa: E402
from vlit_assets.core.raw.collect import collect_source  # noqa: E402
from vlit_assets.core.text.categories import COCO_CATEGORIES  # noqa: E402
from vlit_assets.core.text.inflect import plural  # noqa: E402

SOURCE = "coco-mini"
_SIDE = {
    "to the left of": "left",
    "to the right of": "right",
    "above": "above",
    "below": "below",
    "further left in the picture than": "left",
    "further right in the picture than": "right",
    "higher in the picture than": "above",
    "lower in the picture than": "below",
}


def _nouns() -> dict[str, str]:
    out: dict[str, str] = {}
    for _, name, _ in COCO_CATEGORIES:
        out[name] = name
        out[plural(name)] = name
        if name == "person":
            out["persons"] = name
    return out


NOUNS = _nouns()
_NOUN_RE = "|".join(sorted((re.escape(n) for n in NOUNS), key=len, reverse=True))
_REL_RE = "|".join(sorted((re.escape(r) for r in _SIDE), key=len, reverse=True))
RELATION_RE = re.compile(
    rf"\b(?:the (boxed )?(?:(?:pair|piece)s? of )?({_NOUN_RE})|(It|it)) (?:is|are) (?:also )?"
    rf"({_REL_RE}) the (?:(?:pair|piece)s? of )?({_NOUN_RE})\b"
)


def coco_mini_dir() -> Path:
    path = Path(os.environ.get("VLIT_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
    if not path.exists():
        raise SystemExit(f"coco-mini not found at {path}: set VLIT_COCO_MINI")
    return path


def generate(root: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(template conversations, raw__objects) of coco-mini."""
    result = collect_source(SOURCE, root)
    with tempfile.TemporaryDirectory() as tmp:
        df = generate_templates(
            result.images,
            result.captions,
            result.objects,
            result.categories,
            result.tags,
            source=SOURCE,
            image_root=find_coco_files(root).image_dir,
            regions_dir=Path(tmp),
            config=TemplateConfig(render_regions=False),
        )
    return df, result.objects


def _overlap(a: tuple, b: tuple) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)


def relation_overlap(df: pl.DataFrame, objects: pl.DataFrame) -> tuple[int, int]:
    """(stated side relations, of which some A box intersects some B box)."""
    boxes: dict[tuple[str, str], list[tuple]] = {}
    by_id: dict[str, tuple] = {}
    for oid, image_id, name, x, y, w, h, crowd in objects.select(
        "object_id", "image_id", "category_name", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "iscrowd"
    ).iter_rows():
        by_id[oid] = (x, y, w, h)
        if not crowd:
            boxes.setdefault((image_id, name), []).append((x, y, w, h))
    stated = overlapping = 0
    rows = df.select("image_id", "region_object_id", "turns").iter_rows()
    for image_id, region_oid, turns in rows:
        for turn in turns or []:
            if turn["from"] != "gpt":
                continue
            for boxed, subj, it, _, obj in RELATION_RE.findall(turn["value"]):
                if (boxed or it) and region_oid:
                    a = [by_id[region_oid]]
                elif subj:
                    a = boxes.get((image_id, NOUNS[subj]), [])
                else:
                    continue
                b = boxes.get((image_id, NOUNS[obj]), [])
                if not a or not b:
                    continue
                stated += 1
                overlapping += any(_overlap(x, y) for x in a for y in b)
    return stated, overlapping


def _pick(df: pl.DataFrame, n: int) -> pl.DataFrame:
    key = [hashlib.blake2b(c.encode(), digest_size=8).hexdigest() for c in df["conversation_id"]]
    return df.with_columns(pl.Series("_k", key)).sort("_k").head(n).drop("_k")


def sample_markdown(df: pl.DataFrame, objects: pl.DataFrame, per_type: int) -> str:
    names = objects.group_by("image_id").agg(
        pl.col("category_name").unique().sort().alias("annotated")
    )
    df = df.filter(pl.col("drop_reason").is_null()).join(names, on="image_id", how="left")
    lines = [
        "# Sample of template conversations on coco-mini",
        "",
        "Written by `scripts/sample_conversations.py` (regenerate it after changing a template)."
        f" {per_type} conversations per instruction type, drawn by a hash of the conversation id;"
        " each is headed by its image's annotated categories.",
        "",
    ]
    for itype in ("global", "negative", "region"):
        part = _pick(df.filter(pl.col("instruction_type") == itype), per_type)
        lines += [f"## {itype} ({part.height})", ""]
        for i, row in enumerate(part.iter_rows(named=True), 1):
            annotated = ", ".join(row["annotated"] or []) or "nothing"
            region = f", box {row['region_object_id']}" if row["region_object_id"] else ""
            lines.append(f"### {itype} {i}: image {row['image_id']}{region}")
            lines.append(f"Annotated: {annotated}")
            lines.append("")
            for turn in row["turns"]:
                who = "Q" if turn["from"] == "human" else "A"
                lines.append(f"- **{who}:** {turn['value']}")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-type", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="write the sample here too")
    args = parser.parse_args()
    df, objects = generate(coco_mini_dir())
    text = sample_markdown(df, objects, args.per_type)
    stated, overlapping = relation_overlap(df, objects)
    share = overlapping / stated if stated else 0.0
    figure = (
        f"Side relations stated: {stated}; about overlapping boxes: {overlapping} ({share:.1%})."
    )
    text += f"\n## Relations\n\n{figure}\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
