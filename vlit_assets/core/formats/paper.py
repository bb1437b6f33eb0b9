"""Records of the paper's release format read into conversations."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from vlit_assets.core.formats.records import (
    PAPER_IMG_IDS_PREFIX,
    Collector,
    ImportResult,
    InstructionFormatError,
    Problem,
    check_lengths,
    check_type,
    conversation_row,
    paper_turns,
    text_field,
)

_REGION_SUFFIX = re.compile(r"_\d+$")


def _paper_record(out: Collector, index: int, record: object) -> None:
    ref = f"[{index}]"
    if not isinstance(record, dict):
        kind = type(record).__name__
        out.reject(ref, Problem("", "annotation_bad_field", f"expected an object, got {kind}"))
        return
    img_ids = text_field(record, "img_ids", allow_int=True)
    image = text_field(record, "image")
    itype = check_type(record.get("instruction_type"), required=True)
    turns = paper_turns(record.get("conversations"))
    for checked in (img_ids, image, itype, turns):
        if isinstance(checked, Problem):
            out.reject(ref, checked)
            return
    assert isinstance(image, str) and isinstance(itype, str) and isinstance(turns, list)
    too_long = check_lengths(turns, out.limits)
    if too_long:
        out.reject(ref, too_long)
        return
    path = PurePosixPath(image)
    # a region image is the original with a box drawn in; its id names the original image
    base = image
    if itype == "region" and _REGION_SUFFIX.search(path.stem):
        base = str(path.with_stem(_REGION_SUFFIX.sub("", path.stem)))
    row = conversation_row(
        source=out.source,
        image=image,
        base_image=base,
        instruction_type=itype,
        key=f"#{index}",
        index=index,
        turns=turns,
        original_id=f"{PAPER_IMG_IDS_PREFIX}{img_ids}",
    )
    out.add(ref, row)


def from_paper(doc: object, *, source: str, file: str) -> ImportResult:
    """Import the paper's release format; malformed annotations become rejects."""
    if not isinstance(doc, dict):
        raise InstructionFormatError(file, "", f"expected a JSON object, got {type(doc).__name__}")
    annotations = doc.get("annotations")
    if not isinstance(annotations, list):
        got = "missing" if annotations is None else type(annotations).__name__
        raise InstructionFormatError(file, "annotations", f"expected a list, got {got}")
    return import_paper(enumerate(annotations), Collector(source, file))


def import_paper(items: Iterable[tuple[int, object]], out: Collector) -> ImportResult:
    for index, record in items:
        _paper_record(out, index, record)
    return out.result()
