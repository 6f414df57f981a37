import pytest

from speakerid.data.dataset import EpochSampler
from speakerid.distributed import DistEnv, ShardedSampler


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_together_see_the_single_process_batches(world):
    n, batch = 103, 8
    per_rank = batch // world
    shards = []
    for rank in range(world):
        s = ShardedSampler(EpochSampler(n, seed=7), batch, DistEnv(rank, rank, world))
        s.set_epoch(3)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == (n // batch) * per_rank
    base = EpochSampler(n, seed=7)
    base.set_epoch(3)
    single = list(base)
    for step in range(n // batch):
        together = [item for rank in range(world) for item in shards[rank][step * per_rank:(step + 1) * per_rank]]
        assert together == single[step * batch:(step + 1) * batch]


def test_resume_position_is_global():
    base = EpochSampler(50, seed=1)
    base.set_epoch(0)
    full = list(ShardedSampler(base, 10, DistEnv(1, 1, 2)))
    s = ShardedSampler(EpochSampler(50, seed=1), 10, DistEnv(1, 1, 2))
    s.set_epoch(0, start=20)
    assert list(s) == full[10:]
    with pytest.raises(ValueError, match="multiple of the global batch"):
        s.set_epoch(0, start=15)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        ShardedSampler(base, 10, DistEnv(0, 0, 3))


def test_packed_paths_give_back_every_path_of_the_list_by_row():
    """The loader's dataset holds its paths packed (no Python object per path, which forked workers would
    copy as they read): every row gives back its own path, non-ASCII and repeated rows (segment lists)
    included, also after pickling into a spawned worker."""
    import pickle

    from speakerid.data.dataset import PackedPaths

    paths = ["id1/vid/ünï.wav", "id2/v w/2.wav", "id1/vid/ünï.wav", "", "id3/x/3.flac", "id2/v w/2.wav"]
    packed = PackedPaths(paths)
    assert len(packed) == 6 and [packed[i] for i in range(6)] == paths and packed[-1] == paths[-1]
    assert list(pickle.loads(pickle.dumps(packed))) == paths
    assert len(packed._offsets) == 5  # one entry per distinct path, rows index them
    assert list(PackedPaths([])) == []
