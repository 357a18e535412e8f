"""
Tests for the C{nswarm} command line (L{nswarm.cli}): option parsing, exit
statuses and what it prints. C{main} is called directly with an argument list.
"""

from __future__ import annotations

import configparser
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from twisted.python import usage

from nswarm import cluster_files
from nswarm.cli import InitOptions, Options, main

ROOT = Path(__file__).resolve().parent.parent


def conf(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(path)
    return parser


def parse_init(*argv: str) -> InitOptions:
    options = Options()
    options.parseOptions(["init", *argv])
    assert isinstance(options.subOptions, InitOptions)
    return options.subOptions


# -- parsing ---------------------------------------------------------------


def test_init_defaults_are_typed() -> None:
    """Without options: localhost, ports 6666/6667 as ints, node-1, no force."""
    options = parse_init("d")
    assert options["directory"] == "d"
    assert options["master-host"] == "localhost"
    assert options["node-port"] == 6666 and options["api-port"] == 6667
    assert options["node-name"] == "node-1"
    assert options["hosts"] == []
    assert not options["force"]


def test_init_options_are_coerced() -> None:
    """Ports given on the command line arrive as ints, not strings."""
    options = parse_init("--node-port", "7000", "--api-port=7001", "d")
    assert options["node-port"] == 7000 and options["api-port"] == 7001


def test_host_is_repeatable() -> None:
    """Each --host adds one entry, in order."""
    options = parse_init("--host", "a.example", "--host=10.0.0.1", "d")
    assert options["hosts"] == ["a.example", "10.0.0.1"]


def test_options_may_follow_the_directory() -> None:
    """C{nswarm init DIR --force --host x} works like the GNU tools."""
    options = parse_init("d", "--force", "--host", "x.example", "-f")
    assert options["directory"] == "d"
    assert options["force"] and options["hosts"] == ["x.example"]


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_port_out_of_range_is_a_usage_error(port: str) -> None:
    """A port outside 1..65535 is refused with a sentence naming the option."""
    with pytest.raises(usage.UsageError, match="node port must be between 1 and 65535"):
        parse_init("--node-port", port, "d")


def test_non_numeric_port_is_a_usage_error() -> None:
    """A port that is not a number is refused with a sentence."""
    with pytest.raises(usage.UsageError, match="api port must be a whole number"):
        parse_init("--api-port", "http", "d")


@pytest.mark.parametrize("argv", [["--host", ""], ["--host", "a b"], ["--master-host", "é.example"]])
def test_bad_host_is_a_usage_error(argv: list[str]) -> None:
    """Empty, spaced or non-ASCII hosts are refused."""
    with pytest.raises(usage.UsageError, match="DNS name or an IP address"):
        parse_init(*argv, "d")


@pytest.mark.parametrize("name", ["", "two words", "x" * 65])
def test_bad_node_name_is_a_usage_error(name: str) -> None:
    """The node name must fit a certificate and a conf line."""
    with pytest.raises(usage.UsageError, match="node name"):
        parse_init("--node-name", name, "d")


# -- main: success ---------------------------------------------------------


def test_init_writes_a_cluster_and_prints_how_to_start_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0; the output names the directory and the two twistd commands."""
    directory = tmp_path / "cluster"
    assert main(["init", str(directory)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert str(directory) in out
    assert f"nswarm-master --config {directory}/master.conf" in out
    assert f"nswarm-node --config {directory}/node.conf" in out
    assert "twistd -n" in out
    assert sorted(p.name for p in directory.iterdir()) == sorted(cluster_files.CLUSTER_FILES)
    assert stat.S_IMODE(os.stat(directory / "ca.key").st_mode) == 0o600


def test_start_commands_use_separate_pidfiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Master and node started from one directory do not fight over twistd.pid."""
    assert main(["init", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"--pidfile {tmp_path}/master.pid" in out
    assert f"--pidfile {tmp_path}/node.pid" in out


def test_init_passes_every_option_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hosts, master host, ports and node name end up in the files."""
    argv = [
        "init",
        "--host", "a.example",
        "--host", "192.0.2.7",
        "--master-host", "m.example",
        "--node-port", "7100",
        "--api-port", "7101",
        "--node-name", "edge-9",
        str(tmp_path),
    ]  # fmt: skip
    assert main(argv) == 0
    master = conf(tmp_path / "master.conf")["master"]
    assert (master["node-port"], master["api-port"]) == ("7100", "7101")
    node = conf(tmp_path / "node.conf")["node"]
    assert (node["name"], node["upstream-host"], node["upstream-port"]) == (
        "edge-9",
        "m.example",
        "7100",
    )
    api = conf(tmp_path / "client.conf")["api"]
    assert (api["host"], api["port"]) == ("m.example", "7101")
    cert = x509.load_pem_x509_certificate((tmp_path / "master.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "m.example", "a.example"} <= set(names.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "192.0.2.7",
    }


def test_force_overwrites_an_existing_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second init with --force succeeds and makes a new CA."""
    assert main(["init", str(tmp_path)]) == 0
    before = (tmp_path / "ca.pem").read_bytes()
    assert main(["init", "--force", str(tmp_path)]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before


# -- main: failures ----------------------------------------------------------


def test_existing_files_exit_1_and_change_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second init without --force: exit 1, the message names the file."""
    assert main(["init", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(["init", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(tmp_path / "ca.pem") in err
    assert "--force" in err and "empty directory" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_unwritable_directory_exits_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A DIR below a regular file cannot be created: exit 1, no traceback."""
    (tmp_path / "file").write_text("")
    assert main(["init", str(tmp_path / "file" / "cluster")]) == 1
    err = capsys.readouterr().err
    assert "cannot write the configuration" in err


def test_port_out_of_range_exits_2_with_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error sentence and the init usage go to stderr; nothing is written."""
    assert main(["init", "--api-port", "70000", str(tmp_path / "c")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "api port must be between 1 and 65535, not 70000" in err
    assert "Usage: nswarm init [options] DIR" in err
    assert not (tmp_path / "c").exists()


def test_equal_ports_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The node and api listeners cannot share a port."""
    assert main(["init", "--node-port", "7000", "--api-port", "7000", str(tmp_path)]) == 2
    assert "must differ" in capsys.readouterr().err


def test_missing_directory_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """init needs exactly one DIR."""
    assert main(["init"]) == 2
    assert "exactly one directory" in capsys.readouterr().err


def test_no_command_prints_usage_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bare C{nswarm} lists the commands on stderr."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Usage: nswarm" in err and "init" in err


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error."""
    assert main(["frobnicate"]) == 2
    assert "Unknown command: frobnicate" in capsys.readouterr().err


def test_help_exits_0_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """--help is not an error: usage on stdout, exit 0."""
    assert main(["init", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: nswarm init [options] DIR" in out
    assert "--host" in out and "--force" in out


def test_version_names_nswarm(capsys: pytest.CaptureFixture[str]) -> None:
    """--version reports nswarm, not Twisted."""
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nswarm ") and "Twisted" not in out


def test_runs_as_python_module() -> None:
    """C{python -m nswarm.cli} runs main and exits with its status."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "nswarm.cli"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Usage: nswarm" in done.stderr
