"""The fencing rule against a brute-force reading of its definition."""

from hypothesis import given
from hypothesis import strategies as st

from ipam.domain.topic_records import Fences

fence_maps = st.dictionaries(st.integers(1, 8), st.one_of(st.none(), st.integers(0, 50)), max_size=6)


@given(fence_maps, st.integers(0, 9), st.integers(0, 60))
def test_admits_iff_before_the_fence_of_every_later_epoch(fences, epoch, offset):
    expected = all(offset < f for e, f in fences.items() if e > epoch and f is not None)
    assert Fences(fences).admits(epoch, offset) == expected
