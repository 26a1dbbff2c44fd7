"""The schedule simulator against runs measured here, then projected to 8 and 32 accelerators.

    python benchmarks/simulate.py [--quick] [--repeats 3] [--json PATH]
        [--peak_tflops 100] [--mfu 0.4] [--links ici=100:5,nvlink=300:5,pcie=25:10]

a. Per-unit forward and VJP times (s per step of B frames) of a balanced conv pipeline
   (conv_pipeline, widths (96,)*4, strides (1,)*4, 32x32x3, batch 16), each unit alone
   in a tf.function, intra-op 1, inter-op 1; median of repeats. VJP = (forward + VJP)
   - forward; every gradient feeds the returned value, so none is pruned.
b. The real engine (mode sideways, SGD, K=16; and frame_bp) in two child processes at
   inter-op 1 and 2 (intra-op 1), ms per clip, against the simulator with D=1 and with
   D=2 cores placed by placement.balance on the measured f + b (no transfer cost).
c. The same pipeline split over two tf.distribute.Server processes on 127.0.0.1, each
   pinned to its own core, intra-op 1; a client connects with
   tf.config.experimental_connect_to_cluster and trains. Every crossing activation and
   message is a real gRPC copy. The eager context a client creates on the workers takes
   the CLIENT's thread settings (the servers' ConfigProto does not apply to it; checked),
   so two clients run it: worker inter-op 1 and inter-op 2 (still one core per worker).
   The link is measured by ping-pong copies in a graph loop: latency from 4 bytes,
   bandwidth from a large tensor. Predicted with D=2 and that link.
d. Projection for D cores per replica x R replicas, D*R in {8, 32}, from FLOPs
   (sideways_tf.costs.unit_costs) of conv_small (gin/models/conv_small.gin) and a deeper
   8-unit conv_pipeline, 112x112 frames, B=8 per replica, K=32 (the HMDB51 configs),
   at an assumed sustained accelerator throughput and link (printed with the table).

Children speak JSON lines; the parent (no TensorFlow until the projection) interleaves
the repeats so the shared machine's drift falls on every setting alike. Every child and
server is killed at the end, and every wait has a timeout.
Smoke run: --quick (small sizes, 2 repeats).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sideways_tf import simulator as sim  # noqa: E402  (pure Python)

NUM_CLASSES = 10
MEASURED = ("channels", "units", "frame_size", "batch", "frames")
QUICK = {"channels": 16, "frame_size": 16, "batch": 4, "frames": 8, "repeats": 2}
LINK_LARGE = 64 << 20  # bytes of the bandwidth probe (quick: 1/8)
TIMEOUT = 900  # s for any single reply
INTER_OP = (1, 2)  # serial, concurrent


# == Children (TensorFlow) ================================================================


def _quiet_tf(inter_op: int | None = 1):
    """Imports TF with intra-op 1 (and inter-op as given) before it initialises."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    return tf


def _reply_channel():
    """Replies go on the real stdout; anything TF prints goes to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return replies


def _build(args, devices=None):
    """(pipeline, engine, clip, labels) for each mode: {mode: callable timing one clip}."""
    import keras
    import numpy as np
    import tensorflow as tf

    import sideways_tf as sw
    from sideways_tf.models import convnet

    rng = np.random.default_rng(0)
    frame = (args.frame_size, args.frame_size, 3)
    clip = tf.constant(rng.normal(size=(args.batch, args.frames, *frame)).astype("float32"))
    labels = tf.constant(rng.integers(0, NUM_CLASSES, args.batch), tf.int32)
    runs, pipelines = {}, {}
    for mode in ("sideways", "frame_bp"):
        keras.utils.set_random_seed(0)
        pipeline = convnet.conv_pipeline(
            batch_size=args.batch,
            frame_shape=frame,
            task=sw.tasks.Classification(num_classes=NUM_CLASSES),
            widths=(args.channels,) * args.units,
            strides=(1,) * args.units,
            devices=devices,
        )
        engine = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.01))
        runs[mode] = lambda e=engine: float(e.train_clip(clip, labels)["loss"])
        pipelines[mode] = pipeline
    return runs, pipelines["sideways"]


def _unit_probes(pipeline):
    """Per unit: (forward, forward + VJP) tf.functions on fixed inputs and messages.

    forward + VJP is the unit's `steps.unit_step`, as in the engine's step: the top
    unit differentiates the task's loss through the head, the others take a message
    m_i; the VJP is w.r.t. theta_i and the inputs that come from units (not the
    frame). forward is the same a_i (and the top's loss) without the tape and returns
    their sum; forward + VJP returns the L1 norm of every reply and gradient, so TF
    computes them all (checked > 0).
    """
    import numpy as np
    import tensorflow as tf

    from sideways_tf.rules import masked_loss
    from sideways_tf.steps import unit_step

    rng = np.random.default_rng(1)
    labels = tf.constant(rng.integers(0, NUM_CLASSES, pipeline.batch_size), tf.int32)

    def probes_of(i):
        # Closures, not default arguments: tf.function turns tensor defaults into inputs.
        unit, top = pipeline.units[i - 1], i == pipeline.num_units
        x = [tf.constant(rng.normal(size=s).astype("float32")) for s in unit.source_shapes]
        m = None if top else tf.constant(rng.normal(size=unit.output_shape_).astype("float32"))

        def head(a):
            return pipeline.apply_head(a, training=True)

        def loss(y):
            return masked_loss(pipeline, labels, y, 1.0)

        def forward():
            a = unit(x, training=True)
            return tf.reduce_sum(loss(head(a)) if top else a)

        def step():
            theta, senders = pipeline.unit_variables(i), pipeline.topology.senders(i)
            if top:
                out = unit_step(unit, x, theta, senders, head=head, loss=loss)
            else:
                out = unit_step(unit, x, theta, senders, message=m)
            return tf.stack([tf.reduce_sum(tf.abs(g)) for g in out.replies + out.grads])

        return tf.function(forward), tf.function(step)

    probes = [probes_of(i) for i in range(1, pipeline.num_units + 1)]
    for i, (_, step) in enumerate(probes, start=1):
        if not all(step().numpy() > 0):
            raise RuntimeError(f"Unit {i}'s VJP probe has an all-zero gradient: it is pruned.")
    return probes


def _time_probes(probes, repeats: int) -> dict:
    """Median seconds of each unit's forward and forward + VJP, alternating the two."""
    fwd, both = [[] for _ in probes], [[] for _ in probes]
    for _ in range(repeats):
        for i, (f, fb) in enumerate(probes):
            for fn, out in ((f, fwd[i]), (fb, both[i])):
                start = time.perf_counter()
                fn().numpy()
                out.append(time.perf_counter() - start)
    f = [statistics.median(t) for t in fwd]
    return {"forward": f, "both": [statistics.median(t) for t in both]}


def _pipeline_facts(pipeline) -> dict:
    import numpy as np

    return {
        "output_bytes": [4 * int(np.prod(u.output_shape_)) for u in pipeline.units],
        "param_bytes": [
            4 * int(sum(np.prod(v.shape) for v in pipeline.unit_variables(i)))
            for i in range(1, pipeline.num_units + 1)
        ],
        "edges": [(e.source, e.receiver) for e in pipeline.topology.edges],
        "cores": list(pipeline.cores),
    }


def _serve(replies, handlers: dict):
    """Answers JSON-line requests {"op": name, ...} until stdin closes."""
    for line in sys.stdin:
        request = json.loads(line)
        replies.write(json.dumps(handlers[request.pop("op")](**request)) + "\n")


def _time_clips(run, clips: int) -> dict:
    start = time.perf_counter()
    for _ in range(clips):
        run()
    return {"ms": 1000 * (time.perf_counter() - start) / clips}


def local_child(args):
    """One process at inter-op args.inter_op: engine clips, and the units alone."""
    replies = _reply_channel()
    tf = _quiet_tf(args.inter_op)
    runs, pipeline = _build(args)
    probes = _unit_probes(pipeline)
    for fn in [*runs.values(), *(fn for pair in probes for fn in pair)] * 2:
        fn()  # trace, then warm up
    threads = [
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    ]
    replies.write(json.dumps({"ready": True, "threads": threads, **_pipeline_facts(pipeline)}))
    replies.write("\n")
    _serve(
        replies,
        {
            "clip": lambda mode, clips: _time_clips(runs[mode], clips),
            "units": lambda repeats: _time_probes(probes, repeats),
        },
    )


def server_child(args):
    """A tf.distribute.Server for task args.task, pinned to one core; runs until killed."""
    os.sched_setaffinity(0, {args.task % os.cpu_count()})
    tf = _quiet_tf(inter_op=None)
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1
    )
    server = tf.distribute.Server(
        _cluster_spec(tf, args.ports), job_name="worker", task_index=args.task, config=config
    )
    print(json.dumps({"ready": True, "target": server.target}), flush=True)
    server.join()


def _cluster_spec(tf, ports: str):
    return tf.train.ClusterSpec({"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]})


def _task_device(task: int) -> str:
    return f"/job:worker/replica:0/task:{task}/device:CPU:0"


def _link_probe(tf, num_bytes: int, iters: int):
    """A graph loop of `iters` round trips task 0 -> 1 -> 0 of a [num_bytes / 4] tensor.

    Grappler drops the cross-device identities of this loop (measured: a 64 MiB copy
    in 60 us), so it must run with the meta-optimizer off. Returns () -> s per copy.
    """
    d0, d1 = _task_device(0), _task_device(1)
    with tf.device(d0):
        x = tf.zeros([max(num_bytes // 4, 1)])

    @tf.function
    def loop(x):
        def body(k, x):
            with tf.device(d1):
                y = tf.identity(x)
            with tf.device(d0):
                return k + 1, tf.identity(y)

        with tf.device(d0):
            _, x = tf.while_loop(
                lambda k, _: k < iters, body, (tf.constant(0), x), parallel_iterations=1
            )
            return x[0]

    def run():
        start = time.perf_counter()
        loop(x).numpy()
        return (time.perf_counter() - start) / (2 * iters)

    return run


def _on_task0(tf, fn, *args):
    """Calls fn under the device scope the engine was traced in (else tf.function retraces
    with unplaced ops on this client, which then takes part in every step)."""
    with tf.device(_task_device(0)):
        return fn(*args)


def client_child(args):
    """Connects to the two servers, builds the pipeline over them, times clips and the link."""
    replies = _reply_channel()
    # The client's thread settings become the workers' (the eager context it creates there
    # carries them; the servers' own ConfigProto does not apply to it).
    tf = _quiet_tf(args.inter_op)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        _cluster_spec(tf, args.ports), rpc_layer="grpc"
    )
    tf.config.experimental_connect_to_cluster(resolver, make_master_device_default=False)
    cores = [int(k) for k in args.cores.split(",")]
    # Unplaced ops (the loop counter, sums, the optimizer's counter) run on task 0, not here.
    with tf.device(_task_device(0)):
        runs, pipeline = _build(args, devices=[_task_device(k) for k in cores])
    facts = _pipeline_facts(pipeline)
    k = facts["cores"]
    crossing = [j for j, i in facts["edges"] if j > 0 and k[j - 1] != k[i - 1]]
    cut = max((facts["output_bytes"][j - 1] for j in crossing), default=4)
    sizes = {"latency": 4, "activation": cut, "large": LINK_LARGE // (8 if args.quick else 1)}
    probes = {name: _link_probe(tf, n, 4 if name == "large" else 20) for name, n in sizes.items()}

    def link():
        # The optimizer options key TF's function cache: the probes keep their
        # grappler-free instantiation, the engine its own (checked).
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        try:
            return {name: probe() for name, probe in probes.items()}
        finally:
            tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})

    for _ in range(2):
        link()
    for run in [*runs.values()] * 2:
        _on_task0(tf, run)  # trace, then warm up
    devices = sorted({d.name for d in tf.config.list_logical_devices() if "worker" in d.name})
    replies.write(json.dumps({"ready": True, "devices": devices, "sizes": sizes, **facts}))
    replies.write("\n")
    _serve(
        replies,
        {
            "clip": lambda mode, clips: _on_task0(tf, _time_clips, runs[mode], clips),
            "link": link,
        },
    )


# == Parent (no TensorFlow while measuring) ==============================================


class Child:
    """A child process of this script, spoken to in JSON lines, with a timeout on each."""

    def __init__(self, name: str, role_args: list[str], logdir: str, pin=None):
        self.name = name
        self.log = os.path.join(logdir, f"{name}.log")
        cmd = [sys.executable, os.path.abspath(__file__), *role_args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read(self, timeout: float = TIMEOUT) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = "timeout"
        if line is None or line == "timeout":
            with open(self.log) as f:
                tail = "".join(f.readlines()[-25:])
            raise RuntimeError(f"{self.name}: no reply ({line or 'exited'}); its log ends:\n{tail}")
        return json.loads(line)

    def ask(self, op: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _settings(args) -> list[str]:
    return [f"--{k}={getattr(args, k)}" for k in MEASURED] + (["--quick"] if args.quick else [])


def measure(args, logdir: str) -> dict:
    """Runs a-c; returns the raw measurements (medians over repeats) and pipeline facts."""
    children, servers = [], []
    load = [os.getloadavg()[0]]
    try:
        local = {
            n: Child(f"inter_op{n}", ["--role=local", f"--inter_op={n}"] + _settings(args), logdir)
            for n in INTER_OP
        }
        children += local.values()
        ports = ",".join(map(str, _free_ports(2)))
        for task in (0, 1):
            role = ["--role=server", f"--task={task}", f"--ports={ports}"]
            servers.append(Child(f"server{task}", role, logdir))
        facts = {}
        for n, child in local.items():
            facts = child.read()
            if facts["threads"] != [n, 1]:
                raise RuntimeError(
                    f"{child.name} runs with threads {facts['threads']}, not [{n}, 1]."
                )
        for server in servers:
            server.read(timeout=120)
        first = local[1].ask("units", repeats=3)
        cores = _balance([f + b for f, b in _split(first)], 2)
        clients = {}
        for n in INTER_OP:
            role = ["--role=client", f"--inter_op={n}", f"--ports={ports}"]
            role.append(f"--cores={','.join(map(str, cores))}")
            clients[n] = Child(f"client_inter_op{n}", role + _settings(args), logdir)
            children.append(clients[n])
        cluster = {n: c.read() for n, c in clients.items()}
        runs = {"units": [], **{f"link{n}": [] for n in INTER_OP}}
        for r in range(args.repeats):
            runs["units"].append(local[1].ask("units", repeats=args.unit_repeats))
            for mode in ("sideways", "frame_bp"):
                for n in INTER_OP:
                    ms = local[n].ask("clip", mode=mode, clips=1)["ms"]
                    runs.setdefault(f"local{n}/{mode}", []).append(ms)
                    ms = clients[n].ask("clip", mode=mode, clips=1)["ms"]
                    runs.setdefault(f"cluster{n}/{mode}", []).append(ms)
            for n in INTER_OP:
                runs[f"link{n}"].append(clients[n].ask("link"))
            print(f"  repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        for child in children:
            child.close()
        for server in servers:
            server.kill()
    load.append(os.getloadavg()[0])
    units = {
        k: [statistics.median(u[k][i] for u in runs["units"]) for i in range(args.units)]
        for k in ("forward", "both")
    }
    link = {
        n: {k: statistics.median(x[k] for x in runs[f"link{n}"]) for k in runs[f"link{n}"][0]}
        for n in INTER_OP
    }
    clips = {k: statistics.median(v) for k, v in runs.items() if "/" in k}
    fastest = {k: min(v) for k, v in runs.items() if "/" in k}
    return {
        "units": units,
        "link": link,
        "link_sizes": cluster[1]["sizes"],
        "clips_ms": clips,
        "clips_min_ms": fastest,
        "clips_all_ms": {k: v for k, v in runs.items() if "/" in k},
        "facts": {k: facts[k] for k in ("output_bytes", "param_bytes", "edges")},
        "cluster_cores": cluster[1]["cores"],
        "cluster_devices": cluster[1]["devices"],
        "balanced_cores": cores,
        "load_average": load,
    }


def _split(units: dict):
    return [(f, max(b - f, 0.0)) for f, b in zip(units["forward"], units["both"])]


def _balance(costs, cores):
    from sideways_tf import placement  # imports TensorFlow: only once measuring is done

    return placement.balance(costs, cores)


def _link_fit(m: dict, n: int) -> dict:
    """Latency (4-byte copy) and bandwidth (large copy) of the link seen by client n."""
    sizes, link = m["link_sizes"], m["link"][n]
    bandwidth = (sizes["large"] - sizes["latency"]) / max(link["large"] - link["latency"], 1e-9)
    return {
        "latency_s": link["latency"],
        "bandwidth_Bps": bandwidth,
        "activation_bytes": sizes["activation"],
        "activation_measured_s": link["activation"],
        "activation_predicted_s": link["latency"] + sizes["activation"] / bandwidth,
    }


def predict(args, m: dict) -> dict:
    """The simulator's predictions for every measured setting, with the errors."""
    fb = _split(m["units"])
    base = sim.from_measured(
        forward=[f for f, _ in fb],
        backward=[b for _, b in fb],
        output_bytes=m["facts"]["output_bytes"],
        param_bytes=m["facts"]["param_bytes"],
        edges=m["facts"]["edges"],
        batch_size=args.batch,
        frames=args.frames,
    )
    links = {n: _link_fit(m, n) for n in INTER_OP}
    settings = {
        "local1": (base, "1 process, inter-op 1 (D=1)"),
        "local2": (
            dataclasses.replace(base, cores=m["balanced_cores"]),
            f"1 process, inter-op 2 (D=2, cores {m['balanced_cores']})",
        ),
    }
    for n, link in links.items():
        settings[f"cluster{n}"] = (
            dataclasses.replace(
                base,
                cores=m["cluster_cores"],
                link_latency=link["latency_s"],
                link_bandwidth=link["bandwidth_Bps"],
            ),
            f"2 servers, worker inter-op {n} (D=2, cores {m['cluster_cores']})",
        )
    rows = []
    for key, (setup, label) in settings.items():
        for mode in ("sideways", "frame_bp"):
            measured = m["clips_ms"][f"{key}/{mode}"]
            row = {"key": f"{key}/{mode}", "setting": label, "mode": mode}
            row["measured_ms"] = measured
            row["measured_min_ms"] = m["clips_min_ms"][f"{key}/{mode}"]
            for overlap in (True, False) if key.startswith("cluster") else (True,):
                s = dataclasses.replace(setup, overlap=overlap)
                ms = 1000 * sim.SCHEDULES[mode](s).clip_time
                tag = (
                    "" if not key.startswith("cluster") else ("_overlap" if overlap else "_serial")
                )
                row[f"predicted_ms{tag}"] = ms
                row[f"error{tag}"] = ms / measured - 1
            rows.append(row)
    return {"rows": rows, "link": links}


def report_measured(args, m: dict, p: dict):
    print(
        f"Measured here: {args.units} units x conv3x3({args.channels}), stride 1, "
        f"{args.frame_size}x{args.frame_size}x3, B={args.batch}, K={args.frames}; "
        f"median of {args.repeats} repeats; 1-min load average {m['load_average'][0]:.1f} "
        f"at the start, {m['load_average'][1]:.1f} at the end ({os.cpu_count()} cores, shared)"
    )
    print("\na. Per-unit times, alone, intra-op 1, inter-op 1 (ms per step of B frames)")
    print(f"{'unit':>6}{'forward':>10}{'VJP':>10}{'f + b':>10}{'a_i bytes':>12}")
    for i, (f, b) in enumerate(_split(m["units"]), start=1):
        out = m["facts"]["output_bytes"][i - 1]
        print(f"{i:>6}{1000 * f:10.2f}{1000 * b:10.2f}{1000 * (f + b):10.2f}{out:12d}")
    print(
        "\nLink task 0 <-> task 1 (gRPC on 127.0.0.1, one-way, from round trips in a graph loop; "
        f"latency from 4 bytes, bandwidth from {m['link_sizes']['large'] >> 20} MiB):"
    )
    for n, link in p["link"].items():
        print(
            f"  worker inter-op {n}: latency {1e6 * link['latency_s']:.0f} us, bandwidth "
            f"{link['bandwidth_Bps'] / 1e9:.2f} GB/s; a_i of {link['activation_bytes']} bytes: "
            f"measured {1e3 * link['activation_measured_s']:.2f} ms, latency + bytes / bw = "
            f"{1e3 * link['activation_predicted_s']:.2f} ms"
        )
    print(
        "\nb, c. ms per clip (one update), measured (median and fastest of the repeats) vs "
        "simulator; error = predicted / median - 1"
    )
    print(f"{'setting':62}{'mode':10}{'median':>8}{'fastest':>9}{'predicted':>11}{'error':>8}")
    for row in p["rows"]:
        tags = [""] if "predicted_ms" in row else ["_overlap", "_serial"]
        for tag in tags:
            label = (
                row["setting"] + {"": "", "_overlap": ", overlap", "_serial": ", no overlap"}[tag]
            )
            print(
                f"{label:62}{row['mode']:10}{row['measured_ms']:8.0f}{row['measured_min_ms']:9.0f}"
                f"{row['predicted_ms' + tag]:11.0f}{100 * row['error' + tag]:+7.0f}%"
            )
    c = m["clips_ms"]
    pred = {r["key"]: r.get("predicted_ms", r.get("predicted_ms_overlap")) for r in p["rows"]}
    print("\nSideways speed-up over the same engine at inter-op 1 in one process:")
    for key in ("local2", "cluster1", "cluster2"):
        print(
            f"  {key:9}: measured {c['local1/sideways'] / c[key + '/sideways']:.2f}x, predicted "
            f"{pred['local1/sideways'] / pred[key + '/sideways']:.2f}x"
        )


# -- d. Projection --------------------------------------------------------------------------


def _model_builders():
    """name -> (batch_size, frame_shape, task, topology) -> Pipeline: the README's models."""
    from sideways_tf import models
    from sideways_tf.models import convnet

    def conv(**kw):
        return lambda **a: convnet.conv_pipeline(**kw, **a)

    return {
        "conv_small": conv(widths=(16, 32, 32, 64), strides=(1, 2, 1, 2), fusion="concat"),
        "conv8": conv(widths=(64, 64, 128, 128, 256, 256, 512, 512), strides=(1, 2) * 4),
        "vgg8": models.vgg8,
        "resnet18": models.resnet18,
    }


def _parse_links(text: str) -> dict:
    """'ici=100:5,pcie=25:10' -> {name: (bytes/s, latency s)}."""
    links = {}
    for item in text.split(","):
        name, spec = item.split("=")
        gbps, us = spec.split(":")
        links[name] = (float(gbps) * 1e9, float(us) * 1e-6)
    return links


def project(args) -> dict:
    """Predictions for D x R accelerators, D * R in {8, 32}, from FLOPs and an assumed device."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from sideways_tf import costs as costs_lib
    from sideways_tf import placement, tasks

    flops = args.peak_tflops * 1e12 * args.mfu
    links = _parse_links(args.links)
    rows = []
    for model, build in _model_builders().items():
        per_topology = {}
        for topology in ("chain", "skip(2)"):
            pipeline = build(
                batch_size=args.proj_batch,
                frame_shape=(args.proj_size, args.proj_size, 3),
                task=tasks.Classification(num_classes=args.proj_classes),
                topology=topology,
            )
            per_topology[topology] = (
                costs_lib.unit_costs(pipeline),
                [(e.source, e.receiver) for e in pipeline.topology.edges],
            )
        num_units = pipeline.num_units
        for total in (8, 32):
            for d in (d for d in (1, 2, 4, 8, 16, 32) if d <= num_units and total % d == 0):
                for link, (bw, lat) in links.items():
                    machine = {
                        "replicas": total // d,
                        "link_bandwidth": bw,
                        "link_latency": lat,
                        "allreduce_bandwidth": args.allreduce_gbps * 1e9
                        if args.allreduce_gbps
                        else bw,
                    }
                    row = {"model": model, "link": link, "D": d, "R": total // d}
                    for topology, schedules in (
                        ("chain", ("frame_bp", "gpipe", "sideways")),
                        ("skip(2)", ("skip_sideways",)),
                    ):
                        unit_costs, edges = per_topology[topology]
                        cores = placement.balance([c.flops for c in unit_costs], d)
                        s = sim.from_costs(
                            unit_costs,
                            flops,
                            edges,
                            args.proj_batch,
                            args.proj_frames,
                            cores,
                            **machine,
                        )
                        for name in schedules:
                            pred = sim.SCHEDULES[name](s)
                            row[name] = pred._asdict()
                        if topology == "chain":
                            best = dataclasses.replace(s, cores=sim.best_cut(s, d))
                            row["sideways_best_cut"] = sim.sideways(best)._asdict()
                            row["best_cut"] = list(best.cores)
                            row["cores"] = cores
                    rows.append(row)
    # The data-parallel frame_bp baseline: D = 1, R = N, same link.
    for row in rows:
        dp = next(
            r
            for r in rows
            if r["model"] == row["model"]
            and r["link"] == row["link"]
            and r["D"] == 1
            and r["R"] == row["D"] * row["R"]
        )
        fps = row["sideways"]["frames_per_second"]
        row["speedup_vs_frame_bp"] = fps / row["frame_bp"]["frames_per_second"]
        row["speedup_vs_data_parallel"] = fps / dp["frame_bp"]["frames_per_second"]
    return {"rows": rows, "flops_per_second": flops, "links": links}


def report_projection(args, proj: dict, command: str):
    flops = proj["flops_per_second"]
    assumptions = (
        f"Assumed: {args.peak_tflops:g} TFLOP/s peak per accelerator core at {args.mfu:.0%} "
        f"utilisation = {flops / 1e12:g} TFLOP/s sustained (a TPU v4-class core), for forward "
        f"and VJP alike; FLOPs from sideways_tf.costs.unit_costs; float32 activations and "
        f"messages; links (bandwidth per direction, latency per transfer): "
        + ", ".join(
            f"{n} {bw / 1e9:g} GB/s + {lat * 1e6:g} us" for n, (bw, lat) in proj["links"].items()
        )
        + f"; all-reduce bandwidth {'= link' if not args.allreduce_gbps else f'{args.allreduce_gbps:g} GB/s'}"
        f", ring, not overlapped; transfers overlap compute (gpipe, sideways). "
        f"Frames {args.proj_size}x{args.proj_size}x3, B={args.proj_batch} clips per replica, "
        f"K={args.proj_frames}, {args.proj_classes} classes. Placement: placement.balance on f + b "
        f"(best cut: the contiguous cut fastest for sideways, links included). The D=1 "
        f"baseline is plain data parallelism: N = D x R replicas, a D times larger global batch. "
        f"No per-step launch or dispatch overhead is modelled."
    )
    print(
        "\nd. Projection: ms per clip (one update) and frames/s; sideways x = frames/s over frame_bp"
    )
    print(assumptions)
    head = (
        f"{'model':11}{'link':7}{'DxR':>6}{'frame_bp':>10}{'gpipe':>9}{'sideways':>10}"
        f"{'skip_sw':>9}{'best cut':>10}   {'frame_bp':>9}{'gpipe':>9}{'sideways':>10}"
        f"{'util':>6}{'x same':>8}{'x D=1':>7}"
    )
    print(head + "\n" + " " * 24 + "ms per clip" + " " * 37 + "frames/s")
    for r in proj["rows"]:
        ms = [
            1000 * r[k]["clip_time"]
            for k in ("frame_bp", "gpipe", "sideways", "skip_sideways", "sideways_best_cut")
        ]
        fps = [r[k]["frames_per_second"] for k in ("frame_bp", "gpipe", "sideways")]
        print(
            f"{r['model']:11}{r['link']:7}{str(r['D']) + 'x' + str(r['R']):>6}"
            f"{ms[0]:10.2f}{ms[1]:9.2f}{ms[2]:10.2f}{ms[3]:9.2f}{ms[4]:10.2f}   "
            f"{fps[0]:9.0f}{fps[1]:9.0f}{fps[2]:10.0f}{r['sideways']['utilisation']:6.2f}"
            f"{r['speedup_vs_frame_bp']:8.2f}{r['speedup_vs_data_parallel']:7.2f}"
        )
    link = args.readme_link
    print(f"\nMarkdown (link {link}):\n")
    print(f"`{command}`\n")
    print(assumptions + "\n")
    print(
        "| model | D x R | frame_bp frames/s | gpipe frames/s | sideways frames/s | "
        "skip_sideways frames/s | sideways ms/clip | sideways / frame_bp (same D x R) | "
        "sideways / frame_bp (D=1, data parallel) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in proj["rows"]:
        if r["link"] != link:
            continue
        print(
            f"| {r['model']} | {r['D']} x {r['R']} | {r['frame_bp']['frames_per_second']:.0f} | "
            f"{r['gpipe']['frames_per_second']:.0f} | {r['sideways']['frames_per_second']:.0f} | "
            f"{r['skip_sideways']['frames_per_second']:.0f} | "
            f"{1000 * r['sideways']['clip_time']:.2f} | {r['speedup_vs_frame_bp']:.2f}x | "
            f"{r['speedup_vs_data_parallel']:.2f}x |"
        )


# == CLI ==================================================================================


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    parser.add_argument("--channels", type=int, default=96, help="width of every unit (a-c)")
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--frame_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16, help="clip length K (a-c)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--unit_repeats", type=int, default=5, help="unit timings per round")
    parser.add_argument("--skip_measure", action="store_true", help="projection only")
    parser.add_argument("--peak_tflops", type=float, default=100.0)
    parser.add_argument("--mfu", type=float, default=0.4, help="sustained share of peak")
    parser.add_argument(
        "--links", default="ici=100:5,nvlink=300:5,pcie=25:10", help="name=GB/s:us,..."
    )
    parser.add_argument("--readme_link", default="ici", help="link of the markdown table")
    parser.add_argument("--allreduce_gbps", type=float, default=None, help="default: the link's")
    parser.add_argument("--proj_size", type=int, default=112)
    parser.add_argument("--proj_batch", type=int, default=8, help="B per replica (projection)")
    parser.add_argument("--proj_frames", type=int, default=32, help="K (projection)")
    parser.add_argument("--proj_classes", type=int, default=51)
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inter_op", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--task", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cores", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and args.role is None:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.role:
        {"local": local_child, "server": server_child, "client": client_child}[args.role](args)
        return
    command = "python benchmarks/simulate.py " + " ".join(sys.argv[1:])
    out = {"command": command, "settings": vars(args)}
    if not args.skip_measure:
        with tempfile.TemporaryDirectory(prefix="simulate_") as logdir:
            m = measure(args, logdir)
        p = predict(args, m)
        report_measured(args, m, p)
        out.update(measured=m, predicted=p)
    proj = project(args)
    report_projection(args, proj, command.strip())
    out["projection"] = proj
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
