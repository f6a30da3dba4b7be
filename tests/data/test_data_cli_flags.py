"""``python -m reid.data`` spells its flags as ``reid.train`` does (run as a user would, in a fresh
process); the old spellings still work with a warning; the two data tools import no CLI of each other."""
import os
import subprocess
import sys

from data_fakes import make_mars
from reid.engine.config import build_parser

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run(*args):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_the_flags_have_reid_trains_names_and_the_old_ones_still_work(tmp_path):
    make_mars(str(tmp_path))
    mars = ["-m", "reid.data", "--dataset", "mars", "--root", str(tmp_path)]
    new = run(*mars, "--mars-protocol", "skip_unmatched", "--num-workers", "1")
    assert new.returncode == 0, new.stderr
    assert "MARS torchreid protocol" in new.stdout and "deprecated" not in new.stderr
    old = run(*mars, "--protocol", "skip_unmatched", "--workers", "1")
    assert old.returncode == 0 and old.stdout.split("(loaded in")[0] == new.stdout.split("(loaded in")[0]
    assert "warning: --protocol is deprecated, use --mars-protocol" in old.stderr
    assert "warning: --workers is deprecated, use --num-workers" in old.stderr


def test_shared_flags_are_spelled_alike_in_reid_data_and_reid_train():
    train_flags = {s for a in build_parser("reid.train")._actions for s in a.option_strings}
    data = run("-m", "reid.data", "--help").stdout
    for flag in ("--dataset", "--root", "--split-id", "--mars-protocol", "--num-workers"):
        assert flag in train_flags and flag in data, flag
    assert "--protocol " not in data and "--workers " not in data  # the old names are hidden


def test_the_contact_sheet_tool_does_not_import_the_reid_data_command():
    code = ("import sys\nfrom reid.data.contact_sheet import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('reid.data.__main__' in sys.modules)")
    proc = run("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), proc.stdout + proc.stderr
