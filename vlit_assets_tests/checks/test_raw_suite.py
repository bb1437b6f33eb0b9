"""The raw GX suite passes a good frame set and fails each kind of known-bad frame."""

from __future__ import annotations

import pandas as pd
import pytest

from vlit_assets.checks.raw_suite import validate_frames


def good_frames() -> dict[str, pd.DataFrame]:
    return {
        "images": pd.DataFrame(
            {
                "image_id": ["img_a", "img_b"],
                "file_name": ["a.jpg", "b.jpg"],
                "width": [640, 320],
                "height": [480, 240],
                "n_captions": [5, 3],
            }
        ),
        "captions": pd.DataFrame(
            {
                "caption_id": ["c1", "c2"],
                "image_id": ["img_a", "img_b"],
                "caption": ["x", "y"],
                "has_image": [True, True],
            }
        ),
        "objects": pd.DataFrame(
            {
                "object_id": ["o1", "o2"],
                "category_id": [1, 18],
                "bbox_w": [10.0, 20.0],
                "bbox_h": [10.0, 5.0],
                "box_overshoot_px": [0.0, 0.4],
                "has_image": [True, True],
            }
        ),
        "categories": pd.DataFrame({"category_id": [1, 18], "name": ["person", "dog"]}),
        "tags": pd.DataFrame({"image_id": ["img_a", "img_b"], "has_image": [True, True]}),
    }


def test_good_frames_pass_and_every_expectation_reports_an_observed_value():
    outcome = validate_frames(good_frames())
    assert outcome.success, outcome.summary()
    assert len(outcome.outcomes) >= 12
    assert all(o.observed_text for o in outcome.outcomes)


@pytest.mark.parametrize(
    ("frame", "column", "value", "failing"),
    [
        ("images", "image_id", "img_a", "images.expect_column_values_to_be_unique(image_id)"),
        ("images", "file_name", None, "images.expect_column_values_to_not_be_null(file_name)"),
        ("images", "n_captions", 0, "images.expect_column_values_to_be_between(n_captions)"),
        ("objects", "object_id", "o1", "objects.expect_column_values_to_be_unique(object_id)"),
        ("objects", "category_id", 99, "objects.expect_column_values_to_be_in_set(category_id)"),
        (
            "objects",
            "box_overshoot_px",
            25.0,
            "objects.expect_column_values_to_be_between(box_overshoot_px)",
        ),
        ("objects", "bbox_w", 0.0, "objects.expect_column_values_to_be_between(bbox_w)"),
        # Orphans: a row whose image is not in raw__images.
        ("captions", "has_image", False, "captions.expect_column_values_to_be_in_set(has_image)"),
        ("objects", "has_image", False, "objects.expect_column_values_to_be_in_set(has_image)"),
        ("tags", "has_image", False, "tags.expect_column_values_to_be_in_set(has_image)"),
    ],
)
def test_each_known_bad_frame_fails_the_matching_expectation(frame, column, value, failing):
    frames = good_frames()
    frames[frame].loc[1, column] = value
    outcome = validate_frames(frames)
    assert not outcome.success
    assert [o.expectation_id for o in outcome.failed] == [failing]
    assert outcome.failed[0].unexpected_count == 1 or outcome.failed[0].observed is not None


def test_empty_source_fails():
    frames = {k: v.iloc[0:0] for k, v in good_frames().items()}
    outcome = validate_frames(frames)
    assert not outcome.success
    assert "images.expect_table_row_count_to_be_between()" in [
        o.expectation_id for o in outcome.failed
    ]
