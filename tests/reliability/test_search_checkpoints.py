"""A search checkpoint is one consistent unit: resumed exactly when it is this search's and whole; a corrupt,
torn, old or foreign one restarts the search with a warning naming the file, or stops it with CheckpointError.

The problem scores masks with a fixed weighted sum (no network forward), so every search takes milliseconds.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evoprune.core.models import build_model
from evoprune.core.search.api import remove_old_checkpoints, search_fingerprint, search_pruning_masks
from evoprune.core.search.checkpoint import CheckpointError, _digest, read_checkpoint
from evoprune.core.search.operators import rank_within_layers
from evoprune.core.search.problem import MaskSearchProblem
from evoprune.core.search.run import SearchConfig, checkpoint_fingerprint, run_search
from evoprune.core.units import build_layout
from tests.conftest import image_split
from tests.reliability.file_size_limit import fails_past_file_size_limit

CFG = SearchConfig(pop_size=8, generations=4, checkpoint_every=1, max_accuracy_drop=0.5)
TINY_NET = {"name": "lenet5", "conv_channels": [4, 6], "fc_features": [8, 6]}


@functools.cache
def _layout():
    return build_layout(build_model(TINY_NET), (1, 28, 28))


class Search:
    """A small mask search whose score is a weighted share of the kept units (two exits), counting
    the candidates it scores."""

    def __init__(self, seed: int = 5, cfg: SearchConfig = CFG):
        self.layout = _layout()
        self.weights = np.random.default_rng(0).random(self.layout.num_bits)
        self.scored = 0
        self.seed, self.cfg = seed, cfg
        reference = self.score(np.ones((1, self.layout.num_bits), dtype=bool))
        self.problem = MaskSearchProblem(self.layout, self.score, cfg.objectives, reference, cfg.max_accuracy_drop)
        self.rank = rank_within_layers(self.weights, self.layout)

    def score(self, X: np.ndarray) -> dict[str, np.ndarray]:
        self.scored += len(X)
        kept = (X * self.weights).sum(1) / self.weights.sum()
        return {"accuracy": np.stack([0.9 * kept, kept], axis=1)}  # (K, 2 exits)

    def run(self, folder: Path | None = None, **kwargs):
        return run_search(self.problem, self.cfg, self.rank, self.weights, self.seed, folder, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted():
    return Search().run()


def _same_search(a, b) -> bool:
    return (
        np.array_equal(a.front_X, b.front_X)
        and np.array_equal(a.front_F, b.front_F)
        and np.array_equal(a.evaluated_X, b.evaluated_X)
        and a.generations == b.generations
    )


def _killed(folder: Path, generations: int = 2, **search) -> Path:
    """A search stopped after ``generations`` generations; returns its checkpoint file."""
    Search(**search).run(folder, stop_after=generations)
    return folder / "state.npz"


def _rewrite(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Save a well-formed checkpoint (digest recomputed) with the given content."""
    meta = {**meta, "digest": _digest(arrays)}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, json.loads(str(arrays.pop("meta")))


# --------------------------------------------------------------------------- ways a checkpoint goes bad
def _garbage(folder: Path) -> str:
    _killed(folder)
    (folder / "state.npz").write_bytes(np.random.default_rng(1).bytes(5000))
    return "not an .npz archive"


def _truncated(folder: Path) -> str:
    path = _killed(folder)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    return "corrupt or truncated"


def _flipped_bytes(folder: Path) -> str:
    path = _killed(folder)
    payload = bytearray(path.read_bytes())
    middle = len(payload) // 2
    payload[middle : middle + 16] = bytes(255 - b for b in payload[middle : middle + 16])
    path.write_bytes(bytes(payload))
    return "corrupt or truncated|torn"


def _old_two_file_pair(folder: Path) -> str:
    path = _killed(folder)
    arrays, meta = _load(path)
    arrays.pop("log_generation")
    np.savez(path, **arrays)  # the layout before format 1: arrays here, counters in state.json
    (folder / "state.json").write_text(json.dumps({k: meta[k] for k in ("n_iter", "n_eval", "rng", "generations")}))
    return "old two-file layout"


def _torn(folder: Path) -> str:
    """Metadata of generation 1 with the arrays of generation 2 (what in-place writes of two files leave)."""
    path = _killed(folder, generations=1)
    _, meta_gen1 = _load(path)
    _killed(folder, generations=2)
    arrays, _ = _load(path)
    np.savez(path, meta=np.array(json.dumps(meta_gen1)), **arrays)
    return "torn"


def _foreign(folder: Path) -> str:
    other = folder.parent / "other_search"
    _killed(other, seed=6)  # another search's file copied in
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(other / "state.npz", folder / "state.npz")
    return "belongs to another search"


def _wrong_shape(folder: Path) -> str:
    """This search's fingerprint, but masks of a different length."""
    path = _killed(folder)
    arrays, meta = _load(path)
    arrays["X"], arrays["log_X"] = arrays["X"][:, :-1], arrays["log_X"][:, :-1]
    _rewrite(path, arrays, meta)
    return "does not fit this problem: X has shape"


def _miscounted(folder: Path) -> str:
    path = _killed(folder)
    arrays, meta = _load(path)
    _rewrite(path, arrays, {**meta, "n_iter": meta["n_iter"] + 1})
    return "inconsistent"


BAD = [_garbage, _truncated, _flipped_bytes, _old_two_file_pair, _torn, _foreign, _wrong_shape, _miscounted]


# --------------------------------------------------------------------------- tests
def test_a_killed_search_resumes_from_its_checkpoint_and_scores_only_the_rest(tmp_path, uninterrupted, caplog):
    killed = Search()
    killed.run(tmp_path, stop_after=2)
    (tmp_path / ".state.npz.x1y2.tmp").write_bytes(b"half a write")  # a write killed midway left this
    resumed = Search()
    with caplog.at_level(logging.WARNING):
        result = resumed.run(tmp_path)
    assert _same_search(result, uninterrupted)
    reference = Search().scored  # each search scores the unpruned network first
    assert (killed.scored - reference) + (resumed.scored - reference) == len(uninterrupted.evaluated_X)  # none twice
    assert not caplog.records and sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


def test_a_checkpoint_write_failing_midway_keeps_the_previous_checkpoint(tmp_path):
    path = _killed(tmp_path, generations=1)
    before = path.read_bytes()
    error = fails_past_file_size_limit(lambda: Search().run(tmp_path, stop_after=3))  # its next save fails
    assert str(path) in error and "file size limit" in error, error
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


def test_a_ga_search_resumes_exactly_too(tmp_path):
    cfg = CFG.model_copy(update={"algorithm": "ga", "objectives": ["error"]})
    Search(cfg=cfg).run(tmp_path, stop_after=2)  # GA leaves rank/crowding unset: not stored
    assert _same_search(Search(cfg=cfg).run(tmp_path), Search(cfg=cfg).run())


@pytest.mark.parametrize("spoil", BAD, ids=lambda f: f.__name__.strip("_"))
def test_a_bad_checkpoint_restarts_the_search_with_a_warning_naming_it(spoil, tmp_path, uninterrupted, caplog):
    folder = tmp_path / "search"
    reason = spoil(folder)
    with caplog.at_level(logging.WARNING, logger="evoprune.core.search.checkpoint"):
        result = Search().run(folder)
    assert _same_search(result, uninterrupted)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(folder / "state.npz") in warning or str(folder / "state.json") in warning
    assert re.search(reason, warning), warning
    assert (folder / "state.npz.bad").exists() and not (folder / "state.json").exists()
    problem = Search().problem  # the search wrote a good checkpoint of its own in its place
    key = checkpoint_fingerprint(None, problem, CFG, 5, None)
    assert len(read_checkpoint(folder / "state.npz", problem, key).meta["generations"]) == CFG.generations


@pytest.mark.parametrize("spoil", BAD, ids=lambda f: f.__name__.strip("_"))
def test_a_bad_checkpoint_stops_the_search_when_asked_and_is_left_alone(spoil, tmp_path):
    folder = tmp_path / "search"
    reason = spoil(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(CheckpointError, match=reason) as error:
        Search().run(folder, on_bad_checkpoint="stop")
    assert str(error.value.path.parent) == str(folder) and str(error.value.path) in str(error.value)
    assert "on_bad_checkpoint" in str(error.value)  # says what to do
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_unknown_on_bad_checkpoint_value_is_refused(tmp_path):
    _garbage(tmp_path)
    with pytest.raises(ValueError, match="'restart' or 'stop', got 'ignore'"):
        Search().run(tmp_path, on_bad_checkpoint="ignore")


def test_old_folders_of_every_layout_are_removed_others_kept(tmp_path):
    layouts = {
        "new": ["state.npz"],
        "old": ["state.npz", "state.json"],
        "set_aside": ["state.npz.bad", "state.npz"],
        "killed_write": ["state.npz", ".state.npz.abc123.tmp"],
        "notes": ["state.npz", "readme.txt"],  # not only a checkpoint: left alone
    }
    for name, files in layouts.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"x")
    removed = remove_old_checkpoints(tmp_path / "current", kept=1)
    assert sorted(p.name for p in removed) == ["killed_write", "new", "old", "set_aside"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# --------------------------------------------------------------------------- fingerprint of the inputs
@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    return build_model(TINY_NET), image_split(24, 1), image_split(16, 2)["images"]


def _changed_pixel(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    images = split["images"].clone()
    images[3, 10, 10] ^= 1
    return {**split, "images": images}


def _changed_label(split: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = split["labels"].clone()
    labels[0] = (labels[0] + 1) % 10
    return {**split, "labels": labels}


def test_the_fingerprint_changes_with_validation_data_calibration_images_and_weights(inputs):
    model, val, calibration = inputs
    base = search_fingerprint(model, CFG, 0, val, calibration, None)
    assert search_fingerprint(model, CFG, 0, {k: v.clone() for k, v in val.items()}, calibration.clone(), None) == base
    changed = calibration.clone()
    changed[0, 0, 0] += 1
    other_model = build_model(TINY_NET)
    variants = [
        search_fingerprint(model, CFG, 0, _changed_pixel(val), calibration, None),  # same count, other pixels
        search_fingerprint(model, CFG, 0, _changed_label(val), calibration, None),
        search_fingerprint(model, CFG, 0, val, changed, None),
        search_fingerprint(model, CFG, 0, val, None, None),  # adaptive BN off
        search_fingerprint(other_model, CFG, 0, val, calibration, None),  # other weights
        search_fingerprint(model, CFG, 1, val, calibration, None),
        search_fingerprint(model, CFG.model_copy(update={"roulette_floor": 0.2}), 0, val, calibration, None),
        search_fingerprint(model, CFG, 0, val, calibration, (0.9, "max_prob")),
        search_fingerprint(model, CFG, 0, val, calibration, None, torch.device("cuda")),  # no GPU needed to hash
    ]
    assert search_fingerprint(model, CFG, 0, val, calibration, None, torch.device("cpu")) == base
    assert base not in variants and len(set(variants)) == len(variants)


@pytest.mark.parametrize(
    "change",
    [
        lambda val, cal: (_changed_pixel(val), cal),
        lambda val, cal: (val, cal.flip(0)),
    ],
    ids=["validation_images", "calibration_images"],
)
def test_new_validation_or_calibration_data_never_resume_an_old_front(inputs, tmp_path, change):
    model, val, calibration = inputs
    cfg = SearchConfig(pop_size=4, generations=1, checkpoint_every=1, max_accuracy_drop=0.9)

    def search(val, cal):
        search_pruning_masks(model, val, cal, cfg, 0, torch.device("cpu"), checkpoint_dir=tmp_path)
        return {p.name for p in tmp_path.iterdir() if (p / "state.npz").is_file()}

    first = search(val, calibration)
    both = search(*change(val, calibration))
    assert len(first) == 1 and len(both) == 2 and first < both
