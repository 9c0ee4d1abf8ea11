"""Which nodes take part in a round: uniform, without replacement, unpredictable unless seeded."""

from __future__ import annotations

import pytest

from ztfl.aggregation.privacy.noise import secure_generator
from ztfl.server.sampling import NodeSampler

NODES = [31, 7, 1002, 55, 4, 18, 9, 600, 23, 71]


def test_two_samplers_with_one_seed_draw_the_same_nodes_every_round() -> None:
    first, second = NodeSampler(seed=5), NodeSampler(seed=5)
    assert [first.sample(NODES, 4) for _ in range(5)] == [second.sample(NODES, 4) for _ in range(5)]


def test_a_seeded_sampler_draws_the_same_client_seeds() -> None:
    first, second = NodeSampler(seed=5), NodeSampler(seed=5)
    assert [first.draw_seed() for _ in range(3)] == [second.draw_seed() for _ in range(3)]


def test_samplers_with_different_seeds_draw_different_nodes() -> None:
    draws = {tuple(NodeSampler(seed=seed).sample(NODES, 5) for _ in range(3)) for seed in (0, 1)}
    assert len(draws) == 2


def test_the_node_order_given_does_not_change_a_seeded_draw() -> None:
    assert NodeSampler(seed=3).sample(NODES, 4) == NodeSampler(seed=3).sample(NODES[::-1], 4)


@pytest.mark.parametrize("count", [0, -1, len(NODES), len(NODES) + 5])
def test_a_count_of_zero_or_at_least_the_node_count_samples_every_node(count: int) -> None:
    assert NodeSampler(seed=0).sample(NODES, count) == tuple(sorted(NODES))


def test_a_sample_is_sorted_distinct_and_drawn_from_the_nodes() -> None:
    sampler = NodeSampler(seed=11)
    for _ in range(20):
        sample = sampler.sample(NODES, 6)
        assert len(sample) == 6
        assert list(sample) == sorted(set(sample))
        assert set(sample) <= set(NODES)


def test_unseeded_samplers_draw_differently() -> None:
    # From the OS's secure source: 20 draws of 5 nodes out of 10 from two
    # samplers coincide with probability 252⁻²⁰.
    first, second = NodeSampler(), NodeSampler()
    assert [first.sample(NODES, 5) for _ in range(20)] != [
        second.sample(NODES, 5) for _ in range(20)
    ]


def test_client_seeds_are_non_negative_31_bit_integers() -> None:
    sampler = NodeSampler(seed=0)
    assert all(0 <= sampler.draw_seed() < 2**31 for _ in range(100))


def test_poisson_sampling_takes_each_node_independently_with_the_rate() -> None:
    sampler = NodeSampler(seed=3)
    nodes = list(range(200))
    assert sampler.sample_poisson(nodes, 1.0) == tuple(nodes)
    counts = [len(sampler.sample_poisson(nodes, 0.3)) for _ in range(50)]
    assert 0.25 < sum(counts) / (50 * len(nodes)) < 0.35
    assert len(set(counts)) > 1  # the round size varies


def test_poisson_sampling_draws_from_the_generator_it_is_given() -> None:
    nodes = list(range(50))
    key = bytes(32)
    first = NodeSampler(seed=1).sample_poisson(nodes, 0.5, secure_generator(key))
    second = NodeSampler(seed=2).sample_poisson(nodes, 0.5, secure_generator(key))
    assert first == second
