"""Observability end to end through the weft executable: the tensorboard sink
read back by a reader written here from the format description (not weft's),
before and after a resume; MFU against a hand computation; the step time
breakdown; `weft plot` parsed as XML; bad input refused with exit 2.

usage: test_observability.py WEFT SOURCE_ROOT
"""
import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

WEFT, SRC = sys.argv[1], sys.argv[2]
RECIPE = os.path.join(SRC, "examples", "gpt-tiny.toml")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def weft(*args):
    return subprocess.run([WEFT, *args], capture_output=True, text=True, timeout=600)


# ---- an event-file reader from the format description -------------------
# Record: uint64 length, uint32 masked CRC-32C of the length bytes, data,
# uint32 masked CRC-32C of the data. CRC-32C = reflected CRC with polynomial
# 0x82F63B78; mask = rotate right 15, add 0xa282ead8.
def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def fields(buf):
    """(field number, wire type, value) of a protobuf message."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wire)
        yield num, wire, v


def read_events(folder):
    """step -> {tag: float}; asserts no step appears twice."""
    out = {}
    files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    check(len(files) >= 1, "an event file in " + os.path.basename(folder))
    for path in files:
        data = open(path, "rb").read()
        i = 0
        first = True
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            (len_crc,) = struct.unpack("<I", data[i + 8:i + 12])
            assert len_crc == masked(crc32c(data[i:i + 8])), "length CRC"
            payload = data[i + 12:i + 12 + length]
            (data_crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
            assert data_crc == masked(crc32c(payload)), "data CRC"
            i += 16 + length
            step, scalars, version = 0, None, None
            for num, wire, v in fields(payload):
                if num == 2:
                    step = v
                elif num == 3:
                    version = v.decode()
                elif num == 5:
                    scalars = {}
                    for _, _, value in fields(v):
                        tag, x = None, None
                        for n2, w2, v2 in fields(value):
                            if n2 == 1:
                                tag = v2.decode()
                            elif n2 == 2 and w2 == 5:
                                (x,) = struct.unpack("<f", v2)
                        scalars[tag] = x
            if first:
                check(version == "brain.Event:2", "the file starts with file_version brain.Event:2")
                first = False
            if scalars is not None:
                assert step not in out, "step %d twice" % step
                out[step] = scalars
    return out


def read_metrics(run):
    return {r["step"]: r for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))}


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def events_equal_metrics(run, what):
    events, metrics = read_events(os.path.join(run, "tensorboard")), read_metrics(run)
    check(sorted(events) == sorted(metrics), what + ": event steps %s = metrics.jsonl steps" % sorted(events))
    bad = []
    for step, rec in metrics.items():
        ev = events.get(step, {})
        for key, value in rec.items():
            if key == "step":
                continue
            got = ev.get(key)
            want = float("nan") if value is None else f32(float(value))
            if got is None or not (got == want or (math.isnan(got) and math.isnan(want))):
                bad.append((step, key, value, got))
        if set(ev) != set(rec) - {"step"}:
            bad.append((step, "tags", sorted(ev), sorted(rec)))
    check(not bad, what + ": every scalar of every step equals metrics.jsonl " + str(bad[:3]))


tmp = tempfile.mkdtemp(prefix="weft-observe-")
try:
    run = os.path.join(tmp, "a")
    common = ["--set", "log.interval=1", "--set", "checkpoint.interval=3",
              "--set", "log.sinks=[console, jsonl, tensorboard]", "--set", "backend.peak_tflops=0.5"]
    r = weft("train", RECIPE, "--set", "run.steps=6", "--set", "run.out_dir=" + run, *common)
    check(r.returncode == 0, "train 6 steps with the tensorboard sink: " + r.stderr[-300:])
    events_equal_metrics(run, "fresh run")

    # Resume from step 3 of the finished run: steps 4..6 are the abandoned
    # branch; after the resume every step 1..8 appears exactly once.
    r = weft("train", RECIPE, "--resume=" + os.path.join(run, "checkpoints", "step_3"), "--set", "run.steps=8",
             "--set", "run.out_dir=" + run, "--override-schedule", *common)
    check(r.returncode == 0, "resume from step 3 to step 8: " + r.stderr[-300:])
    events_equal_metrics(run, "resumed run")
    check(sorted(read_metrics(run)) == list(range(1, 9)), "metrics.jsonl holds steps 1..8 once")

    # Resumed with a coarser log interval: the abandoned step 4 must go although the first new record is step 5.
    runb = os.path.join(tmp, "b")
    r = weft("train", RECIPE, "--set", "run.steps=6", "--set", "run.out_dir=" + runb, *common)
    r = weft("train", RECIPE, "--resume=" + os.path.join(runb, "checkpoints", "step_3"), "--set", "run.steps=8",
             "--set", "run.out_dir=" + runb, "--override-schedule", *common, "--set", "log.interval=5")
    check(r.returncode == 0 and sorted(read_metrics(runb)) == [1, 2, 3, 5, 8], "resume at log.interval 5")
    events_equal_metrics(runb, "resumed at log.interval 5")

    # MFU by hand: gpt-tiny is L=4, C=128, T=64, byte vocabulary 257 padded to 320.
    L, C, T, Vp = 4, 128, 64, 320
    params = Vp * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    flops_per_token = 6 * (params - T * C) + 6 * L * T * C  # 6N (no wpe lookup) + causal attention
    check(flops_per_token == 5202432, "gpt-tiny FLOPs per token = 5202432")
    for step, rec in read_metrics(run).items():
        want = rec["tokens_per_s"] * flops_per_token / 0.5e12
        if abs(rec["mfu"] - want) > 1e-12 * want:
            check(False, "step %d mfu %r = %r" % (step, rec["mfu"], want))
            break
    else:
        check(True, "mfu = tokens_per_s x %d / 0.5 TFLOP/s on every step" % flops_per_token)

    # Two ranks (threads): the same FLOPs over twice the peak.
    run2 = os.path.join(tmp, "dp2")
    r = weft("train", RECIPE, "--set", "run.steps=4", "--set", "parallel.data=2", "--set", "run.out_dir=" + run2,
             "--set", "log.timers=true", *common)
    check(r.returncode == 0, "train on 2 ranks with log.timers")
    rec = read_metrics(run2)[4]
    check(abs(rec["mfu"] - rec["tokens_per_s"] * flops_per_token / (2 * 0.5e12)) <= 1e-12 * rec["mfu"],
          "2 ranks: mfu over 2 x the peak")
    out = r.stdout + r.stderr
    check("min / max over 2 ranks" in out and "time_backward_ms" in out and "time_bubble_ms" in out,
          "log.timers prints a per-rank min/max summary")

    # The breakdown covers the step.
    for rdir in (run, run2):
        for step, rec in read_metrics(rdir).items():
            parts = sum(rec["time_%s_ms" % k] for k in ("forward", "backward", "optimizer", "comm", "bubble"))
            if abs(parts - rec["step_ms"]) > 0.1 * rec["step_ms"]:
                check(False, "%s step %d: breakdown %.3f ms vs step_ms %.3f" % (rdir, step, parts, rec["step_ms"]))
                break
            if rec["time_forward_ms"] <= 0 or rec["time_backward_ms"] <= 0:
                check(False, "forward and backward take time")
                break
        else:
            check(True, os.path.basename(rdir) + ": time_*_ms sum to within 10% of step_ms on every step")

    # A pipeline of 2 stages waits on its neighbour: a bubble shows.
    run3 = os.path.join(tmp, "pp2")
    r = weft("train", RECIPE, "--set", "run.steps=2", "--set", "parallel.pipeline=2", "--set",
             "run.out_dir=" + run3, *common)
    check(r.returncode == 0 and read_metrics(run3)[2]["time_bubble_ms"] > 0, "pipeline 2: time_bubble_ms > 0")

    # weft plot: two runs, both series in every panel that has data.
    svg = os.path.join(tmp, "cmp.svg")
    r = weft("plot", run, run2, "-o", svg)
    check(r.returncode == 0, "weft plot two runs: " + r.stderr)
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.iter(ns + "polyline")
    seen = {(p.get("data-run"), p.get("data-metric")) for p in lines}
    for metric in ("loss", "lr", "grad_norm", "tokens_per_s"):
        check(("a", metric) in seen and ("dp2", metric) in seen, "svg has both runs' " + metric)
    legend = [t.text for t in root.iter(ns + "text")]
    check("a" in legend and "dp2" in legend, "the legend names both runs")
    n_points = {p.get("data-run"): len(p.get("points").split())
                for p in root.iter(ns + "polyline") if p.get("data-metric") == "loss"}
    check(n_points == {"a": 8, "dp2": 4}, "loss lines have one point per logged step %s" % n_points)

    if shutil.which("rsvg-convert"):
        png = os.path.join(tmp, "cmp.png")
        r = weft("plot", run, run2, "-o", png)
        check(r.returncode == 0 and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", "weft plot -o x.png writes a PNG")

    # Bad input: exit 2 and the path (and line).
    empty = os.path.join(tmp, "empty")
    os.makedirs(empty)
    r = weft("plot", empty, "-o", svg)
    check(r.returncode == 2 and os.path.join(empty, "metrics.jsonl") in r.stderr, "plot: folder without metrics.jsonl")
    bad = os.path.join(tmp, "bad")
    os.makedirs(bad)
    with open(os.path.join(bad, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    r = weft("plot", bad, "-o", svg)
    check(r.returncode == 2 and "metrics.jsonl:2:" in r.stderr, "plot: malformed line named: " + r.stderr.strip())
    r = weft("plot", run, "-o", os.path.join(tmp, "no", "such", "dir", "x.svg"))
    check(r.returncode == 2 and "x.svg" in r.stderr, "plot: unwritable output named")
    blocked = os.path.join(tmp, "blocked")
    os.makedirs(blocked)
    open(os.path.join(blocked, "tensorboard"), "w").close()  # a file where the folder goes
    r = weft("train", RECIPE, "--set", "run.steps=1", "--set", "run.out_dir=" + blocked, *common)
    check(r.returncode == 2 and os.path.join(blocked, "tensorboard") in r.stderr
          and len(r.stderr.strip().splitlines()) == 1, "train: unwritable tensorboard folder: " + r.stderr.strip())
finally:
    shutil.rmtree(tmp, ignore_errors=True)

print("%d failures" % len(failures))
sys.exit(1 if failures else 0)
