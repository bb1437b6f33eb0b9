"""`vlit ui`: exported variables win over .env, and the server starts where no .env lives."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vlit_assets import cli
from vlit_assets.testing.pipeline import REPO

VARIABLES = ("VLIT_DB_PATH", "VLIT_DATA_DIR", "VLIT_OUTPUT_DIR", "VLIT_LLM_BASE_URL",
             "VLIT_LLM_MODEL", "VLIT_LLM_API_KEY", "DAGSTER_HOME")  # fmt: skip


def test_ui_command_keeps_exported_variables_and_starts_outside_the_project(
    tmp_path: Path, monkeypatch
) -> None:
    for name in VARIABLES:  # restored by monkeypatch afterwards, whatever the call sets
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    env_file = tmp_path / ".env"
    env_file.write_text("VLIT_DATA_DIR=elsewhere\nVLIT_OUTPUT_DIR=out-from-env-file\n")
    monkeypatch.setattr(cli, "PROJECT_ROOT", tmp_path)
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")

    command, cwd = cli.ui_command("127.0.0.1", 3999)

    assert os.environ["VLIT_DATA_DIR"] == str(tmp_path / "data")  # the export won
    assert os.environ["VLIT_OUTPUT_DIR"] == "out-from-env-file"  # .env filled the gap
    assert cwd == (tmp_path / "home").resolve()
    assert not (cwd / ".env").exists()
    assert (cwd / "dagster.yaml").read_bytes() == (tmp_path / "dagster.yaml").read_bytes()
    assert Path(command[0]).name == "dagster" and Path(command[0]).is_file()
    assert command[1:] == ["dev", "-w", str(tmp_path / "workspace.yaml"), "-h", "127.0.0.1",
                           "-p", "3999"]  # fmt: skip


def test_run_images_flag_must_name_a_folder(tmp_path, monkeypatch, capsys):
    for key, value in {
        "DAGSTER_HOME": tmp_path / "home",
        "VLIT_DB_PATH": tmp_path / "w.duckdb",
        "VLIT_DATA_DIR": tmp_path,
        "VLIT_OUTPUT_DIR": tmp_path / "out",
    }.items():
        monkeypatch.setenv(key, str(value))
    argv = ["run", "--source", str(tmp_path), "--images", str(tmp_path / "absent")]
    assert cli.build_parser().parse_args(argv).images == str(tmp_path / "absent")
    assert cli.main(argv) == cli.Exit.NO_SOURCE  # a missing folder: one line, exit 5
    err = capsys.readouterr().err
    assert "--images" in err and "Traceback" not in err
