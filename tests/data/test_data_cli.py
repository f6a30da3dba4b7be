"""python -m reid.data and the contact-sheet tool, run in-process on a tiny synthetic set."""
from PIL import Image

from reid.data.__main__ import main
from reid.data.contact_sheet import main as sheet_main

TINY = ["--num-train-ids", "3", "--num-test-ids", "2", "--min-frames", "4", "--max-frames", "6",
        "--height", "32", "--width", "16", "--workers", "1"]


def test_cli_generates_prints_the_summary_and_saves_a_contact_sheet(tmp_path, capsys):
    root = str(tmp_path / "syn")
    assert main(["--dataset", "synthetic", "--root", root, "--misalignment", "0.3",
                 "--contact-sheet", str(tmp_path / "a.png")] + TINY) == 0
    out = capsys.readouterr().out
    assert "=> synthetic" in out and "misalignment 0.3" in out
    train_row = next(line for line in out.splitlines() if line.strip().startswith("train"))
    assert train_row.split("|")[1].strip() == "3"
    assert Image.open(tmp_path / "a.png").size[0] > 16
    assert sheet_main(["--root", root, "--misalignment", "0.3", "--out", str(tmp_path / "b.png"),
                       "--rows", "2", "--frames", "4", "--subset", "query"] + TINY) == 0
    with Image.open(tmp_path / "b.png") as sheet:
        assert sheet.size[1] == 2 * (128 + 2)  # two rows of 128-pixel-high frames


def test_cli_reports_a_missing_dataset_without_a_traceback(tmp_path, capsys):
    assert main(["--dataset", "prid", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PRID2011: expected") and "cam_a/person_0001" in err


def test_cli_verify_lists_corrupt_frames_and_fails(tmp_path, capsys):
    import os
    from data_fakes import make_folder
    from reid.data import reset_skipped_frames
    reset_skipped_frames()
    root = make_folder(str(tmp_path), {"train": [(1, "c0", 3)], "query": [(2, "c0", 2)], "gallery": [(2, "c1", 2)]})
    assert main(["--dataset", "folder", "--root", root, "--verify"]) == 0
    assert "verified 7 frames" in capsys.readouterr().out
    bad = os.path.join(root, "gallery", "2", "c1", "1.png")
    with open(bad, "wb") as fh:
        fh.write(b"\x89PNG broken")
    assert main(["--dataset", "folder", "--root", root, "--verify"]) == 1
    out = capsys.readouterr().out
    assert "1 unreadable frame(s)" in out and bad in out
    reset_skipped_frames()
