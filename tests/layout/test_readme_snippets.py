"""The README's C snippets are files the build compiles: each block marked
<!-- snippet: PATH --> must be PATH's exact content."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- snippet: (\S+) -->\n```c\n(.*?)```\n", re.S)


def test_every_marked_snippet_is_its_file():
    readme = (ROOT / "README.md").read_text()
    found = SNIPPET.findall(readme)
    assert len(found) >= 3
    for path, code in found:
        assert (ROOT / path).read_text() == code, f"README snippet differs from {path}"


def test_no_unmarked_c_block_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    blocks = readme.count("```c\n")
    assert blocks == len(SNIPPET.findall(readme)), "a C block in the README is not a compiled file"
