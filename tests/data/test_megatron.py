"""The megatron dataset plugin, `weft data` and `weft preprocess` against an
independent writer and reader of Megatron's indexed format (mmidx.py).

usage: test_megatron.py WEFT_EXE
"""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmidx  # noqa: E402

WEFT = sys.argv[1]
FAILED = []
ENV = {k: v for k, v in os.environ.items() if k not in ("WEFT_PLUGIN_PATH", "OMPI_COMM_WORLD_SIZE")}


def check(name, ok, detail=""):
    print(("ok: " if ok else "FAIL: ") + name + ("" if ok else "  " + detail))
    if not ok:
        FAILED.append(name)


def weft(*args, timeout=120):
    return subprocess.run([WEFT, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def recipe(folder, paths, seq_length, vocab=0, split="1,0,0", part="train", name="r.toml"):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f"""[run]
steps = 2
out_dir = "{folder}/run"
[model]
plugin = "gpt"
layers = 1
hidden = 32
heads = 2
seq_length = {seq_length}
vocab_size = {vocab}
[tokenizer]
plugin = "byte"
[data]
plugin = "megatron"
paths = {paths if isinstance(paths, str) else json.dumps(paths)}
split = "{split}"
part = "{part}"
[batch]
micro = 1
global = 1
""")
    return path


def samples(recipe_path, indices, *extra):
    args = ["data", recipe_path, "--json", *extra]
    if indices:
        args += ["--sample", *[str(i) for i in indices]]
    r = weft(*args)
    if r.returncode != 0:
        raise RuntimeError(f"weft data exit {r.returncode}: {r.stderr.strip()}")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    return lines[0], [x["ids"] for x in lines[1:]]


def unique_documents(rng, count, first_id, empty_every=0):
    """Documents of distinct ids (each id once over all documents), some of
    several sequences, some empty (no sequence)."""
    docs, next_id = [], first_id
    for d in range(count):
        if empty_every and d % empty_every == empty_every - 1:
            docs.append([])
            continue
        seqs = []
        for _ in range(rng.choice([1, 1, 1, 2])):
            n = rng.randint(1, 40)
            seqs.append(list(range(next_id, next_id + n)))
            next_id += n
        docs.append(seqs)
    return docs, next_id


def retile(windows, seq_length):
    """The token stream an epoch's windows tile (consecutive windows share one
    token): starts at the window whose first token ends no other window."""
    by_first = {w[0]: w for w in windows}
    lasts = {w[-1] for w in windows}
    heads = [w for w in windows if w[0] not in lasts]
    if len(heads) != 1 or len(by_first) != len(windows):
        return None
    stream, w = list(heads[0]), heads[0]
    for _ in range(len(windows) - 1):
        w = by_first.get(w[-1])
        if w is None or len(w) != seq_length + 1:
            return None
        stream += w[1:]
    return stream


def stream_is_documents(stream, docs):
    """The stream is whole documents (their sequences concatenated) back to
    back, each at most once, the last one possibly cut short."""
    flat = {tuple(sum(d, []))[0]: sum(d, []) for d in docs if d}
    at, used = 0, set()
    while at < len(stream):
        doc = flat.get(stream[at])
        if doc is None or stream[at] in used:
            return False
        used.add(stream[at])
        piece = stream[at:at + len(doc)]
        if piece != doc[:len(piece)]:
            return False
        at += len(doc)
    return True


def test_dtypes(tmp):
    """Every dtype code reads back: an epoch's windows tile whole documents."""
    rng = random.Random(7)
    for code in range(1, 9):
        limit = 120 if code in (1, 2) else 3000
        docs, n = unique_documents(rng, 200, 0, empty_every=9)
        while n > limit:  # fit the dtype's range
            docs.pop()
            n = sum(len(s) for d in docs for s in d)
        prefix = os.path.join(tmp, f"codes{code}")
        mmidx.write(prefix, docs, code)
        T = 8
        r = recipe(tmp, [prefix], T, vocab=4096, name=f"c{code}.toml")
        head, _ = samples(r, [])
        S = head["samples"]
        _, windows = samples(r, list(range(S)))
        stream = retile(windows, T)
        ok = (stream is not None and head["tokens"] == n and S == (n - 1) // T and len(stream) == S * T + 1
              and stream_is_documents(stream, docs) and head["documents"] == len(docs))
        check(f"dtype code {code} ({mmidx.NAMES[code]}): {len(docs)} documents, {n} tokens, "
              f"{S} samples tile whole documents", ok, f"head {head}")


def test_epochs_and_seed(tmp):
    rng = random.Random(3)
    docs, n = unique_documents(rng, 100, 0)
    prefix = os.path.join(tmp, "epochs")
    mmidx.write(prefix, docs, 8)
    r = recipe(tmp, [prefix], 16, vocab=4096, name="e.toml")
    head, _ = samples(r, [])
    S = head["samples"]
    _, first = samples(r, list(range(S)))
    _, second = samples(r, list(range(S, 2 * S)))
    s2 = retile(second, 16)
    check(f"epoch 2 ({S} samples) reshuffles and still tiles whole documents",
          s2 is not None and stream_is_documents(s2, docs) and second != first)
    _, again = samples(r, list(range(S)))
    _, other = samples(r, list(range(S)), "--set", "run.seed=99")
    check("the order repeats with the seed and changes with another", again == first and other != first)


def test_split_and_blend(tmp):
    rng = random.Random(11)
    docs, n = unique_documents(rng, 90, 0)
    prefix = os.path.join(tmp, "split")
    mmidx.write(prefix, docs, 4)
    bounds = mmidx.split_bounds([6, 3, 1], len(docs))
    all_ok = True
    for k, part in enumerate(["train", "valid", "test"]):
        mine = docs[bounds[k]:bounds[k + 1]]
        r = recipe(tmp, [prefix], 4, vocab=4096, split="6,3,1", part=part, name=f"s{part}.toml")
        head, _ = samples(r, [])
        _, windows = samples(r, list(range(head["samples"])))
        stream = retile(windows, 4)
        expect_tokens = sum(len(s) for d in mine for s in d)
        ok = (stream is not None and stream_is_documents(stream, mine) and head["tokens"] == expect_tokens
              and head["documents"] == len(mine))
        all_ok = all_ok and ok
    check(f"split 6,3,1 over {len(docs)} documents: parts {bounds} hold exactly their documents", all_ok)

    other, _ = unique_documents(rng, 90, 10000)
    prefix_b = os.path.join(tmp, "blend_b")
    mmidx.write(prefix_b, other, 8)
    r = recipe(tmp, ["0.25", prefix, "0.75", prefix_b], 4, vocab=16384, name="blend.toml")
    head, _ = samples(r, [])
    count = 400
    _, windows = samples(r, list(range(count)))
    from_b = sum(1 for w in windows if w[0] >= 10000)
    check(f"blend 0.25/0.75: {from_b} of the first {count} samples from the second prefix",
          abs(from_b - 0.75 * count) <= 2, f"got {from_b}")

    # The blend as a TOML table { prefix = weight }: the list of the same pairs in the file's order.
    a, b = json.dumps(prefix), json.dumps(prefix_b)
    by_order = []
    for order, table, pairs in (("a, b", f"{{ {a} = 0.25, {b} = 0.75 }}", ["0.25", prefix, "0.75", prefix_b]),
                                ("b, a", f"{{ {b} = 0.75, {a} = 0.25 }}", ["0.75", prefix_b, "0.25", prefix])):
        _, from_table = samples(recipe(tmp, table, 4, vocab=16384, name="blend_table.toml"), list(range(count)))
        _, from_list = samples(recipe(tmp, pairs, 4, vocab=16384, name="blend_list.toml"), list(range(count)))
        check(f"blend as a table ({order}): the same {count} samples as the list of its pairs in that order",
              from_table == from_list)
        by_order.append(from_table)
    check("a blend table's order is kept (the two orders give different samples)", by_order[0] != by_order[1])
    # Integer weights, and the table as its own [data.paths] section.
    path = recipe(tmp, f"{{ {a} = 1, {b} = 3 }}", 4, vocab=16384, name="blend_int.toml")
    _, from_int = samples(path, list(range(count)))
    with open(path) as f:
        text = f.read().replace(f"paths = {{ {a} = 1, {b} = 3 }}\n", "")
    with open(path, "w") as f:
        f.write(text + f"[data.paths]\n{a} = 1\n{b} = 3\n")
    _, from_section = samples(path, list(range(count)))
    from_b = sum(1 for w in from_int if w[0] >= 10000)
    check(f"blend table with weights 1 and 3: {from_b} of {count} samples from the second prefix, the same "
          "from a [data.paths] section", abs(from_b - 0.75 * count) <= 2 and from_section == from_int)
    for what, weight, needle in (("a string weight", '"0.3"', "found a string"),
                                 ("a negative weight", "-0.3", "found -0.3")):
        path = recipe(tmp, f"{{ {a} = 0.7, {b} = {weight} }}", 4, vocab=16384, name="blend_bad.toml")
        res = weft("data", path)
        lines = res.stderr.strip().splitlines()
        where = f"blend_bad.toml:15:{len('paths = { ' + a + ' = 0.7, ' + b + ' = ') + 1}: data.paths[{b}]"
        check(f"blend table refuses {what}, naming file:line:col and the key",
              res.returncode == 2 and len(lines) == 1 and where in lines[0] and needle in lines[0],
              f"exit {res.returncode}: {res.stderr.strip()[:300]}")


def expect_refusal(tmp, name, prefix, needle, sample=False, vocab=0):
    r = recipe(tmp, [prefix], 4, vocab=vocab, name="bad.toml")
    res = weft("data", r, *(["--sample", "0", "1", "2", "3"] if sample else []))
    lines = res.stderr.strip().splitlines()
    ok = res.returncode == 2 and len(lines) == 1 and needle in lines[0] and "offset" in lines[0]
    check(f"refused: {name}", ok, f"exit {res.returncode}, stderr {res.stderr.strip()[:300]!r}")


def test_malformed(tmp):
    docs = [[[1, 2, 3, 4, 5]], [[6, 7, 8]], [[9, 10, 11, 12]]]
    good = os.path.join(tmp, "good")
    mmidx.write(good, docs, 8)
    idx = open(good + ".idx", "rb").read()
    binary = open(good + ".bin", "rb").read()
    s, d = 3, 4

    def variant(name, new_idx=None, new_bin=None):
        p = os.path.join(tmp, name)
        open(p + ".idx", "wb").write(idx if new_idx is None else new_idx)
        open(p + ".bin", "wb").write(binary if new_bin is None else new_bin)
        return p

    def patch(at, fmt, value):
        b = bytearray(idx)
        struct.pack_into(fmt, b, at, value)
        return bytes(b)

    lengths_at, pointers_at, docs_at = 34, 34 + 4 * s, 34 + 12 * s
    expect_refusal(tmp, "wrong magic", variant("magic", b"XXIDIDX\0\0" + idx[9:]), "wrong magic")
    expect_refusal(tmp, "version 2", variant("version", patch(9, "<Q", 2)), "version 2")
    for code in (0, 9, 255):
        expect_refusal(tmp, f"dtype code {code}", variant(f"dtype{code}", patch(17, "<B", code)),
                       f"unknown dtype code {code}")
    for cut in (0, 20, 33, lengths_at + 5, pointers_at + 3, docs_at + 8, len(idx) - 1):
        expect_refusal(tmp, f".idx truncated to {cut} bytes", variant(f"cut{cut}", idx[:cut]), "idx")
    expect_refusal(tmp, "sequence count 2^60", variant("hugecount", patch(18, "<Q", 1 << 60)), "sequence count")
    expect_refusal(tmp, "pointer past the .bin", variant("ptr", patch(pointers_at + 8, "<q", 10 ** 6)), "past the end")
    expect_refusal(tmp, "negative pointer", variant("negptr", patch(pointers_at + 8, "<q", -4)), "past the end")
    expect_refusal(tmp, "length past the .bin", variant("len", patch(lengths_at + 8, "<i", 1000)), "past the end")
    expect_refusal(tmp, "negative length", variant("neglen", patch(lengths_at, "<i", -1)), "negative length")
    expect_refusal(tmp, ".bin truncated", variant("bincut", new_bin=binary[:-3]), "past the end")
    expect_refusal(tmp, "document index not monotone", variant("mono", patch(docs_at + 16, "<q", 0)), "not monotone")
    expect_refusal(tmp, "document index not starting at 0", variant("start", patch(docs_at, "<q", 1)), "not 0")
    expect_refusal(tmp, "document index past the sequences", variant("past", patch(docs_at + 24, "<q", 9)), "past the")
    expect_refusal(tmp, "document index ending early", variant("early", patch(docs_at + 24, "<q", 2)), "ends at")
    big = os.path.join(tmp, "bigid")
    mmidx.write(big, [[[1, 2, 3, 4, 5]], [[6, 7, 1000, 8]], [[9, 10, 11, 12]]], 8)
    expect_refusal(tmp, "token id past the vocabulary", big, "token id 1000 is outside the vocabulary", sample=True)

    # Not files at all: a folder and a FIFO in place of the .idx answer at once.
    folder = os.path.join(tmp, "folder")
    os.mkdir(folder + ".idx")
    open(folder + ".bin", "wb").write(binary)
    r = recipe(tmp, [folder], 4, vocab=4096, name="bad.toml")
    res = weft("data", r)
    check("refused: a folder as .idx", res.returncode == 2 and "folder.idx" in res.stderr, res.stderr)
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo + ".idx")
    open(fifo + ".bin", "wb").write(binary)
    r = recipe(tmp, [fifo], 4, vocab=4096, name="bad.toml")
    res = weft("data", r, timeout=30)
    check("refused: a FIFO as .idx (no hang)", res.returncode == 2 and "FIFO" in res.stderr, res.stderr)
    r = recipe(tmp, [os.path.join(tmp, "missing")], 4, vocab=4096, name="bad.toml")
    res = weft("data", r)
    check("refused: a missing prefix", res.returncode == 2 and "missing.idx" in res.stderr, res.stderr)


def test_preprocess(tmp):
    texts = ["Hello, world!", "", "naïve café — 日本語 😀", "  whitespace\n\nruns\t\t ", "x" * 5000,
             "contractions: don't we'll I'm", "digits 1234567890"]
    rng = random.Random(5)
    for _ in range(300):
        texts.append(" ".join(rng.choice(["alpha", "beta", "γάμμα", "дельта", "42", "\n"]) for _ in range(rng.randint(0, 60))))
    src = os.path.join(tmp, "corpus.jsonl")
    with open(src, "w") as f:
        for k, t in enumerate(texts):
            f.write(json.dumps({"id": k, "body": t}, ensure_ascii=(k % 2 == 0)) + "\n")
    r = recipe(tmp, ["unused"], 16, name="pre.toml")
    out = os.path.join(tmp, "pre")
    res = weft("preprocess", r, "--input", src, "--output-prefix", out, "--json-key", "body", "--append-eod",
               "--workers", "3")
    if res.returncode != 0:
        check("preprocess runs", False, res.stderr)
        return
    # The byte tokenizer's ids are the UTF-8 bytes; end-of-text is 256 (vocab 257 -> uint16).
    expected = [[list(t.encode()) + [256]] if t else [] for t in texts]
    code, docs = mmidx.read(out)
    check(f"preprocess: {len(texts)} documents, {sum(len(s) for d in expected for s in d)} tokens read back by the "
          f"independent reader (dtype code {code})", code == 8 and docs == expected)
    ref = os.path.join(tmp, "ref")
    mmidx.write(ref, expected, mmidx.dtype_for_vocab(257))
    same = all(open(out + ext, "rb").read() == open(ref + ext, "rb").read() for ext in (".bin", ".idx"))
    check("preprocess: .bin and .idx byte-identical to the independent writer's", same)

    bad = os.path.join(tmp, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"text": "fine"}\n{"text": oops}\n')
    res = weft("preprocess", r, "--input", bad, "--output-prefix", os.path.join(tmp, "bad"))
    lines = res.stderr.strip().splitlines()
    check("preprocess refuses a malformed line naming FILE:LINE", res.returncode == 2 and len(lines) == 1
          and "bad.jsonl:2" in lines[0] and not os.path.exists(os.path.join(tmp, "bad.bin")), res.stderr)


def test_train_with_validation(tmp):
    """The README's path: preprocess the example corpus, train, val_loss logged and falling loss."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")
    recipe_path = os.path.join(src, "gpt-megatron.toml")
    prefix = os.path.join(tmp, "weft-docs")
    r = weft("preprocess", recipe_path, "--input", os.path.join(src, "data", "weft-docs.jsonl"),
             "--output-prefix", prefix, "--append-eod", "--workers", "2")
    check("preprocess the example corpus", r.returncode == 0, r.stderr)
    out = os.path.join(tmp, "run")
    r = weft("train", recipe_path, "--set", f"data.paths={prefix}", "--set", f"run.out_dir={out}",
             "--set", "run.steps=30", "--set", "eval.interval=15", "--set", "log.interval=5", timeout=600)
    if r.returncode != 0:
        check("train with [eval]", False, r.stderr[-500:])
        return
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    val = {x["step"]: x["val_loss"] for x in records if "val_loss" in x}
    losses = [x["loss"] for x in records]
    check(f"train: val_loss at steps {sorted(val)} ({', '.join(f'{v:.3f}' for v in val.values())}), "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}",
          sorted(val) == [15, 30] and val[30] < val[15] and losses[-1] < losses[0] - 0.5
          and "val_loss" in r.stdout + r.stderr)

    synthetic = os.path.join(tmp, "syn.toml")
    with open(synthetic, "w") as f:
        f.write('[model]\nplugin = "gpt"\nseq_length = 16\n[data]\nplugin = "synthetic"\n[eval]\ninterval = 5\n')
    r = weft("check", synthetic)
    check("eval refused for a data plugin without a validation part",
          r.returncode == 2 and "validation part" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr)
    r = weft("check", recipe_path, "--set", f"data.paths={prefix}", "--set", "data.split=1,0,0")
    check("eval refused for an empty validation part", r.returncode == 2 and "valid part" in r.stderr, r.stderr)


def main():
    with tempfile.TemporaryDirectory(prefix="weft-megatron-") as tmp:
        for test in (test_dtypes, test_epochs_and_seed, test_split_and_blend, test_malformed, test_preprocess,
                     test_train_with_validation):
            sub = os.path.join(tmp, test.__name__)
            os.mkdir(sub)
            try:
                test(sub)
            except Exception as e:  # a crash of one test is its failure, the others still run
                check(test.__name__, False, repr(e))
    print(f"{len(FAILED)} failed" if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
