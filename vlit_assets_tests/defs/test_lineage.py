"""`vlit lineage`: a conversation's chain from annotations through generation to its scores."""

from __future__ import annotations

import pytest

from vlit_assets import cli
from vlit_assets.core import lineage, warehouse
from vlit_assets.runner import run_source
from vlit_assets.testing.pipeline import REPO, pipeline_env


@pytest.mark.slow
def test_lineage_links_annotations_generation_and_scores(tmp_path, monkeypatch, capsys):
    with pipeline_env(tmp_path, monkeypatch) as env:
        stages = ("raw", "generated", "scored")
        assert run_source(env.instance, "sample", REPO / "data" / "sample", stages=stages).success
        (conv_id, region_object) = env.query(
            "SELECT conversation_id, region_object_id FROM generated__conversations "
            "WHERE instruction_type = 'region' ORDER BY conversation_id LIMIT 1"
        )[0]
        with warehouse.connect(env.db_path, read_only=True) as con:
            chain = lineage.lineage(con, conv_id)
            with pytest.raises(KeyError):
                lineage.lineage(con, "conv_does_not_exist")
        assert chain["source"]["source"] == "sample" and chain["source"]["kind"] == "sample"
        assert chain["image"]["image_id"] == chain["generated"]["image_id"]
        assert region_object in {o["object_id"] for o in chain["annotations"]["objects"]}
        assert chain["generated"]["generator"] == "template"
        assert chain["scores"]["region_name_match"] is True
        assert chain["turns"][0]["from"] == "human"

        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        assert cli.main(["lineage", conv_id, "--db", str(env.db_path)]) == 0
        out = capsys.readouterr().out
        assert conv_id in out and "[scores]" in out and region_object in out
        assert cli.main(["lineage", "conv_nope", "--db", str(env.db_path)]) == 1
