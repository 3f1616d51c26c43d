"""The layer check: the real tree passes, and a file including upwards is caught."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check_layers.py"


def run(*args):
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)


def test_every_include_in_src_points_down():
    r = run()
    assert r.returncode == 0, r.stdout


def write(tree, path, text):
    p = tree / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_an_engine_file_including_the_api_is_refused(tmp_path):
    write(tmp_path, "api/request.h", "")
    write(tmp_path, "engine/stream.c", '#include "api/request.h"\n#include "base/arena.h"\n')
    r = run(str(tmp_path))
    assert r.returncode == 1
    assert 'engine/ includes "api/request.h"' in r.stdout


def test_the_harness_may_not_reach_into_the_transport(tmp_path):
    write(tmp_path, "testing/harness.c", '#include "transport/worker.h"\n')
    r = run(str(tmp_path))
    assert r.returncode == 1 and "transport/ layer above" in r.stdout


def test_an_unknown_folder_is_refused(tmp_path):
    write(tmp_path, "misc/x.c", "")
    assert run(str(tmp_path)).returncode == 1
