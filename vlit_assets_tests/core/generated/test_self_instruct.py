"""Self-instruct planning and row assembly: hand-made frames, the fake server, and coco-mini."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pytest

from vlit_assets.core import warehouse
from vlit_assets.core.generated.llm.cache import RequestCache
from vlit_assets.core.generated.llm.client import run_requests_sync
from vlit_assets.core.generated.llm.settings import Budget, LLMResult, LLMSettings, request_hash
from vlit_assets.core.generated.prompts import PROMPT_VERSION, SYSTEM_PROMPTS
from vlit_assets.core.generated.self_instruct import plan_requests, request_rows, rows_from_results
from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates
from vlit_assets.core.ids import stable_id
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, GENERATED_LLM_REQUESTS
from vlit_assets.core.text.categories import COCO_CATEGORIES
from vlit_assets.testing.openai_server import FakeOpenAIServer, Fault, last_user_message

SRC = "hand"
CAT_IDS = {name: cid for cid, name, _ in COCO_CATEGORIES}

# image id -> (file name, width, height, captions, objects (name, x, y, w, h, crowd), absent)
IMAGES = {
    "img_a": (
        "dir1/a.jpg", 1000, 800, ("A dog and a cat in a yard.", "Pets outside near people."),
        [("person", 10, 16, 500, 500, True), ("dog", 600, 500, 200, 200, False),
         ("cat", 100, 600, 300, 150, False), ("cup", 5, 5, 10, 10, False),
         ("dog", 300, 100, 100, 100, False)],
        ("giraffe", "dog", "kite"),
    ),
    "img_b": (
        "dir2/b.jpg", 640, 480, ("A red bus on a street.",),
        [("bus", 0, 0, 640, 480, False)],
        ("train",),
    ),
}  # fmt: skip


def frames(images: dict = IMAGES) -> dict[str, pl.DataFrame]:
    img_rows, cap_rows, obj_rows, tag_rows = [], [], [], []
    for iid, (file_name, w, h, captions, objects, absent) in images.items():
        img_rows.append({"image_id": iid, "source": SRC, "file_name": file_name,
                         "width": w, "height": h})  # fmt: skip
        for k, text in enumerate(captions):
            cap_rows.append({"caption_id": f"{iid}_cap{k}", "source": SRC, "image_id": iid,
                             "caption": text})  # fmt: skip
        for k, (name, x, y, bw, bh, crowd) in enumerate(objects):
            obj_rows.append(
                {"object_id": f"{iid}_obj{k}", "source": SRC, "image_id": iid,
                 "category_id": CAT_IDS[name], "category_name": name, "bbox_x": float(x),
                 "bbox_y": float(y), "bbox_w": float(bw), "bbox_h": float(bh), "iscrowd": crowd}
            )  # fmt: skip
        counts = Counter(o[0] for o in objects)
        tag_rows.append({
            "image_id": iid, "source": SRC,
            "present": [{"category_id": CAT_IDS[n], "name": n, "count": c}
                        for n, c in counts.items()],
            "absent": [{"category_id": CAT_IDS[n], "name": n, "score": 1.0} for n in absent],
        })  # fmt: skip
    return {
        "images": pl.DataFrame(img_rows),
        "captions": pl.DataFrame(cap_rows),
        "objects": pl.DataFrame(obj_rows, schema_overrides={"category_id": pl.Int32}),
        "tags": pl.DataFrame(tag_rows),
    }


def plan(tmp_path: Path, f: dict | None = None, **overrides: object) -> list:
    kwargs = {"types": ["global", "negative", "region"], "per_image": 1, "seed": 3,
              "region_min_area_frac": 0.02, "image_root": tmp_path / "images",
              "regions_dir": tmp_path / "regions"} | overrides  # fmt: skip
    return plan_requests(**(f or frames()), **kwargs)  # type: ignore[arg-type]


def by_type(requests: list, image_id: str, itype: str) -> list:
    return [
        r for r in requests
        if r.meta["image_id"] == image_id and r.meta["instruction_type"] == itype
    ]  # fmt: skip


# ------------------------------------------------------------------------------ planning


def test_plan_one_request_per_image_type_and_variant(tmp_path: Path) -> None:
    requests = plan(tmp_path)
    assert [(r.meta["image_id"], r.meta["instruction_type"]) for r in requests] == [
        ("img_a", "global"), ("img_a", "negative"), ("img_a", "region"),
        ("img_b", "global"), ("img_b", "negative"), ("img_b", "region"),
    ]  # fmt: skip
    for r in requests:
        m = r.meta
        assert r.key == stable_id("conv", SRC, m["image_id"], m["instruction_type"], "llm",
                                  PROMPT_VERSION, m["variant"])  # fmt: skip
        assert r.prompt_version == PROMPT_VERSION
        assert r.messages[0]["content"] == SYSTEM_PROMPTS[m["instruction_type"]]

    (g,) = by_type(requests, "img_a", "global")
    assert g.meta["image_path"] == str((tmp_path / "images" / "dir1" / "a.jpg").resolve())
    text = g.messages[-1]["content"]
    assert "- A dog and a cat in a yard." in text
    assert "- dog: [0.600, 0.625, 0.800, 0.875]" in text  # normalised by 1000 x 800
    assert "- person (crowd): [0.010, 0.020, 0.510, 0.645]" in text
    assert "Absent categories: giraffe, kite" in text  # 'dog' is annotated, so not absent
    assert g.meta["region_object_id"] is None
    assert set(g.meta["source_annotation_ids"]) == {
        "img_a_cap0", "img_a_cap1", *(f"img_a_obj{k}" for k in range(5))
    }  # fmt: skip


def test_region_is_the_largest_non_crowd_box_and_names_its_image(tmp_path: Path) -> None:
    requests = plan(tmp_path)
    (ra,) = by_type(requests, "img_a", "region")
    assert ra.meta["region_object_id"] == "img_a_obj2"  # the cat: the crowd box is skipped
    assert ra.meta["variant"] == 0
    assert ra.meta["image_path"] == str((tmp_path / "regions" / SRC / "a_0.jpg").resolve())
    assert ra.messages[-1]["content"].endswith(
        "Region (in the red box): cat: [0.100, 0.750, 0.400, 0.938]"
    )


def test_variants_are_distinct_requests(tmp_path: Path) -> None:
    requests = plan(tmp_path, per_image=2)
    assert len({r.key for r in requests}) == len(requests)
    g0, g1 = by_type(requests, "img_a", "global")
    assert g0.messages == g1.messages and g0.params["seed"] != g1.params["seed"]
    settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m")
    assert request_hash(g0, settings) != request_hash(g1, settings)
    # Regions: distinct categories first (cat, then the larger dog), never the crowd box.
    regions = by_type(requests, "img_a", "region")
    assert [r.meta["region_object_id"] for r in regions] == ["img_a_obj2", "img_a_obj1"]
    assert [Path(r.meta["image_path"]).name for r in regions] == ["a_0.jpg", "a_1.jpg"]
    assert len(by_type(requests, "img_b", "region")) == 1  # only one box to choose from


def test_plan_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a, b = plan(tmp_path), plan(tmp_path)
    assert [(r.key, r.messages, r.params) for r in a] == [(r.key, r.messages, r.params) for r in b]
    c = plan(tmp_path, seed=4)
    assert [r.params for r in a] != [r.params for r in c]


def test_area_threshold_can_leave_an_image_without_region(tmp_path: Path) -> None:
    requests = plan(tmp_path, region_min_area_frac=0.2, types=["region"])
    assert [r.meta["image_id"] for r in requests] == ["img_b"]


def test_regions_agree_with_the_template_generator(tmp_path: Path) -> None:
    f = frames()
    cats = pl.DataFrame({"source": SRC, "category_id": [c for c, _, _ in COCO_CATEGORIES],
                         "name": [n for _, n, _ in COCO_CATEGORIES]})  # fmt: skip
    config = TemplateConfig(types=("region",), region_min_area_frac=0.02,
                            max_regions_per_image=2, render_regions=False)  # fmt: skip
    templ = generate_templates(
        f["images"], f["captions"], f["objects"], cats, f["tags"], source=SRC,
        image_root=tmp_path / "images", regions_dir=tmp_path / "regions", config=config,
    )  # fmt: skip
    ours = plan(tmp_path, f, types=["region"], per_image=2)
    assert sorted(
        (r.meta["image_id"], r.meta["variant"], r.meta["region_object_id"], r.meta["image_path"])
        for r in ours
    ) == sorted(templ.select("image_id", "variant", "region_object_id", "image_path").rows())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f | {"objects": f["objects"].drop("bbox_w")},
         r"raw__objects frame lacks columns \['bbox_w'\]"),
        (lambda f: f | {"tags": f["tags"].filter(pl.col("image_id") != "img_b")},
         "raw__tags has no row for image img_b"),
        (lambda f: f | {"images": f["images"].with_columns(width=pl.lit(0))},
         "raw__images img_a: width/height 0x800"),
        (lambda f: f | {"objects": f["objects"].with_columns(bbox_x=pl.lit(5000.0))},
         "raw__objects img_a_obj0: bbox"),
    ],
    ids=["missing-column", "missing-tags", "zero-width", "box-outside"],
)  # fmt: skip
def test_bad_frames_fail_naming_table_record_and_field(
    tmp_path: Path, mutate: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan(tmp_path, mutate(frames()))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"types": ["caption"]}, "unknown instruction types"), ({"per_image": 0}, "per_image"),
     ({"region_min_area_frac": 1.5}, "region_min_area_frac")],
)  # fmt: skip
def test_bad_settings_are_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(tmp_path, **overrides)


# ------------------------------------------------------------------------------ rows


def _is(itype: str, caption: str):  # noqa: ANN202
    def match(body: dict) -> bool:
        return body["messages"][0]["content"] == SYSTEM_PROMPTS[
            itype
        ] and caption in last_user_message(body)

    return match


def _write_and_read(df: pl.DataFrame, tmp_path: Path) -> pl.DataFrame:
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    warehouse.replace_source(con, GENERATED_CONVERSATIONS, df, SRC)
    back = warehouse.read_source(con, GENERATED_CONVERSATIONS, SRC)
    con.close()
    return back


def test_failed_replies_become_rows_with_reasons(tmp_path: Path) -> None:
    requests = plan(tmp_path)
    with FakeOpenAIServer(max_lifetime_s=60) as server:
        server.add_faults(_is("negative", "A dog and a cat"), Fault.malformed())
        server.add_faults(_is("global", "A red bus"), Fault.truncated())
        server.add_faults(_is("region", "A red bus"), Fault.refusal())
        server.add_faults(_is("negative", "A red bus"), Fault.http(400))
        settings = LLMSettings(base_url=server.base_url, model="fake", api_key="k",
                               timeout_s=2.0, backoff_base_s=0.01)  # fmt: skip
        cache = RequestCache(duckdb.connect(str(tmp_path / "cache.duckdb")))
        results = run_requests_sync(requests, settings, cache=cache)
    df = rows_from_results(requests, results, source=SRC, run_id="run-1", model="fake")

    assert df.columns == list(GENERATED_CONVERSATIONS.columns)
    assert df.height == len(requests)  # nothing lost
    reasons = {
        (r["image_id"], r["instruction_type"]): (r["drop_reason"], r["drop_detail"])
        for r in df.to_dicts()
    }
    assert reasons == {
        ("img_a", "global"): (None, None),
        ("img_a", "negative"): ("llm_parse", "bad_json"),
        ("img_a", "region"): (None, None),
        ("img_b", "global"): ("llm_parse", "truncated_json"),
        ("img_b", "negative"): ("llm_error", "http_400"),
        ("img_b", "region"): ("llm_parse", "refusal"),
    }
    for row in df.to_dicts():
        assert row["generator"] == "llm" and row["model"] == "fake" and row["run_id"] == "run-1"
        assert row["prompt_version"] == PROMPT_VERSION and row["source_annotation_ids"]
        turns = row["turns"]
        if row["drop_reason"] is None:
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        else:
            assert turns == []
    # A paid-for but unusable reply keeps its tokens; a rejected request has none.
    truncated = df.filter(pl.col("drop_detail") == "truncated_json").row(0, named=True)
    assert truncated["completion_tokens"] > 0
    region = df.filter(pl.col("instruction_type") == "region", pl.col("image_id") == "img_a")
    assert region["turns"][0][0]["value"] == "What is the object in the red box?"

    back = _write_and_read(df, tmp_path)
    assert back.height == 6 and back["drop_reason"].null_count() == 2


def test_budget_exhausted_rows_keep_provenance(tmp_path: Path) -> None:
    requests = plan(tmp_path)
    with FakeOpenAIServer(max_lifetime_s=60) as server:
        settings = LLMSettings(base_url=server.base_url, model="fake", api_key="k",
                               concurrency=1)  # fmt: skip
        results = run_requests_sync(requests, settings, cache=None, budget=Budget(2, None, None))
    df = rows_from_results(requests, results, source=SRC, run_id="r", model="fake")
    assert df["drop_reason"].to_list() == [None, None] + ["llm_error"] * 4
    assert df["drop_detail"].to_list() == [None, None] + ["budget_exhausted"] * 4
    assert df["image_path"].null_count() == 0
    assert df.filter(pl.col("instruction_type") == "region")["region_object_id"].to_list() == [
        "img_a_obj2", "img_b_obj0"
    ]  # fmt: skip


def test_rows_need_a_result_per_request_and_the_right_source(tmp_path: Path) -> None:
    requests = plan(tmp_path)
    results = [LLMResult(r.key, '{"conversation": []}', 1, 1, 0.0, 1.0, False, 1, None)
               for r in requests[:-1]]  # fmt: skip
    with pytest.raises(ValueError, match=f"request {requests[-1].key}: no result"):
        rows_from_results(requests, results, source=SRC, run_id="r", model="m")
    with pytest.raises(ValueError, match="planned for source 'hand'"):
        rows_from_results(requests, results, source="other", run_id="r", model="m")


def test_self_instruct_modules_do_not_import_dagster() -> None:
    code = (
        "import sys, vlit_assets.core.generated.self_instruct, vlit_assets.core.generated.llm, "
        "vlit_assets.core.generated.prompts, vlit_assets.core.generated.replies; "
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------ coco-mini


def coco_frames(root: Path, source: str = "coco-mini") -> dict[str, pl.DataFrame]:
    inst = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    caps = json.loads((root / "annotations" / "captions_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    iid = {im["id"]: stable_id("img", source, im["id"]) for im in inst["images"]}
    images = pl.DataFrame(
        [{"image_id": iid[im["id"]], "source": source, "file_name": im["file_name"],
          "width": im["width"], "height": im["height"]} for im in inst["images"]]
    )  # fmt: skip
    captions = pl.DataFrame(
        [{"caption_id": stable_id("cap", source, c["id"]), "image_id": iid[c["image_id"]],
          "caption": c["caption"]} for c in caps["annotations"]]
    )  # fmt: skip
    objects = pl.DataFrame(
        [{"object_id": stable_id("obj", source, a["id"]), "image_id": iid[a["image_id"]],
          "category_name": names[a["category_id"]], "bbox_x": a["bbox"][0],
          "bbox_y": a["bbox"][1], "bbox_w": a["bbox"][2], "bbox_h": a["bbox"][3],
          "iscrowd": bool(a["iscrowd"])} for a in inst["annotations"]]
    )  # fmt: skip
    popular = [n for n, _ in Counter(names[a["category_id"]] for a in inst["annotations"])
               .most_common()]  # fmt: skip
    present = objects.group_by("image_id").agg(pl.col("category_name").unique())
    present_by = dict(present.iter_rows())
    tags = pl.DataFrame(
        [{"image_id": i, "present": [{"name": n, "count": 1} for n in present_by.get(i, [])],
          "absent": [{"name": n, "score": 1.0} for n in popular
                     if n not in present_by.get(i, [])][:8]} for i in iid.values()]
    )  # fmt: skip
    return {"images": images, "captions": captions, "objects": objects, "tags": tags}


def test_coco_mini_plans_valid_prompts_and_rows(coco_mini: Path, tmp_path: Path) -> None:
    f = coco_frames(coco_mini)
    requests = plan_requests(
        **f, types=["global", "negative", "region"], per_image=1, seed=0,
        region_min_area_frac=0.02, image_root=coco_mini / "train2017",
        regions_dir=tmp_path / "regions",
    )  # fmt: skip
    n_images = f["images"].height
    types = Counter(r.meta["instruction_type"] for r in requests)
    assert types["global"] == types["negative"] == n_images == 80
    assert 0 < types["region"] <= n_images
    assert len({r.key for r in requests}) == len(requests)
    regions = [r.meta["image_path"] for r in requests if r.meta["instruction_type"] == "region"]
    assert len(set(regions)) == len(regions)
    for r in requests:
        if r.meta["instruction_type"] != "region":
            assert Path(r.meta["image_path"]).is_file()
        boxes = re.findall(r"\[([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\]", r.messages[-1]["content"])
        assert boxes
        for x0, y0, x1, y1 in (tuple(map(float, b)) for b in boxes):
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0

    with FakeOpenAIServer(max_lifetime_s=120) as server:
        settings = LLMSettings(base_url=server.base_url, model="fake", api_key="k")
        results = run_requests_sync(requests, settings, cache=None)
    df = rows_from_results(requests, results, source="coco-mini", run_id="r", model="fake")
    assert df.height == len(requests) and df["drop_reason"].null_count() == df.height
    assert (df["turns"].list.len() >= 4).all()


def test_request_rows_say_what_failed_and_what_was_mended(tmp_path: Path) -> None:
    requests = plan(tmp_path)
    unclosed = '{"conversation": [{"q": "What is it?", "a": "A bus."}, {"q": "Red?", "a": "Yes."}]'
    with FakeOpenAIServer(max_lifetime_s=60) as server:
        server.add_faults(_is("global", "A red bus"), Fault.truncated())
        server.add_faults(_is("global", "A dog and a cat"), Fault("content", content=unclosed))
        server.add_faults(_is("negative", "A red bus"), Fault.http(400))
        settings = LLMSettings(base_url=server.base_url, model="fake", api_key="k",
                               timeout_s=2.0, backoff_base_s=0.01)  # fmt: skip
        results = run_requests_sync(requests, settings, cache=None)
    rows = request_rows(requests, results, source=SRC, run_id="run-1", model="fake")
    convs = rows_from_results(requests, results, source=SRC, run_id="run-1", model="fake")
    assert rows.columns == list(GENERATED_LLM_REQUESTS.columns)
    assert rows.height == len(requests) and rows["attempts"].to_list() == [1] * len(requests)
    by_conv = {r["conversation_id"]: r for r in rows.to_dicts()}
    reasons = {r["conversation_id"]: (r["drop_reason"], r["drop_detail"]) for r in convs.to_dicts()}
    kinds = {}
    for cid, row in by_conv.items():
        kinds[cid] = (row["error"], row["parse_failure"], row["repaired"], reasons[cid])
    values = sorted(kinds.values(), key=str)
    assert (
        None,
        None,
        "closed 1 bracket",
        (None, None),
    ) in values  # stop without its final }: mended
    assert ("http_400", None, None, ("llm_error", "http_400")) in values
    cut = [r for r in by_conv.values() if r["parse_failure"] == "truncated_json"]
    assert len(cut) == 1 and "finish_reason=length" in cut[0]["detail"]
