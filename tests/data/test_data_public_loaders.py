"""Public-dataset loaders on miniature fakes written in each release's exact layout."""
import os

import numpy as np
import pytest
from scipy.io import savemat

from data_fakes import make_duke, make_folder, make_ilidsvid, make_mars, make_prid, write_image
from reid.data import DatasetLayoutError, Tracklet, build_dataset


def _names(tracklet):
    return [os.path.basename(p) for p in tracklet.paths]


# ---------------------------------------------------------------- MARS
@pytest.fixture(scope="module")
def mars_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mars"))
    make_mars(root)
    return root


def test_mars_train_tracklets_are_relabelled_in_pid_order_with_zero_based_cameras(mars_root):
    ds = build_dataset("mars", root=mars_root, verbose=False)
    assert ds.num_train_pids == 3 and ds.train_pid_map == {1: 0, 2: 1, 5: 2}
    assert [(t.pid, t.camid, len(t.paths)) for t in ds.train] == [(0, 0, 3), (0, 1, 2), (1, 0, 4), (2, 2, 2), (2, 5, 3)]
    first = ds.train[0]
    assert _names(first) == ["0001C1T0001F001.jpg", "0001C1T0001F002.jpg", "0001C1T0001F003.jpg"]
    assert all(os.path.isfile(p) and os.sep + os.path.join("bbox_train", "0001") + os.sep in p for p in first.paths)
    assert ds.num_splits == 1 and ds.name == "MARS"


def test_mars_release_protocol_appends_queries_to_gallery_drops_junk_keeps_distractors(mars_root):
    ds = build_dataset("mars", root=mars_root, protocol="release", verbose=False)
    assert [(q.pid, q.camid) for q in ds.query] == [(3, 0), (4, 0), (4, 2)]
    assert [(g.pid, g.camid) for g in ds.gallery] == [(3, 1), (3, 1), (0, 1), (3, 0), (4, 0), (4, 2)]
    assert all(t.pid != -1 for t in ds.query + ds.gallery)
    assert ds.num_unmatched_queries == 0
    assert "appended" in ds.protocol


def test_mars_skip_unmatched_protocol_removes_queries_without_a_cross_camera_match(mars_root):
    ds = build_dataset("mars", root=mars_root, protocol="skip_unmatched", verbose=False)
    assert [(q.pid, q.camid) for q in ds.query] == [(3, 0)]
    assert [(g.pid, g.camid) for g in ds.gallery] == [(3, 1), (3, 1), (0, 1)]
    assert "2 queries without a match" in ds.summary()


def test_mars_rejects_an_unknown_protocol(mars_root):
    with pytest.raises(ValueError, match="protocol.*release.*skip_unmatched.*got 'torchreid'"):
        build_dataset("mars", root=mars_root, protocol="torchreid", verbose=False)


def test_mars_missing_annotation_file_names_the_path_and_the_layout(tmp_path):
    make_mars(str(tmp_path))
    os.remove(tmp_path / "MARS" / "info" / "query_IDX.mat")
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("mars", root=str(tmp_path), verbose=False)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "MARS", "info", "query_IDX.mat") in msg
    assert "tracks_test_info.mat" in msg and "expected layout of MARS" in msg


def test_mars_wrong_mat_key_is_reported(tmp_path):
    make_mars(str(tmp_path))
    savemat(tmp_path / "MARS" / "info" / "query_IDX.mat", {"queries": np.array([[1]])})
    with pytest.raises(DatasetLayoutError, match=r"key 'query_IDX'.*found keys \['queries'\]"):
        build_dataset("mars", root=str(tmp_path), verbose=False)


def test_missing_root_is_one_error_with_expected_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("duke", root=missing, verbose=False)
    assert os.path.join(missing, "DukeMTMC-VideoReID") in str(err.value)
    assert "does not exist" in str(err.value) and "query/<pid4>/<tracklet4>" in str(err.value)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_dataset("mars", root=None, verbose=False)


# ---------------------------------------------------------------- DukeMTMC-VideoReID
def test_duke_orders_frames_by_F_number_and_reads_camera_from_names(tmp_path):
    make_duke(str(tmp_path), long_tracklet=20)
    ds = build_dataset("duke", root=str(tmp_path), dense=False, verbose=False)
    long = ds.train[0]
    assert [int(n.split("_F")[1][:4]) for n in _names(long)] == [5 * f for f in range(1, 21)]
    assert [(t.pid, t.camid, len(t.paths)) for t in ds.train] == [(0, 0, 20), (0, 1, 3), (1, 2, 3)]
    assert [(q.pid, q.camid) for q in ds.query] == [(11, 0)]
    assert sorted((g.pid, g.camid) for g in ds.gallery) == [(0, 1), (11, 3)]
    assert any("1 empty train tracklet" in n for n in ds.notes)


def test_duke_dense_training_cuts_64_frame_chunks_with_the_remainder_in_the_last(tmp_path):
    make_duke(str(tmp_path), long_tracklet=150)
    ds = build_dataset("duke", root=str(tmp_path), verbose=False)  # dense is the release default
    long_chunks = [t for t in ds.train if t.camid == 0]
    assert [len(t.paths) for t in long_chunks] == [64, 86]
    assert long_chunks[0].paths[-1] != long_chunks[1].paths[0]
    assert len(ds.train) == 4  # two chunks + two short tracklets kept whole
    sparse = build_dataset("duke", root=str(tmp_path), dense=False, verbose=False)
    assert sum(len(t.paths) for t in sparse.train) == sum(len(t.paths) for t in ds.train)


def test_duke_badly_named_frame_is_a_layout_error(tmp_path):
    base = make_duke(str(tmp_path), long_tracklet=2)
    bad = write_image(os.path.join(base, "query", "0011", "0001", "frame1.jpg"))
    with pytest.raises(DatasetLayoutError, match="0001_C6_F0099_X30823.jpg.*" + bad.replace("\\", "\\\\")):
        build_dataset("duke", root=str(tmp_path), verbose=False)


# ---------------------------------------------------------------- iLIDS-VID
def test_ilidsvid_splits_index_the_sorted_person_folders(tmp_path):
    _, ls_set = make_ilidsvid(str(tmp_path))
    persons = sorted(["person004", "person001", "person012", "person002", "person009", "person030"])
    for split_id in (0, 7):
        ds = build_dataset("ilidsvid", root=str(tmp_path), split_id=split_id, dense=False, verbose=False)
        row = ls_set[split_id].astype(int)
        test_pids = sorted(int(persons[i - 1][6:]) for i in row[:3])
        train_pids = sorted(int(persons[i - 1][6:]) for i in row[3:])
        assert [q.pid for q in ds.query] == test_pids and all(q.camid == 0 for q in ds.query)
        assert [g.pid for g in ds.gallery] == test_pids and all(g.camid == 1 for g in ds.gallery)
        assert sorted(ds.train_pid_map) == train_pids and ds.num_train_pids == 3
        assert len(ds.train) == 6 and {t.camid for t in ds.train} == {0, 1}
        assert [len(q.paths) for q in ds.query] == [3, 3] + [3] and [len(g.paths) for g in ds.gallery] == [4] * 3
        assert ds.num_splits == 10 and ds.split_id == split_id


def test_ilidsvid_split_id_out_of_range_and_folder_count_mismatch(tmp_path):
    base, _ = make_ilidsvid(str(tmp_path))
    with pytest.raises(ValueError, match=r"split_id must be in \[0, 9\].*got 10"):
        build_dataset("ilidsvid", root=str(tmp_path), split_id=10, verbose=False)
    write_image(os.path.join(base, "i-LIDS-VID", "sequences", "cam1", "person099", "x.png"))
    with pytest.raises(DatasetLayoutError, match="6 person folders.*found 7"):
        build_dataset("ilidsvid", root=str(tmp_path), verbose=False)


# ---------------------------------------------------------------- PRID2011
def test_prid_uses_shared_persons_with_enough_frames_and_seeded_disjoint_splits(tmp_path):
    make_prid(str(tmp_path))
    ds = build_dataset("prid", root=str(tmp_path), min_seq_len=3, verbose=False)
    test = [q.pid for q in ds.query]
    train = sorted(ds.train_pid_map)
    # person 3 (2 frames in cam_b), 9 (cam_a only) and 201 (outside 1..200) are left out
    assert sorted(test + train) == [1, 2, 4, 5, 6, 7, 8] and not set(test) & set(train)
    assert len(test) == 3 and len(train) == 4
    assert [g.pid for g in ds.gallery] == test and {g.camid for g in ds.gallery} == {1}
    again = build_dataset("prid", root=str(tmp_path), min_seq_len=3, verbose=False)
    assert again.query == ds.query and again.train == ds.train
    splits = {tuple(q.pid for q in build_dataset("prid", root=str(tmp_path), split_id=s, min_seq_len=3,
                                                  verbose=False).query) for s in range(10)}
    assert len(splits) > 3
    everyone = build_dataset("prid", root=str(tmp_path), min_seq_len=0, verbose=False)
    assert len(everyone.query) + everyone.num_train_pids == 8


# ---------------------------------------------------------------- folder
def test_folder_dataset_reads_camera_tags_drops_junk_and_relabels(tmp_path):
    root = make_folder(str(tmp_path), {
        "train": [(10, "c1_t0", 3), (10, "cam2", 2), (3, "seq7-c0", 4), (-1, "c1", 2)],
        "query": [(40, "c1_a", 12)],
        "gallery": [(40, "c2_a", 2), (41, "c1_x", 1)],
    })
    ds = build_dataset("folder", root=root, verbose=False)
    assert [(t.pid, t.camid, len(t.paths)) for t in ds.train] == [(0, 0, 4), (1, 1, 3), (1, 2, 2)]
    # frames sort numerically: 0, 1, ..., 10, 11 rather than 0, 1, 10, 11, 2
    assert _names(ds.query[0]) == [f"{i}.png" for i in range(12)]
    assert ds.gallery == [Tracklet(ds.gallery[0].paths, 40, 2), Tracklet(ds.gallery[1].paths, 41, 1)]


@pytest.mark.parametrize("spec, message", [
    ({"train": [("alice", "c1", 1)], "query": [], "gallery": []}, "integer identity folders"),
    ({"train": [(1, "track3", 1)], "query": [], "gallery": []}, "camera tag c<N> or cam<N>"),
    ({"train": [(1, "c1", 1)], "query": []}, "gallery"),
])
def test_folder_layout_errors_name_the_offending_path(tmp_path, spec, message):
    root = make_folder(str(tmp_path), spec)
    with pytest.raises(DatasetLayoutError, match=message) as err:
        build_dataset("folder", root=root, verbose=False)
    assert "expected layout of folder" in str(err.value)


def test_summary_table_lists_ids_tracklets_and_frames_per_subset(tmp_path):
    root = make_folder(str(tmp_path), {"train": [(1, "c1", 3), (2, "c2", 5)], "query": [(7, "c1", 2)],
                                       "gallery": [(7, "c2", 4), (8, "c1", 6)]})
    ds = build_dataset("folder", root=root, verbose=False)
    lines = ds.summary().splitlines()
    row = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in lines if "|" in line}
    assert row["train"][:3] == ["2", "2", "8"] and row["train"][3] == "3/4.0/5"
    assert row["query"][:3] == ["1", "1", "2"] and row["gallery"][:3] == ["2", "2", "10"]


def test_unknown_dataset_and_unknown_option_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'market'.*'duke'"):
        build_dataset("market", verbose=False)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['protocol'\] for dataset 'duke'"):
        build_dataset("duke", root=str(tmp_path), protocol="release", verbose=False)
    # aliases of the usual spellings resolve to the canonical loaders
    make_duke(str(tmp_path), long_tracklet=2)
    assert build_dataset("DukeMTMCVidReID", root=str(tmp_path), verbose=False).name == "DukeMTMC-VideoReID"


def test_root_may_also_be_the_dataset_folder_itself(mars_root):
    direct = build_dataset("mars", root=os.path.join(mars_root, "MARS"), verbose=False)
    assert direct.train == build_dataset("mars", root=mars_root, verbose=False).train
