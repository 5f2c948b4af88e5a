"""Megatron's indexed dataset format (MMIDIDX, version 1), written and read
from the format's description, independently of weft's C++ reader:

  PREFIX.idx: b"MMIDIDX\\x00\\x00", <Q version (1), <B dtype code,
              <Q sequence count S, <Q document-index count D,
              int32 lengths[S], int64 byte pointers into PREFIX.bin[S],
              int64 document index[D] (0, ..., S: sequences of document d are
              [index[d], index[d+1]))
  PREFIX.bin: the token ids of every sequence, back to back, in the dtype.
"""
import struct

# Megatron's dtype codes as struct format letters (little-endian).
DTYPES = {1: "B", 2: "b", 3: "h", 4: "i", 5: "q", 6: "d", 7: "f", 8: "H"}
NAMES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64", 7: "float32", 8: "uint16"}
MAGIC = b"MMIDIDX\x00\x00"


def dtype_for_vocab(vocab_size):
    """preprocess_data.py's choice: uint16 below 65500 tokens, else int32."""
    return 8 if vocab_size < 65500 else 4


def write(prefix, documents, code):
    """documents: list of documents, each a list of sequences (lists of ids)."""
    fmt = DTYPES[code]
    lengths, pointers, doc_index = [], [], [0]
    offset = 0
    with open(prefix + ".bin", "wb") as f:
        for doc in documents:
            for seq in doc:
                data = struct.pack(f"<{len(seq)}{fmt}", *seq)
                f.write(data)
                lengths.append(len(seq))
                pointers.append(offset)
                offset += len(data)
            doc_index.append(len(lengths))
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_index)))
        f.write(struct.pack(f"<{len(lengths)}i", *lengths))
        f.write(struct.pack(f"<{len(pointers)}q", *pointers))
        f.write(struct.pack(f"<{len(doc_index)}q", *doc_index))


def read(prefix):
    """(dtype code, documents as lists of sequences of ints)."""
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    assert idx[:9] == MAGIC, "magic"
    (version,) = struct.unpack_from("<Q", idx, 9)
    assert version == 1, "version"
    code = idx[17]
    s, d = struct.unpack_from("<QQ", idx, 18)
    at = 34
    lengths = struct.unpack_from(f"<{s}i", idx, at)
    pointers = struct.unpack_from(f"<{s}q", idx, at + 4 * s)
    doc_index = struct.unpack_from(f"<{d}q", idx, at + 12 * s)
    with open(prefix + ".bin", "rb") as f:
        data = f.read()
    fmt = DTYPES[code]
    seqs = [[int(v) for v in struct.unpack_from(f"<{n}{fmt}", data, p)] for p, n in zip(pointers, lengths)]
    docs = [seqs[doc_index[k]:doc_index[k + 1]] for k in range(d - 1)]
    return code, docs


def split_bounds(weights, documents):
    """Megatron's document split: round(w * n) per part, the excess taken off every bound but the first."""
    total = float(sum(weights))
    weights = [w / total for w in weights] + [0.0] * (3 - len(weights))
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w * float(documents))))
    diff = bounds[-1] - documents
    return [bounds[0]] + [b - diff for b in bounds[1:]]
