import os
import re
import tomllib
from pathlib import Path

import pytest

from syncer import config
from syncer.errors import ConfigError

ROOT = Path(__file__).parent.parent


def write(tmp_path, text, mode=0o600):
    p = tmp_path / "c.toml"
    p.write_text(text)
    os.chmod(p, mode)
    return str(p)


def test_example_documents_every_key_with_its_default():
    text = (ROOT / "config.example.toml").read_text()
    documented = {}
    section = None
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#?\s*(\w+) = (.+?)\s*(#.*)?$", line):
            documented.setdefault(section, {})[m.group(1)] = tomllib.loads(
                f"v = {m.group(2)}")["v"]
    for section, keys in config.DEFAULTS.items():
        for key, (default, _) in keys.items():
            if key == "key":
                continue
            assert key in documented.get(section, {}), f"[{section}].{key} not documented"
            if default is not None:
                assert documented[section][key] == default, f"[{section}].{key}"


def test_example_loads_and_defaults_agree_with_settings(tmp_path):
    loaded = config.load(str(ROOT / "config.example.toml"), env={})
    defaults = config.load(None, env={})
    bare = config.Settings()
    for s in (loaded, defaults):
        assert {k: v for k, v in vars(s).items() if k != "config_file"} == \
            {k: v for k, v in vars(bare).items() if k != "config_file"}


def test_precedence_flag_env_file_default(tmp_path):
    path = write(tmp_path, '[store]\npath = "file.db"\n[api]\nbase_url = "http://127.0.0.1:9"\n')
    assert config.load(path, env={}).db_path == "file.db"
    assert config.load(path, env={"SYNCER_DB": "env.db"}).db_path == "env.db"
    assert config.load(path, db_path="flag.db", env={"SYNCER_DB": "env.db"}).db_path == "flag.db"
    assert config.load(path, env={"RUNTYPE_API_KEY": "rt_test_x"}).api_key == "rt_test_x"


@pytest.mark.parametrize("text, message", [
    ("[api]\ntimeout = \"soon\"\n", "[api].timeout"),
    ("[api]\nconcurency = 3\n", "unknown key [api].concurency"),
    ("[nope]\nx = 1\n", "unknown section [nope]"),
    ("[sync]\nlookback = \"ten minutes\"\n", "[sync].lookback"),
    ("[sync]\nstatus = \"pending\"\n", "[sync].status"),
    ("[api]\npage_size = 500\n", "[api].page_size"),
    ("[api]\nbase_url = \"http://api.example.com\"\n", "plain http"),
    ("[api\n", "not valid TOML"),
])
def test_bad_config_names_key_and_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(path, env={})
    assert message in str(e.value)
    assert path in str(e.value) or "plain http" in message


def test_durations():
    assert config.parse_duration("90s") == 90
    assert config.parse_duration("1h30m") == 5400
    assert config.parse_duration("2d") == 172800
    assert config.parse_duration(15) == 15
    for bad in ("", "5 minutes", "m5", "-3s", True):
        with pytest.raises(ValueError):
            config.parse_duration(bad)


def test_key_in_world_readable_file_warns(tmp_path, caplog):
    path = write(tmp_path, '[api]\nkey = "rt_test_secret"\n', mode=0o644)
    s = config.load(path, env={})
    assert s.api_key == "rt_test_secret"
    assert "readable by others" in caplog.text
    assert "rt_test_secret" not in caplog.text
    assert "rt_test_secret" not in repr(s)
