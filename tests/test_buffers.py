"""ReplayBuffer: shapes, dtypes, wrap-around, sampling bounds, save/load round trip."""

import numpy as np
import pytest
import torch

from rlrun.buffers import FIELDS, ReplayBuffer


def make(capacity=5):
    return ReplayBuffer(capacity, (3,), (), torch.int64, torch.device("cpu"))


def add_value(buffer, value, n=1):
    obs = np.full((n, 3), value, dtype=np.float32)
    buffer.add(obs, np.full(n, int(value)), np.full(n, value), obs + 0.5, np.zeros(n))


def test_shapes_and_dtypes():
    buffer = make()
    add_value(buffer, 1.0)
    batch = buffer.sample(4, np.random.default_rng(0))
    assert batch.obs.shape == (4, 3) and batch.obs.dtype == torch.float32
    assert batch.actions.shape == (4,) and batch.actions.dtype == torch.int64
    assert batch.rewards.shape == (4,) and batch.terminated.dtype == torch.float32
    assert torch.equal(batch.next_obs, batch.obs + 0.5)


def test_wrap_around_overwrites_oldest():
    buffer = make(capacity=5)
    for value in range(7):  # 0..6: 0 and 1 are overwritten by 5 and 6
        add_value(buffer, float(value))
    assert buffer.size == 5 and buffer.pos == 2
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert buffer.obs[0, 0].item() == 5.0 and buffer.obs[1, 0].item() == 6.0


def test_vectorised_add_wraps():
    buffer = make(capacity=5)
    add_value(buffer, 1.0, n=3)
    add_value(buffer, 2.0, n=3)  # positions 3, 4, 0
    assert buffer.size == 5 and buffer.pos == 1
    assert buffer.rewards.tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]


def test_sampling_stays_within_filled_part():
    buffer = make(capacity=100)
    for value in range(10):
        add_value(buffer, float(value + 1))
    batch = buffer.sample(10_000, np.random.default_rng(1))
    assert batch.rewards.min() >= 1.0 and batch.rewards.max() <= 10.0  # never an empty (zero) slot
    assert set(batch.rewards.tolist()) == {float(v + 1) for v in range(10)}


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(RuntimeError):
        make().sample(1, np.random.default_rng(0))


def test_save_load_round_trip(tmp_path):
    buffer = make(capacity=5)
    for value in range(7):
        add_value(buffer, float(value))
    path = tmp_path / "buffer.npz"
    np.savez(path, **buffer.arrays())
    restored = make(capacity=5)
    with np.load(path, allow_pickle=False) as data:
        restored.load_arrays({key: data[key] for key in data.files})
    assert (restored.pos, restored.size) == (buffer.pos, buffer.size)
    for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
        assert torch.equal(getattr(restored, name), getattr(buffer, name))
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert torch.equal(buffer.sample(8, rng_a).obs, restored.sample(8, rng_b).obs)


@pytest.mark.parametrize("old_capacity, added, new_capacity",
                         [(4, 6, 8), (4, 6, 3), (4, 3, 2), (10, 5, 5), (10, 5, 3), (5, 5, 7), (6, 9, 6), (6, 6, 6)])
def test_load_into_another_capacity_keeps_the_newest(old_capacity, added, new_capacity):
    """A resume with another buffer_size: the newest transitions survive, in ring order, so later adds
    overwrite the oldest, nothing unwritten is sampled and nothing new is dropped."""
    buffer = make(capacity=old_capacity)
    for value in range(1, added + 1):  # values 1.. (0 would look like an unwritten slot)
        add_value(buffer, float(value))
    restored = make(capacity=new_capacity)
    restored.load_arrays(buffer.arrays())
    later = 3
    for value in range(added + 1, added + later + 1):
        add_value(restored, float(value))
    kept = min(min(added, old_capacity) + later, new_capacity)
    assert restored.size == kept
    assert sorted(restored.rewards[:kept].tolist()) == [float(v) for v in range(added + later - kept + 1,
                                                                                   added + later + 1)]
    assert restored.sample(1000, np.random.default_rng(0)).rewards.min() > 0.0
    add_value(restored, 100.0)  # the next add replaces the oldest transition
    assert min(restored.rewards[:restored.size].tolist()) == (added + later - kept + 2 if kept == new_capacity
                                                             else added + later - kept + 1)


@pytest.mark.parametrize("action_shape,action_dtype", [((), torch.int64), ((2,), torch.float32)])
def test_cpu_numpy_writes_equal_torch_conversions(action_shape, action_dtype):
    """On a CPU `add` writes through numpy views of the tensors; what lands must equal torch's conversions (which
    the other devices' path uses): float64 in, float32 stored; bool terminated; int or float actions; single and
    vectorised adds across the wrap-around."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(7, (3,), action_shape, action_dtype, torch.device("cpu"))
    expected = {name: torch.zeros_like(getattr(buffer, name)) for name in FIELDS}
    pos = 0
    for n in (1, 3, 1, 4, 2, 1):  # 12 transitions through 7 slots
        obs, next_obs = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))  # float64, as some envs give
        actions = (rng.integers(0, 4, n) if action_dtype == torch.int64
                   else rng.uniform(-1, 1, (n, *action_shape)).astype(np.float32))
        rewards, terminated = rng.normal(size=n), rng.random(n) < 0.3
        buffer.add(obs, actions, rewards, next_obs, terminated)
        rows = (pos + np.arange(n)) % 7
        for name, values in zip(FIELDS, (obs, next_obs, actions, rewards, terminated)):
            expected[name][rows] = torch.as_tensor(values).to(expected[name].dtype)
        pos = (pos + n) % 7
    assert (buffer.pos, buffer.size) == (5, 7)
    for name in FIELDS:
        assert torch.equal(getattr(buffer, name), expected[name]), name
    assert buffer.terminated.sum() > 0


def test_a_copied_buffer_writes_its_own_storage():
    import copy
    import pickle

    buffer = make()
    add_value(buffer, 1.0)
    for copied in (copy.deepcopy(buffer), pickle.loads(pickle.dumps(buffer))):
        add_value(copied, 2.0)
        assert copied.rewards[:2].tolist() == [1.0, 2.0]
    assert buffer.size == 1 and buffer.rewards[:2].tolist() == [1.0, 0.0]
