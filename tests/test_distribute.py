"""Distribution: replicas x units on logical CPUs, placement plans, TPU assignment, checks."""

import contextlib
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_train import ROOT, TINY, parameters
from toy import dense_pipeline, random_clip, train_config

import sideways_tf as sw
from sideways_tf import costs, distribute, placement
from sideways_tf.models import convnet

CPUS = ["CPU:0", "CPU:1", "CPU:2", "CPU:3"]


def mirrored_2x2(placement_arg="contiguous"):
    """2 replicas x 2 cores on the 4 logical CPUs of the test session."""
    return distribute.make_runtime(
        strategy="mirrored", devices=CPUS, cores_per_replica=2, placement=placement_arg
    )


def adam():
    return keras.optimizers.Adam(1e-2)  # no clipping: it would clip each replica's share


def sgd():
    # Linear in the gradient: Adam would magnify float round-off of the all-reduce.
    return keras.optimizers.SGD(0.1, momentum=0.9)


def components(variable, strategy):
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return strategy.experimental_local_results(value)


def short(device):
    return device.split("device:")[-1]


@pytest.mark.parametrize(
    "mode, topology, update_every",
    [
        ("skip_sideways", "skip(2)", None),
        ("sideways", "chain", 3),
        ("bptt", "skip(2)", None),
        ("frame_bp", "chain", None),
    ],
)
def test_two_replicas_of_two_units_match_one_device_on_the_whole_batch(
    mode, topology, update_every
):
    one = dense_pipeline(topology, num_units=3, batch=4)
    reference = sw.Engine(one, mode, sgd(), update_every=update_every)
    runtime = mirrored_2x2()
    with runtime.scope():
        two = dense_pipeline(topology, num_units=3, batch=2, placement=runtime.placement())
        for v, w in zip(sw.engine.all_variables(two), sw.engine.all_variables(one)):
            v.assign(np.array(w))
        engine = sw.Engine(two, mode, sgd(), update_every=update_every)
    assert engine.num_replicas == 2 and two.cores == [0, 0, 1]
    for seed in range(3):
        clip, labels = random_clip(one, 9, seed=seed)
        m1 = reference.train_clip(clip, labels)
        m2 = engine.train_clip(clip, labels)  # split: clips 0-1 to replica 0, 2-3 to 1
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(
        np.array(m2["outputs"]), np.array(m1["outputs"]), rtol=1e-5, atol=1e-6
    )
    for v, w in zip(engine.variables, reference.variables):
        for part in components(v, runtime.strategy):
            np.testing.assert_allclose(np.array(part), np.array(w), rtol=1e-5, atol=1e-7)
    assert engine.optimizer.iterations.numpy() == reference.optimizer.iterations.numpy()
    if mode != "frame_bp":
        # Each replica's buffers hold the state of its own half of the batch.
        out = one.units[1].output_buffer
        halves = components(two.units[1].output_buffer, runtime.strategy)
        np.testing.assert_allclose(np.array(halves[0]), np.array(out)[:2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(halves[1]), np.array(out)[2:], rtol=1e-5, atol=1e-6)


def test_every_parameter_slot_and_buffer_sits_on_its_units_device():
    runtime = mirrored_2x2()
    with runtime.scope():
        pipeline = dense_pipeline(
            "skip(2)", num_units=3, batch=2, placement=runtime.placement([0, 1, 1])
        )
        optimizer = adam()
        engine = sw.Engine(pipeline, "skip_sideways", optimizer)
    engine.train_clip(np.zeros((4, 6, 5), "float32"), np.zeros(4, "int32"))
    expected = {0: ["CPU:0", "CPU:2"], 1: ["CPU:1", "CPU:3"]}  # core -> replica devices
    slots = {
        id(v): (m, s)
        for v, m, s in zip(engine.variables, optimizer._momentums, optimizer._velocities)
    }
    checked = 0
    for i, unit in enumerate(pipeline.units, start=1):
        want = expected[pipeline.cores[i - 1]]
        for v in pipeline.unit_variables(i):
            for var in (v, *slots[id(v)]):
                assert [short(p.device) for p in components(var, runtime.strategy)] == want, (
                    var.path
                )
                checked += 1
        for b in unit.state_variables:
            assert [short(p.device) for p in components(b, runtime.strategy)] == want, b.path
    assert checked == 3 * len(engine.variables)


def test_auto_placement_balances_a_deliberately_unbalanced_pipeline():
    def build(placement=None):
        return convnet.conv_pipeline(
            batch_size=2,
            frame_shape=(16, 16, 3),
            task=sw.tasks.Classification(num_classes=4),
            widths=(4, 32, 4, 4, 4, 4),  # units 2 and 3 (4 -> 32 -> 4) cost 8x the others
            strides=(1, 1, 1, 1, 1, 1),
            placement=placement,
        )

    runtime = distribute.make_runtime(devices=CPUS[:2], cores_per_replica=2, placement="auto")
    cores = runtime.assign_cores(build)
    flops = [c.flops for c in costs.unit_costs(build())]
    assert min(flops[1:3]) > 5 * max(flops[3:])

    def slowest(assignment):
        return max(sum(f for f, k in zip(flops, assignment) if k == c) for c in (0, 1))

    # The optimum over every contiguous cut, found by brute force.
    cuts = [[0] * j + [1] * (6 - j) for j in range(1, 7)]
    assert slowest(cores) == min(slowest(c) for c in cuts)
    contiguous = [placement.contiguous_core(i, 6, 2) for i in range(6)]
    assert slowest(cores) < 0.8 * slowest(contiguous)
    assert cores == sorted(cores)  # neighbours stay together
    with runtime.scope():
        pipeline = build(runtime.placement(cores))
    assert pipeline.cores == cores
    for i, k in enumerate(cores, start=1):
        assert short(pipeline.unit_variables(i)[0].value.device) == f"CPU:{k}"


def test_placement_is_a_value_each_pipeline_gets_its_own():
    runtime = distribute.make_runtime(devices=CPUS[:2], cores_per_replica=2)
    with runtime.scope():
        split = dense_pipeline("chain", num_units=3, placement=runtime.placement([0, 1, 1]))
        whole = dense_pipeline("chain", num_units=3, placement=runtime.placement([1, 1, 1]))
        own = dense_pipeline("chain", num_units=3)  # none given: units stay on device=None
    assert split.cores == [0, 1, 1] and whole.cores == [1, 1, 1] and own.cores == [0, 0, 0]
    assert split.plan is runtime.plan and own.plan is not runtime.plan
    for pipeline, want in ((split, [0, 1, 1]), (whole, [1, 1, 1])):
        where = [short(pipeline.unit_variables(i)[0].value.device) for i in (1, 2, 3)]
        assert where == [f"CPU:{k}" for k in want]
    assert runtime.placement([0, 1, 1]).cores == (0, 1, 1)  # immutable: a tuple
    with pytest.raises(TypeError, match=r"runtime.placement\(\[0, 0, 1\]\)"):
        dense_pipeline("chain", num_units=3, placement=[0, 1, 1])
    replicated = mirrored_2x2()
    with pytest.raises(ValueError, match=r"outside their strategy.*runtime.scope\(\)"):
        dense_pipeline("chain", num_units=3, placement=replicated.placement())


def test_gradient_fidelity_over_replicas_is_the_mean_of_each_replicas():
    clip, labels = random_clip(dense_pipeline("chain", num_units=3, batch=4), 10)
    one = dense_pipeline("chain", num_units=3, batch=2)
    reference = sw.Engine(one, "sideways", sgd())
    halves = [reference.gradient_fidelity(clip[h], labels[h]) for h in (slice(0, 2), slice(2, 4))]
    runtime = mirrored_2x2()
    with runtime.scope():
        two = dense_pipeline("chain", num_units=3, batch=2, placement=runtime.placement())
        engine = sw.Engine(two, "sideways", sgd())
    fid = engine.gradient_fidelity(clip, labels)
    for key in ("cosine", "norm_ratio"):
        expected = (np.array(halves[0][key]) + np.array(halves[1][key])) / 2
        np.testing.assert_allclose(np.array(fid[key]), expected, rtol=1e-4)


def test_balance_cuts_contiguous_blocks_minimising_the_slowest():
    assert placement.balance([1, 1, 1, 1], 2) == [0, 0, 1, 1]
    assert placement.balance([5, 1, 1, 1], 2) == [0, 1, 1, 1]
    assert placement.balance([1, 1, 1, 6], 3) == [0, 1, 1, 2] or placement.balance(
        [1, 1, 1, 6], 3
    ) == [0, 0, 1, 2]
    assert placement.balance([3, 3], 4) == [0, 1]  # more cores than units
    with pytest.raises(ValueError, match="num_cores must be >= 1"):
        placement.balance([1], 0)


# -- TPU: device assignment on a hand-built topology, the plan against a fake strategy


def v3_8_topology():
    """A v3-8 slice: 2 x 2 chips, 2 cores per chip, one host."""
    coords = [[x, y, 0, c] for y in range(2) for x in range(2) for c in range(2)]
    return tf.tpu.experimental.Topology(
        mesh_shape=[2, 2, 1, 2], device_coordinates=np.array([coords], np.int32)
    )


@pytest.mark.parametrize(
    "cores, shape", [(1, [1, 1, 1, 1]), (2, [1, 1, 1, 2]), (4, [2, 1, 1, 2]), (8, [2, 2, 1, 2])]
)
def test_tpu_device_assignment_spans_c_cores_per_replica(cores, shape):
    topology = v3_8_topology()
    assert distribute.tpu_computation_shape(topology.mesh_shape, cores) == shape
    assignment = distribute.tpu_device_assignment(topology, cores)
    assert assignment.num_replicas == 8 // cores
    assert assignment.num_cores_per_replica == cores
    used = [
        tuple(int(c) for c in assignment.coordinates(r, k))
        for r in range(assignment.num_replicas)
        for k in range(cores)
    ]
    assert len(set(used)) == 8  # every core of the slice exactly once
    for r in range(assignment.num_replicas):
        chips = {tuple(int(c) for c in assignment.coordinates(r, k))[:3] for k in range(cores)}
        assert len(chips) == max(cores // 2, 1)  # a replica's cores: whole chips, or one chip


def test_tpu_cores_per_replica_that_do_not_tile_the_mesh_are_refused():
    with pytest.raises(ValueError, match="cores_per_replica = 3"):
        distribute.tpu_device_assignment(v3_8_topology(), 3)
    with pytest.raises(ValueError, match="does not fit the TPU mesh"):
        distribute.tpu_computation_shape([2, 2, 1, 2], 6)


class FakeTPU:
    """Stands in for TPUStrategy.extended and a TPU replica context: records cores."""

    def __init__(self):
        self.core, self.created, self.ran = None, [], []
        self.extended = self

    @contextlib.contextmanager
    def experimental_logical_device(self, core):
        previous, self.core = self.core, core
        self.ran.append(core)
        try:
            yield
        finally:
            self.core = previous


def test_tpu_plan_creates_and_runs_each_unit_on_its_logical_core():
    fake = FakeTPU()
    plan = placement.TPUPlan(fake, num_cores=2, replica_context=lambda: fake)

    def record(next_creator, **kwargs):
        variable = next_creator(**kwargs)
        fake.created.append((variable.name, fake.core))
        return variable

    with tf.variable_creator_scope(record):
        pipeline = dense_pipeline(
            "chain", num_units=3, placement=placement.Placement(plan, (0, 1, 1))
        )
    assert pipeline.cores == [0, 1, 1]
    by_core = {}
    for name, core in fake.created:
        by_core.setdefault(core, []).append(name)
    # unit1's kernel, bias and buffers on core 0; units 2, 3 and the head on core 1.
    assert len(by_core[0]) == 4 and len(by_core[1]) == 4 + 3 + 2
    fake.ran.clear()
    pipeline.forward_step(pipeline.zero_state(), random_clip(pipeline, 1)[0][:, 0])
    # zero_state (3 units) then forward_step: units 1, 2, 3, the head inside the top's scope.
    assert fake.ran == [0, 1, 1, 0, 1, 1]


# -- Checks that fail early, naming the fix --------------------------------------------


def test_more_cores_per_replica_than_devices():
    with pytest.raises(ValueError, match="cores_per_replica = 8.*only 4 device"):
        distribute.make_runtime(strategy="mirrored", devices=CPUS, cores_per_replica=8)
    with pytest.raises(ValueError, match="do not split into replicas.*= 3"):
        distribute.make_runtime(strategy="mirrored", devices=CPUS, cores_per_replica=3)


def test_unit_core_index_out_of_range():
    runtime = distribute.make_runtime(devices=CPUS[:2], cores_per_replica=2, placement=(0, 5, 1))
    with pytest.raises(ValueError, match=r"runtime.placement = \(0, 5, 1\).*core index 5.*0\.\.1"):
        with runtime.scope():
            dense_pipeline(
                "chain", num_units=3, placement=runtime.placement(runtime.assign_cores())
            )
    with pytest.raises(ValueError, match="gives 2 core indices for a pipeline of 3 units"):
        with runtime.scope():
            dense_pipeline("chain", num_units=3, placement=runtime.placement([0, 1]))


def test_units_pinned_by_hand_inside_a_runtime_are_refused():
    with pytest.raises(ValueError, match="have a device= of their own.*runtime.placement"):
        runtime = mirrored_2x2()
        with runtime.scope():
            dense_pipeline(
                "chain", num_units=2, devices=["CPU:0", "CPU:1"], placement=runtime.placement()
            )


def test_jit_on_a_multi_device_replica():
    runtime = distribute.make_runtime(devices=CPUS[:2], cores_per_replica=2)
    with runtime.scope():
        pipeline = dense_pipeline("chain", num_units=2, placement=runtime.placement())
        with pytest.raises(ValueError, match="jit_compile=True needs every unit of a replica"):
            sw.Engine(pipeline, "sideways", adam(), jit_compile=True)


def test_unknown_strategy_and_placement():
    with pytest.raises(ValueError, match="runtime.strategy = 'horovod'"):
        distribute.make_runtime(strategy="horovod")
    with pytest.raises(ValueError, match="runtime.placement = 'balanced'"):
        distribute.make_runtime(placement="balanced")
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.make_runtime(strategy="multi_worker")


def test_engine_outside_the_pipelines_strategy_is_refused():
    runtime = mirrored_2x2()
    with runtime.scope():
        pipeline = dense_pipeline("chain", num_units=2, placement=runtime.placement())
    with pytest.raises(ValueError, match="same scope"):
        sw.Engine(pipeline, "sideways", adam())


# -- Training runs on a runtime ----------------------------------------------------------


run_tiny = train_config


MIRRORED = (
    "runtime.strategy = 'mirrored'",
    "runtime.devices = ['CPU:0', 'CPU:1', 'CPU:2', 'CPU:3']",
    "runtime.cores_per_replica = 2",
    "tiny_conv_pipeline.topology = 'skip(2)'",
    "train.fidelity_every = 0",  # (tested below without a training run: traces are slow)
    "train.images_every = 0",
    "train.mode = 'skip_sideways'",
    "adam.clipnorm = None",
)


@pytest.mark.slow
def test_mirrored_training_stops_and_resumes_to_the_same_parameters(tmp_path):

    straight = run_tiny(tmp_path / "straight", *MIRRORED)
    assert straight["step"] == 6 and straight["eval"]["num_videos"] == 10
    run_tiny(tmp_path / "stopped", *MIRRORED, "train.stop_at_step=3")
    resumed = run_tiny(tmp_path / "stopped", *MIRRORED)
    assert resumed["step"] == 6
    a, b = parameters(tmp_path / "stopped"), parameters(tmp_path / "straight")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_global_batch_that_does_not_split_over_replicas(tmp_path):
    with pytest.raises(ValueError, match="train.global_batch = 3 does not split over 2 replicas"):
        run_tiny(tmp_path, *MIRRORED, "train.global_batch = 3")


WORKER = """
import json, signal, sys
import gin, numpy as np
from sideways_tf import engine, train
from sideways_tf.data import moving_shapes
from sideways_tf.models import convnet

built = []


@gin.configurable
def recording_pipeline(**kwargs):  # the tiny model, kept to read its final parameters
    built.append(convnet.tiny_conv_pipeline(**kwargs))
    return built[-1]


@gin.configurable
def shuffled_shapes(**kwargs):  # a shuffle buffer in each worker's input position
    return moving_shapes.moving_shapes_dataset(**kwargs).shuffle(8, seed=3)


gin.parse_config_files_and_bindings([{tiny!r}], {params!r})
result = train.train({workdir!r})
values = {{v.path: np.asarray(v.value.numpy()) for v in engine.all_variables(built[-1])}}
np.savez({out!r}, **{{k.replace("/", "."): v for k, v in values.items()}})
print("RESULT", json.dumps({{"step": result["step"], "eval": result["eval"]}}))
if result["interrupted"]:  # as sideways-train: 130 / 143
    sys.exit(128 + signal.Signals[result["interrupted"]].value)
"""


def free_ports(n):

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


MULTI_WORKER = [
    "runtime.strategy = 'multi_worker'",
    "train.global_batch = 4",
    "train.eval_every = 1000",
    "train.fidelity_every = 0",
    "train.images_every = 0",
    "adam.clipnorm = None",
    # Each worker saves its final parameters: the chief's checkpoint alone could
    # not show that the other worker holds the same ones.
    "train.model_fn = @recording_pipeline",
    # Shuffled input, its buffer in the data position: a worker resumed on another
    # worker's position would read other clips.
    "train.train_data = @train/shuffled_shapes",
    "train/shuffled_shapes.split = 'train'",
    "train.data_checkpoint = 'full'",
]


def start_workers(run, params):
    """Two worker processes of one MultiWorkerMirroredStrategy on 127.0.0.1, training in
    the workdir `run` (each saves its final parameters as run/../<run name>_<w>.npz)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(task), TF_CPP_MIN_LOG_LEVEL="2")
        code = WORKER.format(
            root=ROOT,
            tiny=TINY,
            params=MULTI_WORKER + list(params),
            workdir=str(run),
            out=str(run.parent / f"{run.name}_{index}.npz"),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def wait(procs, timeout=300):
    """(return code, output) of each worker; none is left running."""
    try:
        return [(p.communicate(timeout=timeout)[0], p.returncode)[::-1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def finished(run, procs, num_steps):
    """Asserts both workers ended at num_steps with identical parameters; returns them."""
    for index, (code, out) in enumerate(wait(procs)):
        assert code == 0, f"worker {index} failed:\n{out[-3000:]}"
        assert json.loads(out.split("RESULT ")[-1].splitlines()[0])["step"] == num_steps
    a, b = (np.load(run.parent / f"{run.name}_{i}.npz") for i in range(2))
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 0
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return a


def checkpoint_numbers(run):
    return sorted(int(p.name[5:-6]) for p in (run / "checkpoints").glob("ckpt-*.index"))


def interrupt(run, procs, worker, signum, after):
    """Sends `signum` to `worker` once a checkpoint numbered > `after` is on disk."""
    import time

    deadline = time.time() + 180
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if any(n > after for n in checkpoint_numbers(run)):
            procs[worker].send_signal(signum)
            return wait(procs)
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {after}: {wait(procs)}")


@pytest.mark.slow
def test_two_workers_stopped_three_ways_resume_to_the_uninterrupted_parameters(tmp_path):
    """A real MultiWorkerMirroredStrategy (2 processes, TF_CONFIG, gRPC on 127.0.0.1) with
    shuffled input: SIGTERM to the chief, SIGKILL of the other worker and SIGTERM to it,
    each rerun resuming, ends bit for bit where an uninterrupted run does; every stop
    leaves at most train.keep_checkpoints checkpoints and a complete state file."""
    import signal

    steps = ["train.num_steps = 60", "train.checkpoint_every = 3", "train.keep_checkpoints = 2"]
    straight = finished(tmp_path / "straight", start_workers(tmp_path / "straight", steps), 60)
    # Only the chief writes the workdir's checkpoints; every worker its data position.
    assert checkpoint_numbers(tmp_path / "straight") == [57, 60]
    for w in (0, 1):
        positions = tmp_path / "straight" / "checkpoints" / f"worker_{w}"
        names = sorted(p.name for p in positions.glob("*.index"))
        assert names == ["ckpt-54.index", "ckpt-57.index", "ckpt-60.index"]  # (one more kept)

    run, last = tmp_path / "stopped", 0
    for worker, signum in [(0, signal.SIGTERM), (1, signal.SIGKILL), (1, signal.SIGTERM)]:
        results = interrupt(run, start_workers(run, steps), worker, signum, after=last)
        on_disk = checkpoint_numbers(run)
        state = tf.train.get_checkpoint_state(str(run / "checkpoints"))
        assert 0 < len(on_disk) <= 2, on_disk
        assert [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] == on_disk
        assert len(state.all_model_checkpoint_timestamps) == len(on_disk)
        assert on_disk[-1] > last and on_disk[-1] < 60
        last = on_disk[-1]
        if signum == signal.SIGTERM:  # both stop at one step, saved, and say so
            for code, out in results:
                assert code == 128 + signal.SIGTERM, out[-3000:]
                assert f"stopped at step {last}, as every worker did (worker {worker} " in out
                assert "Run the same command again on every worker" in out
        else:  # the other names its lost peer, the last checkpoint and the rerun
            code, out = results[0]
            assert code not in (0, 128 + signal.SIGTERM), out[-3000:]
            assert "ckpt-" in out and "run the same command again on every worker" in out, out[
                -3000:
            ]
    resumed = finished(run, start_workers(run, steps), 60)
    assert sorted(resumed.files) == sorted(straight.files)
    for k in straight.files:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)


@pytest.mark.slow
def test_distributed_input_feeds_the_replicas_the_same_clips(tmp_path):
    """distribute_datasets_from_function deals B clips to each replica in order."""
    three = ("train.num_steps = 3", "train.eval_every = 3", "train.checkpoint_every = 3")
    run_tiny(tmp_path / "split", *MIRRORED, *three)
    run_tiny(tmp_path / "dealt", *MIRRORED, *three, "runtime.distributed_input = True")
    a, b = parameters(tmp_path / "dealt"), parameters(tmp_path / "split")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
