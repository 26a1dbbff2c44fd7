"""Closed-form checks of the schedule simulator (sideways_tf/simulator.py); no TF needed."""

import dataclasses
import math

import pytest

from sideways_tf import simulator as sim

L, K, B = 4, 16, 8


def balanced(num_devices=L, **machine) -> sim.Setup:
    """L equal units (f = 1, b = 2 s per step), 1000-byte outputs, 100-byte parameters."""
    return sim.from_measured(
        forward=[1.0] * L,
        backward=[2.0] * L,
        output_bytes=[1000.0] * L,
        param_bytes=[100.0] * L,
        edges=sim.chain(L),
        batch_size=B,
        frames=K,
        cores=sim.contiguous(L, num_devices),
        **machine,
    )


def test_sideways_is_d_times_faster_than_frame_bp_when_transfers_are_free():
    s = balanced()
    side, frame = sim.sideways(s), sim.frame_bp(s)
    assert frame.clip_time == pytest.approx(K * L * 3.0)
    assert side.clip_time == pytest.approx(K * 3.0)
    assert frame.clip_time / side.clip_time == pytest.approx(L)
    assert side.utilisation == pytest.approx(1.0)
    assert frame.utilisation == pytest.approx(1.0 / L)


def test_one_device_all_schedules_agree():
    p = sim.simulate(balanced(num_devices=1), sim.SCHEDULES)
    times = {name: pred.clip_time for name, pred in p.items()}
    assert times == pytest.approx(dict.fromkeys(sim.SCHEDULES, K * L * 3.0))


@pytest.mark.parametrize("frames", [1, 4, 16, 64])
def test_gpipe_bubble(frames):
    s = dataclasses.replace(balanced(), frames=frames)
    ideal = frames * 3.0  # every device busy every slot
    assert sim.gpipe(s).clip_time / ideal == pytest.approx((frames + L - 1) / frames)
    assert sim.gpipe(s).utilisation == pytest.approx(frames / (frames + L - 1))


def test_sideways_is_bound_by_the_slowest_device():
    s = sim.from_measured(
        forward=[1.0, 5.0, 1.0, 1.0],
        backward=[1.0, 5.0, 1.0, 1.0],
        output_bytes=[0.0] * 4,
        edges=sim.chain(4),
        batch_size=B,
        frames=K,
        cores=[0, 1, 2, 3],
    )
    assert sim.sideways(s).clip_time == pytest.approx(K * 10.0)
    # Two units on one device: that device is the bound when its sum is largest.
    s2 = dataclasses.replace(s, cores=(0, 0, 1, 1))
    assert sim.sideways(s2).clip_time == pytest.approx(K * 12.0)


def test_transfers_count_only_on_edges_that_cross_devices():
    link = {"link_bandwidth": 100.0, "link_latency": 0.5, "overlap": False}
    one = sim.sideways(balanced(num_devices=1, **link))
    assert one.transfer == 0.0
    assert one.clip_time == pytest.approx(K * L * 3.0)
    # Two devices, cut between units 2 and 3: one crossing edge (2 -> 3). Device 0 sends
    # a_2, device 1 sends m_2, each 0.5 + 1000 / 100 = 10.5 s per step.
    two = balanced(num_devices=2, **link)
    assert two.crossing() == [(2, 3)]
    assert sim.sideways(two).clip_time == pytest.approx(K * (6.0 + 10.5))
    assert sim.frame_bp(two).clip_time == pytest.approx(K * L * 3.0 + 2 * (0.5 + K * 10.0))
    # Overlapped, the link (10.5 s) is hidden only while compute (6 s) is longer: it is not.
    overlapped = dataclasses.replace(two, overlap=True)
    assert sim.sideways(overlapped).clip_time == pytest.approx(K * 10.5)
    # A skip edge from unit 1 to unit 4 adds a crossing; 1 -> 2 stays on device 0.
    skip = dataclasses.replace(two, edges=(*two.edges, (1, 4), (0, 2)))
    assert skip.crossing() == [(2, 3), (1, 4)]
    assert sim.skip_sideways(skip).clip_time == pytest.approx(K * (6.0 + 21.0))


def test_best_cut_avoids_the_large_activation_on_a_slow_link():
    s = sim.from_measured(
        forward=[1.0] * 4,
        backward=[1.0] * 4,
        output_bytes=[1.0, 1000.0, 1.0, 1.0],  # a_2 is large: cut after 1 or 3, not 2
        edges=sim.chain(4),
        batch_size=B,
        frames=K,
        link_bandwidth=100.0,
    )
    assert sim.best_cut(s, 2) in {(0, 1, 1, 1), (0, 0, 0, 1)}
    assert sim.best_cut(dataclasses.replace(s, link_bandwidth=math.inf), 2) == (0, 0, 1, 1)
    assert sim.best_cut(s, 4) == (0, 1, 2, 3)


def test_allreduce_is_zero_for_one_replica_and_grows_as_2_r_minus_1_over_r():
    bw = 10.0
    assert sim.allreduce_time(balanced(replicas=1, allreduce_bandwidth=bw)) == 0.0
    for r in (2, 4, 8, 32):
        s = balanced(num_devices=1, replicas=r, allreduce_bandwidth=bw)
        expected = 2 * (r - 1) / r * L * 100.0 / bw  # one device holds all parameters
        assert sim.allreduce_time(s) == pytest.approx(expected)
        assert sim.sideways(s).clip_time == pytest.approx(K * L * 3.0 + expected)
    # Model parallel: each device reduces only its own units' parameters, concurrently.
    s = balanced(num_devices=L, replicas=2, allreduce_bandwidth=bw)
    assert sim.allreduce_time(s) == pytest.approx(2 * 0.5 * 100.0 / bw)


@pytest.mark.parametrize("schedule", list(sim.SCHEDULES))
def test_throughput_scales_with_replicas_when_the_allreduce_is_free(schedule):
    fps = [sim.SCHEDULES[schedule](balanced(replicas=r)).frames_per_second for r in (1, 2, 8)]
    assert fps[1] == pytest.approx(2 * fps[0])
    assert fps[2] == pytest.approx(8 * fps[0])
    assert fps[0] == pytest.approx(B * K / sim.SCHEDULES[schedule](balanced()).clip_time)


def test_from_costs_divides_flops_by_the_device_throughput():
    class Cost:  # the fields of sideways_tf.costs.UnitCost
        def __init__(self, f, b, p, s):
            self.forward_flops, self.backward_flops, self.params, self.output_bytes = f, b, p, s

    s = sim.from_costs(
        [Cost(2e12, 4e12, 10, 64), Cost(1e12, 2e12, 20, 32)],
        flops_per_second=1e12,
        edges=sim.chain(2),
        batch_size=B,
        frames=K,
        cores=[0, 1],
    )
    assert s.forward == (2.0, 1.0) and s.backward == (4.0, 2.0)
    assert s.param_bytes == (40, 80) and s.output_bytes == (64, 32)
    assert sim.sideways(s).clip_time == pytest.approx(K * 6.0)


def test_invalid_setups_name_the_problem():
    with pytest.raises(ValueError, match="cores has 2 entries for 4 units"):
        dataclasses.replace(balanced(), cores=(0, 1))
    with pytest.raises(ValueError, match="Edges"):
        dataclasses.replace(balanced(), edges=((3, 2),))
    with pytest.raises(ValueError, match="Unknown schedules"):
        sim.simulate(balanced(), ["pipedream"])
    assert math.isinf(balanced().link_bandwidth)
