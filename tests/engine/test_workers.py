"""``--num-workers auto``: loader workers only where they do not take cores from the step."""
import pytest
import torch

from reid.engine.config import Config, ConfigError, build_parser, load_config
from reid.engine.workers import DEFAULT_WORKERS, describe_workers, resolve_num_workers


def test_a_cpu_run_of_few_threads_reads_frames_in_process():
    assert resolve_num_workers("auto", "cpu", threads=2) == (
        0, "auto: in-process, the step's 2 CPU thread(s) leave no core to a worker")
    assert resolve_num_workers("auto", "cpu", threads=4)[0] == 0
    assert describe_workers("auto", "cpu", threads=1).startswith("loader in-process (auto: ")


def test_many_cpu_threads_or_a_gpu_get_workers():
    assert resolve_num_workers("auto", "cpu", threads=16)[0] == DEFAULT_WORKERS
    assert resolve_num_workers("auto", torch.device("cuda", 0)) == (
        DEFAULT_WORKERS, "auto: the step runs on cuda, workers overlap with it")
    assert describe_workers("auto", "cuda") == "loader 2 workers (auto: the step runs on cuda, workers overlap with it)"


def test_an_explicit_number_is_honoured_everywhere():
    assert resolve_num_workers(3, "cpu", threads=1) == (3, "--num-workers 3")
    assert resolve_num_workers(0, "cuda") == (0, "--num-workers 0")


@pytest.mark.parametrize("bad", [-1, "two", 1.5, True, None])
def test_a_bad_value_is_refused_naming_the_option(bad):
    with pytest.raises(ValueError, match=r"num_workers: got .*, expected auto or a non-negative integer"):
        resolve_num_workers(bad, "cpu")
    with pytest.raises(ConfigError, match="num_workers: got"):
        Config(num_workers=bad).validate()


def test_the_flag_takes_auto_or_a_number():
    parser = build_parser("t")
    assert load_config(parser.parse_args(["--num-workers", "3"])).num_workers == 3
    assert load_config(parser.parse_args(["--num-workers", "auto"])).num_workers == "auto"
    assert Config().num_workers == "auto"
    with pytest.raises(ConfigError, match="num_workers: got -2"):
        load_config(parser.parse_args(["--num-workers", "-2"]))
