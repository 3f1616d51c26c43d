"""docs/configuration.md lists exactly the options of the table in src/server/options.c, as
`extproc-examples --help` prints them: the same flags, environment variables and defaults; and
the man page documents every one of them."""
import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
MAN = ROOT / "docs" / "man" / "extproc-examples.1"
HELP_OPTION = re.compile(r"^  --([a-z][a-z-]*)(?: \S+)?\n(?:      env (\S+), default (\S+)[,\n])?",
                         re.M)
DOC_ROW = re.compile(r"^\| `--([a-z][a-z-]*)[^`]*` \| ([^|]*) \| [^|]* \| ([^|]*) \|", re.M)


def runner():
    path = pathlib.Path(os.environ.get("EXTPROC_EXAMPLES", "build/examples/extproc-examples"))
    path = path if path.is_absolute() else ROOT / path
    if not os.access(path, os.X_OK):
        pytest.fail(f"processor runner not found: {path} (build it, or set EXTPROC_EXAMPLES)",
                    pytrace=False)
    return str(path)


def help_options():
    out = subprocess.run([runner(), "--help"], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    found = {m[1]: (m[2] or None, m[3] or None) for m in HELP_OPTION.finditer(out)}
    assert {"service", "listen", "workers", "help", "version"} <= found.keys(), out
    return found


def doc_options():
    found = {}
    for flag, env, default in DOC_ROW.findall(DOC.read_text()):
        env_name = re.match(r"`(EXTPROC_[A-Z_]+)`", env.strip())
        default = default.strip().strip("`")
        found[flag] = (env_name[1] if env_name else None, None if default == "—" else default)
    return found


def test_doc_lists_exactly_the_options_of_help():
    in_help, in_doc = help_options(), doc_options()
    assert sorted(in_doc) == sorted(in_help), "docs/configuration.md and --help list " \
        "different options: add or remove the doc's rows"
    for flag, (env, default) in in_help.items():
        assert in_doc[flag] == (env, default), f"--{flag}: doc says {in_doc[flag]}, " \
            f"--help says {(env, default)}"


def test_man_page_documents_every_flag_and_variable():
    text = MAN.read_text()
    for flag, (env, _) in help_options().items():
        assert "\\-\\-" + flag.replace("-", "\\-") in text, f"man page lacks --{flag}"
        if env:
            assert env in text.replace("\\_", "_"), f"man page lacks {env}"
