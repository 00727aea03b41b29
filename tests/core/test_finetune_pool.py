"""Fine-tunes in worker processes (core/finetune_pool.py): the same networks as in this process on as many threads,
in the order asked, and a clear error when a worker dies."""

import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from evoprune.core import finetune_pool
from evoprune.core.exits import attach_exits, build_network
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.finetune_pool import FinetuneInputs, FinetuneJob, ParallelParams, finetune_jobs, run_job
from evoprune.core.models import build_model
from evoprune.core.train import TrainConfig
from evoprune.core.units import build_layout
from tests.conftest import image_split, tiny_multi_exit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def inputs():
    trained, initial = tiny_multi_exit(noise=0.05)
    layout = build_layout(trained, (1, 28, 28))
    cfg = TrainConfig(epochs=1, batch_size=32, memory_format="channels_last")
    return FinetuneInputs(trained, initial, layout, image_split(256, 1), image_split(64, 2), cfg, [0.5, 1.0], CPU)


def _jobs(layout, count: int) -> list[FinetuneJob]:
    rng = np.random.default_rng(3)
    masks = layout.repair(rng.random((count, layout.num_bits)) < 0.6)
    variants = ["keep", "rewind", None, "random"]
    return [FinetuneJob(m, variants[k % 4], 40 + k, f"job {k}") for k, m in enumerate(masks)]


def _same_networks(a, b) -> None:
    for (model_a, history_a), (model_b, history_b) in zip(a, b, strict=True):
        state_a, state_b = model_a.state_dict(), model_b.state_dict()
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key
        assert history_a["train_loss"] == history_b["train_loss"]
        assert history_a["val_accuracy"] == history_b["val_accuracy"]


def test_workers_give_the_networks_of_this_process_on_as_many_threads_in_job_order(inputs):
    jobs = _jobs(inputs.layout, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = [run_job(inputs, job, progress=False) for job in jobs]
    finally:
        torch.set_num_threads(before)
    pooled = finetune_jobs(inputs, jobs, ParallelParams(workers=2, threads_per_worker=1))
    _same_networks(serial, pooled)  # job order: the masks differ, so a swap would fail the comparison
    assert torch.get_num_threads() == before
    assert len({int(j.mask.sum()) for j in jobs}) > 1


def test_where_there_is_no_fork_server_workers_are_spawned_with_the_same_result(inputs, monkeypatch):
    jobs = _jobs(inputs.layout, 2)
    forked = finetune_jobs(inputs, jobs, ParallelParams(workers=2))
    monkeypatch.setattr(finetune_pool.torch_mp, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    assert finetune_pool._context().get_start_method() == "spawn"
    _same_networks(forked, finetune_jobs(inputs, jobs, ParallelParams(workers=2)))


def test_a_single_job_runs_here_on_the_workers_thread_count(inputs):
    (job,) = _jobs(inputs.layout, 1)
    parallel = ParallelParams(workers=3, threads_per_worker=1)
    alone = finetune_jobs(inputs, [job], parallel)
    among = finetune_jobs(inputs, [job, *_jobs(inputs.layout, 2)[1:]], parallel)
    _same_networks(alone, among[:1])


def test_one_worker_fine_tunes_in_this_process_on_its_threads(inputs):
    jobs = _jobs(inputs.layout, 2)
    assert ParallelParams(workers=1).threads(CPU) == torch.get_num_threads()
    assert ParallelParams(workers=2, threads_per_worker=3).threads(CPU) == 3
    _same_networks(finetune_jobs(inputs, jobs, ParallelParams(workers=1)), [run_job(inputs, j) for j in jobs])
    assert finetune_jobs(inputs, [], ParallelParams(workers=2)) == []


class _KillsTheProcessThatUnpicklesIt:
    def __reduce__(self):
        return os._exit, (9,)


def test_a_dead_worker_fails_with_a_message_naming_the_setting(inputs):
    deadly = {**inputs.train_split, "poison": _KillsTheProcessThatUnpicklesIt()}
    broken = FinetuneInputs(**{**inputs.__dict__, "train_split": deadly})
    with pytest.raises(RuntimeError, match=r"worker process died.*finetune\.parallel\.workers"):
        finetune_jobs(broken, _jobs(inputs.layout, 2), ParallelParams(workers=2))


def test_an_error_in_a_worker_comes_back_as_itself(inputs):
    jobs = _jobs(inputs.layout, 2)
    nothing_kept = FinetuneJob(np.zeros_like(jobs[0].mask), None, 1, "nothing kept")
    with pytest.raises(ValueError, match="removes every unit of a layer"):
        finetune_jobs(inputs, [nothing_kept, jobs[1]], ParallelParams(workers=2))


def test_parallel_settings_are_validated_and_part_of_finetune_params():
    assert FinetuneParams().parallel == ParallelParams()
    with pytest.raises(ValidationError, match="workers"):
        FinetuneParams(parallel={"workers": 0})
    with pytest.raises(ValidationError, match="extra"):
        FinetuneParams(parallel={"worker": 2})


def test_a_network_of_more_tensors_than_the_fork_server_passes_fine_tunes_in_workers():
    """A multi-exit ResNet-20 and its θ0 hold 272 state tensors: shared one by one, each would be a file descriptor
    sent with the worker's start, over the fork server's limit of 256 ("too many fds", the `resnet` environment)."""
    torch.manual_seed(0)
    spec = {"name": "resnet_cifar", "depth": 20, "width": 4, "in_channels": 1, "input_size": 28}
    initial = attach_exits(build_model(spec), ["layer1", "layer2"]).eval()
    trained = build_network(initial.spec)
    trained.load_state_dict(initial.state_dict())
    assert 2 * len(trained.state_dict()) > 256
    layout = build_layout(trained, (1, 28, 28))
    cfg = TrainConfig(epochs=1, batch_size=32)
    inputs = FinetuneInputs(trained.eval(), initial, layout, image_split(64, 1), None, cfg, None, CPU)
    jobs = [FinetuneJob(layout.repair(np.ones((1, layout.num_bits), bool))[0], v, 7, v) for v in ("keep", "rewind")]
    pooled = finetune_jobs(inputs, jobs, ParallelParams(workers=2, threads_per_worker=1))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _same_networks([run_job(inputs, job, progress=False) for job in jobs], pooled)
    finally:
        torch.set_num_threads(before)
