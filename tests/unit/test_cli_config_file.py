"""cpctl reads its config file without yaml when the file is flat ``key: value`` text
(controlplane/cli/configfile.py): whenever that fast path answers, it answers what yaml.safe_load
does; it declines whatever only YAML can read, and then cpctl reads the file with yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.cli.config import read_config_file
from controlplane.cli.configfile import flat_values, surely_text

VALUE_CHARS = "abcdefxyzABCDEFXTZeEinfINF0123456789_./:@%+=~,-"
tricky_values = st.one_of(
    st.text(alphabet=VALUE_CHARS, min_size=1, max_size=12),
    st.sampled_from(["yes", "No", "TRUE", "off", "null", "~", "=", "0x1F", "0o17", "017", "0b101", "1_000", "1:30",
                     "1.5e+3", ".inf", "-.INF", ".NaN", "2001-12-14", "-", "1e5", "12abc", "-abc", "x:", "::1"]),
)
line = st.one_of(
    st.builds(lambda k, v, sep: f"{k}:{sep}{v}", st.sampled_from(["server", "token", "ca", "yes", "other_key"]),
              tricky_values, st.sampled_from([" ", "  ", "\t", ""])),
    st.sampled_from(["", "# a comment", "   ", "---", "  indented: x", "key: 'quoted'", "key: a b", "key: x # c"]),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(line, max_size=5))
def test_the_fast_path_agrees_with_yaml_whenever_it_answers(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    fast = flat_values(text)
    if fast is None:
        return
    assert yaml.safe_load(text) == (fast or None)  # an empty or all-comment file is None to yaml


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=VALUE_CHARS, min_size=1, max_size=10))
def test_any_value_the_fast_path_takes_is_the_string_yaml_reads(value: str) -> None:
    text = f"token: {value}\n"
    if flat_values(text) is not None:
        assert yaml.safe_load(text) == {"token": value}


@pytest.mark.parametrize("value", ["http://127.0.0.1:7070", "https://a:1,https://b:2", "/etc/cpctl/ca.pem",
                                   "kX3_-9aa", "9zz", "_x"])
def test_values_dev_up_writes_are_read_directly(value: str) -> None:
    assert surely_text(value)
    assert flat_values(f"server: {value}\n") == {"server": value} == yaml.safe_load(f"server: {value}\n")


@pytest.mark.parametrize("text", ["token: 123\n", "token: 0x1F\n", "token: yes\n", "ca: ~\n", "token: '12'\n",
                                  "server: x # comment\n", "server:\tx\n", "\t\nserver: x\n", "---\nserver: x\n", "server:\n  nested: 1\n"])
def test_what_only_yaml_can_tell_is_left_to_yaml(text: str) -> None:
    assert flat_values(text) is None


def test_the_file_reads_the_same_either_way(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("# written by cpctl dev up\nserver: https://127.0.0.1:7070\ntoken: 0aB-x\nca: /s/ca.pem\n")
    assert read_config_file(path) == {"server": "https://127.0.0.1:7070", "token": "0aB-x", "ca": "/s/ca.pem"}
    path.write_text("server: https://127.0.0.1:7070\ntoken: 0123\n")  # an octal number to YAML: 83
    assert read_config_file(path) == {"server": "https://127.0.0.1:7070", "token": "83"}
