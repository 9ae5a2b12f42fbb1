"""Settings: found, validated, overridden, documented."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from artstore import settings as s
from artstore.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_declared_setting_is_a_field_of_settings() -> None:
    assert {f.name for f in fields(s.Settings)} - {"state_dir"} == set(s.BY_NAME)
    for f in fields(s.Settings):
        if f.name in s.BY_NAME and s.BY_NAME[f.name].default is not s.REQUIRED:
            assert f.default == s.BY_NAME[f.name].default, f.name


def test_readme_settings_table_lists_every_setting_with_its_default() -> None:
    text = README.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", text, re.M))
    assert set(rows) >= set(s.BY_NAME), set(s.BY_NAME) - set(rows)
    for setting in s.SETTINGS:
        assert f"`{setting.env}`" in text, setting.env
        if setting.default is not s.REQUIRED and setting.type is not str:
            shown = rows[setting.name].strip().strip("`")
            assert shown.replace(",", "").replace("_", "") in (
                str(setting.default).lower(), str(setting.default)), (setting.name, shown)


def test_relative_paths_are_resolved_against_the_state_directory(tmp_path: Path) -> None:
    (tmp_path / "artstore.json").write_text(json.dumps({"base_path": "pub", "temp_path": "t"}))
    got = s.load(tmp_path / "artstore.json", environ={})
    assert got.state_dir == tmp_path.resolve()
    assert got.base_path == tmp_path.resolve() / "pub"
    assert got.max_upload_bytes == 2 * 1024**3


@pytest.mark.parametrize("config,named", [
    ({"base_path": "p", "temp_path": "t", "colour": 1}, "colour"),
    ({"base_path": "p", "temp_path": "t", "max_members": "many"}, "max_members"),
    ({"base_path": "p", "temp_path": "t", "max_members": 0}, "max_members"),
    ({"base_path": "p", "temp_path": "t", "serve_files": "yes"}, "serve_files"),
    ({"base_path": "p", "temp_path": "t", "default_keep": True}, "default_keep"),
    ({"base_path": "p", "temp_path": "t", "catalog": "mysql://db"}, "catalog"),
    ({"base_path": "p", "temp_path": "t", "catalog": "projects.json"}, "catalog"),
    ({"base_path": "p", "temp_path": "t", "blob_store": "/var/blobs"}, "blob_store"),
    ({"base_path": "p", "temp_path": "t", "blob_store": "s3://My_Bucket"}, "blob_store"),
    ({"base_path": "p", "temp_path": "t", "blob_store": "s3://ab"}, "blob_store"),
    ({"base_path": "p", "temp_path": "t", "blob_store": "s3://bucket/a/../b"}, "blob_store"),
    ({"base_path": "p", "temp_path": "t", "s3_endpoint": "localhost:8333"}, "s3_endpoint"),
    ({"temp_path": "t"}, "base_path"),
    ({"base_path": "", "temp_path": "t"}, "base_path"),
])
def test_unknown_keys_and_bad_values_stop_start_up_naming_the_key(
        tmp_path: Path, config: dict, named: str) -> None:
    (tmp_path / "artstore.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=named):
        s.load(tmp_path / "artstore.json", environ={})


def test_broken_json_is_a_clear_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "artstore.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        s.load(tmp_path / "artstore.json", environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        s.load(tmp_path / "missing.json", environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "artstore.json").write_text(json.dumps(
        {"base_path": "p", "temp_path": "t", "max_members": 5}))
    got = s.load(tmp_path / "artstore.json",
                 environ={"ARTSTORE_MAX_MEMBERS": "7", "ARTSTORE_SERVE_FILES": "true"})
    assert got.max_members == 7 and got.serve_files is True
    with pytest.raises(ConfigError, match="ARTSTORE_MAX_MEMBERS"):
        s.load(tmp_path / "artstore.json", environ={"ARTSTORE_MAX_MEMBERS": "lots"})


def test_config_is_found_by_flag_then_environment_then_etc() -> None:
    assert s.config_path("/x.json", {"ARTSTORE_CONFIG": "/y.json"}) == Path("/x.json")
    assert s.config_path(None, {"ARTSTORE_CONFIG": "/y.json"}) == Path("/y.json")
    assert s.config_path(None, {}) == Path("/etc/artstore/artstore.json")


def test_blob_store_names_a_bucket_and_a_prefix(tmp_path: Path) -> None:
    (tmp_path / "artstore.json").write_text(json.dumps({
        "base_path": "p", "temp_path": "t", "blob_store": "s3://ci-artifacts/team/a/",
        "s3_endpoint": "http://seaweedfs:8333"}))
    got = s.load(tmp_path / "artstore.json", environ={"ARTSTORE_S3_SECRET_KEY": "sk"})
    assert s.s3_location(got.blob_store) == ("ci-artifacts", "team/a/")
    assert got.s3_endpoint == "http://seaweedfs:8333" and got.s3_secret_key == "sk"
    assert s.s3_location("s3://ci-artifacts") == ("ci-artifacts", "")
    assert s.load(tmp_path / "artstore.json", environ={"ARTSTORE_BLOB_STORE": ""}).blob_store == ""


def test_a_store_refuses_a_blob_store_it_does_not_use_yet(tmp_path: Path) -> None:
    from artstore.store import Store

    loaded = s.from_mapping({"base_path": "p", "temp_path": "t",
                             "blob_store": "s3://ci-artifacts/team/"}, tmp_path, environ={})
    with pytest.raises(ConfigError, match="blob_store"):
        Store(loaded)
    assert not (tmp_path / "p").exists() and not (tmp_path / "t").exists()
