"""The authors' released weights -> a run folder of this project, which the paper script then tests, evaluates,
exports and (where the release holds its discriminators) continues training like any of its own runs.

    python tools/official.py SCRIPT.py WEIGHTS --out RUN [the script's flags, e.g. --data selfie2anime]

    python tools/official.py ugatit.py checkpoint/UGATIT_selfie2anime_lsgan_4resblock_6dis_1_1_10_10_1000_sn_smoothing \
        --out results/s2a_release --data selfie2anime
    python tools/official.py uag.py Trained_models/horse2zebra --out results/uag_release --data horse2zebra
    python tools/official.py attentiongan.py checkpoints/horse2zebra_pretrained --out results/h2z --data horse2zebra
    python tools/official.py camconsistency.py stargan_celeba_128/models/200000-G.ckpt --out results/sg --data celeba

What it reads:
- ugatit.py: the TensorFlow release of taki0112/UGATIT (selfie2anime, 50 and 100 epochs), a V2 checkpoint (its
  prefix, its .index file, or a folder holding it), read with numpy alone: its two generators, for ugatit.py
  --tf_release (deviation 9 there); or a checkpoint of the official PyTorch code (znxlwm/UGATIT-pytorch),
  <dataset>_params_<step>.pt, written by UGATIT.save: the state dicts genA2B, genB2A, disGA, disGB (the global Ds),
  disLA, disLB (the local ones), at the step of the file name.
- uag.py: the trained models of UAG's TensorFlow code (Trained_models/README.md of its repository), a V2 checkpoint:
  the generators and attention nets, for uag.py --tf_release --att_kernels official (deviations 1 and 6 there).
- attentiongan.py: a released model of Ha0Tang/AttentionGAN, the folder checkpoints/<name>_pretrained holding
  latest_net_G_A.pth and latest_net_G_B.pth (or one of those files); D_A and D_B are read when they are there
  (a training run of the official code writes them), else the discriminators start from random weights.
- camconsistency.py: StarGAN's (yunjey/stargan) <iter>-G.ckpt, and the <iter>-D.ckpt beside it when it is there;
  without D the run holds G alone: it tests with --target on the test split, but --input (whose labels D reads),
  Grad-CAM maps, eval and training need D.

The architecture is read off the file's shapes and recorded in the run, so no network flag is needed, now or later
(a network flag that contradicts the file is an error). Keys are renamed by name; a file that does not fit is an
error quoting the keys that differ, a TF variable that no layer takes likewise. RUN/ckpt.pt holds no optimizer state,
so `--resume` continues with fresh Adam moments. The TF releases' discriminators are another architecture than
ours and are not converted: those runs test, evaluate and export. Then, for example:

    python ugatit.py --out results/s2a --phase test --input my_photos     # no dataset needed
    python ugatit.py --out results/s2a --phase eval
    python ugatit.py --out results/s2a --resume --iters 1100000
"""
import argparse
import functools
import glob
import importlib
import math
import os
import re
import struct
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402



def read_weights(path):
    """A file of tensors (a state dict, or a dict of them) read with weights_only=True, 'module.' prefixes dropped."""
    if not os.path.isfile(path):
        raise common.UserError(f"{path}: there is no such file.")
    state = common.load_tensors(path, f"{path} is not a PyTorch weights file")
    if isinstance(state, dict) and "script" in state:
        raise common.UserError(f"{path} is a checkpoint of this project ({state['script']}.py), not of the official "
                               f"code: it needs no conversion; use it with --ckpt {path}.")
    if not isinstance(state, dict) or not all(isinstance(v, (dict, torch.Tensor)) for v in state.values()):
        raise common.UserError(f"{path} is not a state dict (a dict of tensors), the format the official code saves "
                               f"its networks in.")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def rename_keys(state, rules):
    """Each key of a state dict through the (pattern, replacement) rules of re.sub, in order."""
    def rename(key):
        return functools.reduce(lambda k, rule: re.sub(rule[0], rule[1], k), rules, key)
    return {rename(key): value for key, value in state.items()}


# ---------------- U-GAT-IT: UGATIT.save's <dataset>_params_<step>.pt ----------------

# official network -> ours; disGA judges domain A, as our disc_global_a
UGATIT_NETS = {"genA2B": "gen_a2b", "genB2A": "gen_b2a", "disGA": "disc_global_a", "disGB": "disc_global_b",
               "disLA": "disc_local_a", "disLB": "disc_local_b"}
# official key -> ours: (pattern, replacement) applied in order to every key of a network
UGATIT_GEN_KEYS = ((r"^DownBlock\.(\d+)\.conv_block\.", r"encoder.\1.block."),
                   (r"^DownBlock\.", "encoder."),
                   (r"^FC\.", "mlp."),
                   (r"^UpBlock1_(\d+)\.", lambda m: f"res_blocks.{int(m[1]) - 1}."),
                   (r"^UpBlock2\.", "upsample."))
UGATIT_DISC_KEYS = ((r"^model\.", "trunk."),
                    (r"^conv\.", "classifier."),
                    # the legacy torch.nn.utils.spectral_norm's tensors -> the parametrization's
                    (r"\.weight_orig$", ".parametrizations.weight.original"),
                    (r"\.weight_u$", ".parametrizations.weight.0._u"),
                    (r"\.weight_v$", ".parametrizations.weight.0._v"))


def ugatit_release(path):
    """-> (the architecture flags read off the shapes, {our network: its renamed state dict}, the file's step).
    The legacy spectral norm's weight_orig/u/v become the parametrization's original/_u/_v (the same power-iteration
    vectors, so eval outputs equal the official ones). The step comes from the file name (0 when it has none)."""
    params = read_weights(path)
    absent = [k for k in UGATIT_NETS if not isinstance(params.get(k), dict)]
    if absent:
        raise common.UserError(f"{path} is not a checkpoint of the official U-GAT-IT PyTorch code: it lacks the state "
                               f"dicts {', '.join(absent)} (UGATIT.save writes genA2B, genB2A, disGA, disGB, disLA, "
                               f"disLB into <dataset>_params_<step>.pt).")
    gen = params["genA2B"]
    disc = params["disGA"]
    ch = gen["DownBlock.1.weight"].shape[0]
    mlp_in = gen["FC.0.weight"].shape[1]  # the light MLP reads 4ch pooled features, the full one (img/4)^2 x 4ch
    flags = {"ch": ch,
             "n_res": len({k.split(".")[0] for k in gen if k.startswith("UpBlock1_")}),
             "light": mlp_in == 4 * ch,
             "n_dis": sum(k.endswith(".weight_orig") for k in disc if k.startswith("model.")),
             "no_cam": False, "no_gcam": False, "no_dcam": False, "norm": "adalin", "tf_release": False}
    if not flags["light"]:
        flags["img_size"] = 4 * round((mlp_in / (4 * ch)) ** 0.5)
    states = {}
    for theirs, ours in UGATIT_NETS.items():
        rules = UGATIT_GEN_KEYS if ours.startswith("gen") else UGATIT_DISC_KEYS
        states[ours] = rename_keys(params[theirs], rules)
    found = re.search(r"_params_(\d+)\.pt$", os.path.basename(path))
    return flags, states, int(found[1]) if found else 0


# ---------------- AttentionGAN: checkpoints/<name>_pretrained/latest_net_G_A.pth, ... ----------------

# official file name (<epoch>_net_<X>.pth) -> our network; D_A judges domain B (real_B and G_A's fakes)
ATTENTIONGAN_NETS = {"G_A": "gen_a2b", "G_B": "gen_b2a", "D_A": "disc_b", "D_B": "disc_a"}
# ResnetGenerator_our key -> ours; the PatchGAN's keys (model.<i>.weight/bias) are ours already
ATTENTIONGAN_GEN_KEYS = ((r"^conv1\.", "encoder.1."),
                         (r"^conv2\.", "encoder.4."),
                         (r"^conv3\.", "encoder.7."),
                         (r"^resnet_blocks\.(\d+)\.conv1\.", lambda m: f"encoder.{10 + int(m[1])}.block.1."),
                         (r"^resnet_blocks\.(\d+)\.conv2\.", lambda m: f"encoder.{10 + int(m[1])}.block.5."),
                         (r"^deconv1_content\.", "content_decoder.0."),
                         (r"^deconv2_content\.", "content_decoder.3."),
                         (r"^deconv3_content\.", "content_decoder.7."),
                         (r"^deconv1_attention\.", "attention_decoder.0."),
                         (r"^deconv2_attention\.", "attention_decoder.3."),
                         (r"^deconv3_attention\.", "attention_decoder.6."))
NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # InstanceNorm buffers nobody uses


def attentiongan_release(path):
    """-> (flags, states, step 0) of a released model: `path` is its folder (latest_net_*) or one of its G files,
    plain state dicts of networks.ResnetGenerator_our (Scheme II) and of the PatchGANs. InstanceNorm keeps no
    statistics there or here (running_* keys of older files are dropped, as the official loader does)."""
    if os.path.isdir(path):
        prefix = os.path.join(path, "latest_net_")
    elif re.match(r".*net_G_[AB]\.pth$", path):
        prefix = path[:-len("G_A.pth")]
    else:
        raise common.UserError(f"{path}: expected the folder of a released AttentionGAN model "
                               f"(checkpoints/<name>_pretrained, holding latest_net_G_A.pth and latest_net_G_B.pth) "
                               f"or one of those G files.")
    files = {}
    for name in ATTENTIONGAN_NETS:
        file = f"{prefix}{name}.pth"
        if os.path.isfile(file):
            files[name] = {k: v for k, v in read_weights(file).items() if not k.endswith(NORM_STATISTICS)}
        elif name.startswith("G"):
            raise common.UserError(f"{file} does not exist; a released AttentionGAN model has latest_net_G_A.pth and "
                                   f"latest_net_G_B.pth (scripts/download_attentiongan_model.sh).")
    gen = files["G_A"]
    flags = {"scheme": "II",
             "ngf": gen["conv1.weight"].shape[0],
             "n_res": len({k.split(".")[1] for k in gen if k.startswith("resnet_blocks.")}),
             "n_masks": gen["deconv3_attention.weight"].shape[0]}
    if "D_A" in files:
        flags["ndf"] = files["D_A"]["model.0.weight"].shape[0]
    states = {}
    for name, state in files.items():
        states[ATTENTIONGAN_NETS[name]] = rename_keys(state, ATTENTIONGAN_GEN_KEYS if name.startswith("G") else ())
    return flags, states, 0


# ---------------- StarGAN (camconsistency.py): <iter>-G.ckpt and <iter>-D.ckpt ----------------

# StarGAN D key -> ours
STARGAN_DISC_KEYS = ((r"^main\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 2}.0."),
                     (r"^conv1\.", "out_src."),
                     (r"^conv2\.", "out_cls."))


def stargan_gen_keys(state):
    """StarGAN G key -> ours. G is one Sequential `main`; its last conv (the highest main.<i>.weight) is our
    to_image, the residual blocks' inner `main` our `block`, everything else `body`."""
    last = max(int(k.split(".")[1]) for k in state if re.fullmatch(r"main\.\d+\.weight", k))
    return ((rf"^main\.{last}\.", "to_image.0."), (r"^main\.(\d+)\.main\.", r"body.\1.block."), (r"^main\.", "body."))


def stargan_release(path):
    """-> (flags, states, step 0) of solver.py's <iter>-G.ckpt and the <iter>-D.ckpt beside it (plain state dicts of
    model.py's Generator and Discriminator; the CelebA releases are c_dim 5 at 128 or 256 px). StarGAN's InstanceNorm
    has track_running_stats=True, so G's file also holds running statistics; they are dropped: StarGAN's test never
    calls .eval(), so it normalises with each image's own statistics, as our InstanceNorm always does. flags has
    c_dim, the attribute labels G takes, which the chosen --attrs must give."""
    if not re.search(r"-G\.ckpt$", path):
        raise common.UserError(f"{path}: expected StarGAN's generator file <iter>-G.ckpt (e.g. "
                               f"stargan_celeba_128/models/200000-G.ckpt, from download.sh pretrained-celeba-128x128).")
    gen = {k: v for k, v in read_weights(path).items() if not k.endswith(NORM_STATISTICS)}
    flags = {"c_dim": gen["main.0.weight"].shape[1] - 3,
             "conv_dim": gen["main.0.weight"].shape[0],
             "n_res": len({k.split(".")[1] for k in gen if re.match(r"main\.\d+\.main\.", k)})}
    states = {"gen": rename_keys(gen, stargan_gen_keys(gen))}
    disc_path = re.sub(r"-G\.ckpt$", "-D.ckpt", path)
    if os.path.isfile(disc_path):
        disc = read_weights(disc_path)
        flags["d_conv_dim"] = disc["main.0.weight"].shape[0]
        flags["d_layers"] = sum(1 for k in disc if re.fullmatch(r"main\.\d+\.weight", k))
        flags["img_size"] = disc["conv2.weight"].shape[-1] * 2 ** flags["d_layers"]  # out_cls covers the last map
        states["disc"] = rename_keys(disc, STARGAN_DISC_KEYS)
    return flags, states, 0


def stargan_attributes(args, c_dim):
    """The attribute set of a StarGAN release: --data's when the dataset is here (toy-attr, CelebA, labels.csv),
    else CelebA's binary attributes named by --attrs (default StarGAN's five), which needs no images."""
    root = args.data if os.path.exists(args.data) else os.path.join(args.data_root, args.data)
    if args.data in common.TOY_NAMES or os.path.isdir(root):
        attrs = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "train")[0]
    else:
        names = args.attrs.split(",") if args.attrs else list(common.CELEBA_DEFAULT_ATTRS)
        hair = [[k for k, name in enumerate(names) if name in common.CELEBA_HAIR]]
        attrs = common.AttributeSet(names, [["0", "1"]] * len(names), [True] * len(names), range(len(names)), hair)
    if attrs.c_dim != c_dim:
        raise common.UserError(f"the file's G takes {c_dim} attribute labels and --data {args.data} with --attrs "
                               f"{args.attrs or '(default)'} gives {attrs.c_dim}: choose {c_dim} with --attrs (the "
                               f"CelebA release: --data celeba --attrs Black_Hair,Blond_Hair,Brown_Hair,Male,Young).")
    return attrs


# ---------------- TensorFlow checkpoints read with numpy: the V2 tensor bundle ----------------
# A checkpoint `prefix` is `prefix.index`, a LevelDB-style SSTable mapping each tensor name to a serialized
# BundleEntryProto (the empty key holds the BundleHeaderProto), plus data shards `prefix.data-SSSSS-of-NNNNN` holding
# the raw little-endian, C-ordered tensor bytes. Read: float16/32/64, bfloat16 (widened to float32), the integer
# types, bool, complex64/128 and strings (numpy object arrays of bytes). Checked: the masked CRC32C of every index block
# and every tensor (vectorised with numpy, some 300 MB/s). Refused with ValueError naming the file: sliced
# (partitioned) variables, compressed blocks, big-endian bundles, the quantized, resource, variant and float8 types,
# and any damage to the files.

_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_DT_STRING = 7
_DT_BFLOAT16 = 14
# DataType enum value -> numpy dtype of the stored bytes; bfloat16 is read as uint16 and widened afterwards.
_NUMPY_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 8: "<c8", 9: "<i8", 10: "?", 14: "<u2",
                 17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8"}
_DTYPE_NAMES = ("INVALID FLOAT DOUBLE INT32 UINT8 INT16 INT8 STRING COMPLEX64 INT64 BOOL QINT8 QUINT8 QINT32 BFLOAT16 "
                "QINT16 QUINT16 UINT16 COMPLEX128 HALF RESOURCE VARIANT UINT32 UINT64 FLOAT8_E5M2 FLOAT8_E4M3FN "
                "FLOAT8_E4M3FNUZ FLOAT8_E4M3B11FNUZ FLOAT8_E5M2FNUZ INT4 UINT4 INT2 UINT2").split()
# Integer fields of BundleEntryProto by number; 2 (shape) and 7 (slices) are length-delimited.
_ENTRY_FIELDS = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size", 6: "crc32c"}
# Byte-at-a-time table of the reflected CRC-32C (Castagnoli) polynomial: 8 shift-and-reduce steps per byte value.
_CRC_TABLE = np.arange(256, dtype=np.uint32)
for _ in range(8):
    _CRC_TABLE = (_CRC_TABLE >> 1) ^ ((_CRC_TABLE & 1) * np.uint32(0x82F63B78))
_BITS = np.arange(32, dtype=np.uint32)


def _check(condition, message):
    """Raise ValueError(message) unless `condition` holds."""
    if not condition:
        raise ValueError(message)


def _advance(registers, matrix):
    """Multiply each 32-bit CRC register of an array, as a GF(2) bit vector, by a 32x32 0/1 matrix."""
    bits = ((registers[:, None] >> _BITS) & 1).astype(np.float64)  # float matmul is fast and exact for 0/1 sums
    return ((bits @ matrix.T % 2).astype(np.uint32) << _BITS).sum(axis=1, dtype=np.uint32)


@functools.lru_cache(maxsize=256)
def _zero_bytes_matrix(count):
    """GF(2) matrix that advances a zero-initialised CRC register over `count` zero bytes (square and multiply)."""
    one_bit_registers = np.uint32(1) << _BITS
    images = _CRC_TABLE[one_bit_registers & 0xFF] ^ (one_bit_registers >> 8)
    step = ((images[None, :] >> _BITS[:, None]) & 1).astype(np.float64)  # column j: image of the register 1 << j
    result = np.eye(32)
    while count:
        if count & 1:
            result = result @ step % 2
        step = step @ step % 2
        count >>= 1
    return result


def _masked_crc32c(data):
    """CRC-32C of a bytes-like object, masked as LevelDB and TensorFlow store it (rotated right 15, plus a constant).

    A zero-initialised CRC register is linear, ignores leading zero bytes, and crc(A + B) equals
    advance(crc(A), len(B)) ^ crc(B). So: zero-pad in front to `chunks` equal chunks, run all chunks side by side
    in numpy, merge neighbours pairwise, and finally fold in the standard initial register 0xFFFFFFFF."""
    chunks = 1
    while chunks < 65536 and chunks * 256 < len(data):
        chunks *= 2
    length = -(-len(data) // chunks)
    padded = np.zeros(chunks * length, dtype=np.uint8)
    padded[chunks * length - len(data):] = np.frombuffer(data, dtype=np.uint8)
    registers = np.zeros(chunks, dtype=np.uint32)
    for column in np.ascontiguousarray(padded.reshape(chunks, length).T):  # byte i of every chunk at once
        registers = _CRC_TABLE[(registers ^ column) & 0xFF] ^ (registers >> 8)
    matrix = _zero_bytes_matrix(length)
    while len(registers) > 1:
        registers = _advance(registers[0::2], matrix) ^ registers[1::2]
        matrix = matrix @ matrix % 2
    crc = int(registers[0] ^ _advance(np.array([0xFFFFFFFF], np.uint32), _zero_bytes_matrix(len(data)))[0])
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf, pos, where):
    """Decode the base-128 varint at buf[pos]; return (value, position after it)."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise ValueError(f"{where} contains a truncated varint.")
        result |= (buf[pos] & 0x7F) << shift
        pos += 1
        if not buf[pos - 1] & 0x80:
            return result, pos
    raise ValueError(f"{where} contains a varint longer than 10 bytes.")


def _proto_fields(buf, where, ints=(), blobs=()):
    """Yield (field number, value) of a protobuf message; fields named in `ints` / `blobs` must be int / bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, where)
        wire_type = tag & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos, where)
        else:
            width = {1: 8, 5: 4}.get(wire_type)
            if wire_type == 2:
                width, pos = _varint(buf, pos, where)
            _check(width is not None and pos + width <= len(buf), f"{where} contains a malformed protobuf field.")
            value = bytes(buf[pos:pos + width]) if wire_type == 2 else int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        _check(tag >> 3 not in ints or isinstance(value, int), f"{where} has a non-integer field {tag >> 3}.")
        _check(tag >> 3 not in blobs or isinstance(value, bytes), f"{where} has an integer field {tag >> 3}.")
        yield tag >> 3, value


def _read_block(data, handle, path):
    """Return the contents of the SSTable block at BlockHandle `handle` after checking its 5-byte trailer."""
    offset, pos = _varint(handle, 0, path)
    size = _varint(handle, pos, path)[0]
    _check(offset + size + 5 <= len(data) - _FOOTER_SIZE, f"{path} is not an SSTable: a block lies outside the file.")
    stored_crc = struct.unpack_from("<I", data, offset + size + 1)[0]
    _check(_masked_crc32c(data[offset:offset + size + 1]) == stored_crc, f"{path} has a block failing its CRC32C.")
    _check(data[offset + size] == 0, f"{path} has a compressed block (type {data[offset + size]}), not supported.")
    return data[offset:offset + size]


def _block_entries(block, path):
    """Yield (key, value) of a block: prefix-compressed entries, then uint32 restart offsets and their count."""
    _check(len(block) >= 4, f"{path} is not a valid SSTable: a block is too short.")
    entries_end = len(block) - 4 - 4 * struct.unpack_from("<I", block, len(block) - 4)[0]
    _check(entries_end >= 0, f"{path} is not a valid SSTable: a block has an impossible restart count.")
    key = b""
    pos = 0
    while pos < entries_end:
        shared, pos = _varint(block, pos, path)
        unshared, pos = _varint(block, pos, path)
        value_length, pos = _varint(block, pos, path)
        _check(shared <= len(key) and pos + unshared + value_length <= entries_end, f"{path} has a bad block entry.")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared + value_length
        yield key, block[pos - value_length:pos]


def _read_index(index_path):
    """Return (number of shards, {tensor name: BundleEntryProto bytes}) from the checkpoint's .index SSTable."""
    _check(os.path.isfile(index_path), f"Checkpoint index file {index_path} does not exist.")
    with open(index_path, "rb") as index_file:
        data = index_file.read()
    _check(len(data) >= _FOOTER_SIZE and struct.unpack_from("<Q", data, len(data) - 8)[0] == _MAGIC,
           f"{index_path} is not an SSTable (file too short or bad footer magic number).")
    # The footer starts with the metaindex BlockHandle (unused here), then the index BlockHandle: varint pairs.
    _, pos = _varint(data, len(data) - _FOOTER_SIZE, index_path)  # metaindex block offset
    _, pos = _varint(data, pos, index_path)  # metaindex block size
    index_block = _read_block(data, data[pos:len(data) - 8], index_path)
    entries = {}
    for _, handle in _block_entries(index_block, index_path):  # one (separator key, BlockHandle) per data block
        for key, value in _block_entries(_read_block(data, handle, index_path), index_path):
            entries[key.decode("utf-8", "backslashreplace")] = value
    _check("" in entries, f"{index_path} is an SSTable but not a tensor bundle (it has no bundle header entry).")
    header = dict(_proto_fields(entries.pop(""), f"{index_path} (bundle header)", ints=(1, 2), blobs=(3,)))
    _check(header.get(2, 0) == 0, f"{index_path} is a big-endian tensor bundle, which is not supported.")
    return header.get(1, 0), entries


def _parse_entry(value, where):
    """Decode a BundleEntryProto into a dict: dtype, shape, shard_id, offset, size, crc32c, sliced."""
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    for field, item in _proto_fields(value, where, ints=tuple(_ENTRY_FIELDS), blobs=(2, 7)):
        if field in _ENTRY_FIELDS:
            entry[_ENTRY_FIELDS[field]] = item
        elif field == 7:
            entry["sliced"] = True
        elif field == 2:  # TensorShapeProto: repeated Dim (field 2) with size (field 1); unknown_rank is field 3.
            for shape_field, shape_item in _proto_fields(item, where, ints=(3,), blobs=(2,)):
                _check(shape_field != 3 or not shape_item, f"{where} has a tensor of unknown rank.")
                if shape_field == 2:
                    size = dict(_proto_fields(shape_item, where, ints=(1,), blobs=(2,))).get(1, 0)
                    _check(size < 1 << 63, f"{where} has a tensor with a negative dimension.")
                    entry["shape"].append(size)
    return entry


def _decode_strings(raw, count, where):
    """Decode DT_STRING bytes (`count` varint64 lengths, a 4-byte length checksum, then the strings' bytes).

    Returns (object array of bytes, the byte sequence that TensorFlow's tensor checksum covers)."""
    pos = 0
    lengths = []
    for _ in range(count):
        length, pos = _varint(raw, pos, where)
        lengths.append(length)
    _check(pos + 4 + sum(lengths) == len(raw), f"{where} has a byte size that does not match its string lengths.")
    strings = np.empty(count, dtype=object)
    start = pos + 4
    for i, length in enumerate(lengths):
        strings[i] = bytes(raw[start:start + length])
        start += length
    # TensorFlow checksums each length as a little-endian uint32 (uint64 if it does not fit), not as a varint.
    packed_lengths = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
    return strings, packed_lengths + bytes(raw[pos:])


def _read_tensor(prefix, num_shards, name, entry):
    """Read, check and decode the tensor `name` described by a parsed BundleEntryProto from its data shard."""
    shard_path = f"{prefix}.data-{entry['shard_id']:05d}-of-{num_shards:05d}"
    where = f"Tensor {name!r} in data shard {shard_path}"
    dtype = entry["dtype"]
    dtype_name = f"DT_{_DTYPE_NAMES[dtype]}" if dtype < len(_DTYPE_NAMES) else f"DataType enum value {dtype}"
    _check(dtype == _DT_STRING or dtype in _NUMPY_DTYPES,
           f"{prefix}.index gives tensor {name!r} the unsupported dtype {dtype_name}.")
    _check(os.path.isfile(shard_path), f"Data shard {shard_path} does not exist.")
    end = entry["offset"] + entry["size"]
    _check(end <= os.path.getsize(shard_path), f"{where} lies at bytes [{entry['offset']}, {end}), past its end.")
    count = math.prod(entry["shape"])
    if dtype != _DT_STRING:
        expected = count * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        _check(entry["size"] == expected, f"{where} has {entry['size']} bytes, but dtype and shape need {expected}.")
    raw = bytearray(entry["size"])
    with open(shard_path, "rb") as shard_file:
        shard_file.seek(entry["offset"])
        shard_file.readinto(raw)
    if dtype == _DT_STRING:
        array, checked_bytes = _decode_strings(raw, count, where)
    else:
        array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[dtype])
        checked_bytes = raw
    if entry["crc32c"] is not None:
        _check(_masked_crc32c(checked_bytes) == entry["crc32c"], f"{where} fails its CRC32C checksum.")
    if dtype == _DT_BFLOAT16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.reshape(entry["shape"])


def read_tf_checkpoint(prefix, select=None):
    """-> {variable name: numpy array} of the tensors in the checkpoint at `prefix` (the path without .index) whose
    names `select(name)` accepts (default: all; a release also holds the optimizer's slots, which need not be read)."""
    num_shards, raw_entries = _read_index(f"{prefix}.index")
    entries = {name: _parse_entry(value, f"{prefix}.index (entry {name!r})") for name, value in raw_entries.items()
               if select is None or select(name)}
    for name, entry in entries.items():
        _check(not entry["sliced"], f"{prefix}.index holds sliced (partitioned) variable {name!r}, not supported.")
    return {name: _read_tensor(prefix, num_shards, name, entry) for name, entry in entries.items()}


# ---------------- The TensorFlow releases: U-GAT-IT (taki0112/UGATIT) and UAG (AlamiMejjati/...) ----------------


def tf_prefix(path):
    """The TensorFlow checkpoint `path` names (its prefix, its .index file, or a folder: the checkpoint its
    `checkpoint` file names, else its last .index by name) -> the prefix, or None when it names none."""
    if path.endswith(".index") and os.path.isfile(path):
        return path[:-len(".index")]
    if os.path.isfile(f"{path}.index"):
        return path
    if not os.path.isdir(path):
        return None
    state = os.path.join(path, "checkpoint")
    if os.path.isfile(state):
        found = re.search(r'^model_checkpoint_path: "(.*)"', open(state, encoding="utf-8").read(), re.M)
        if found and os.path.isfile(os.path.join(path, found[1]) + ".index"):
            return os.path.join(path, found[1])
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.index"), recursive=True))
    return indexes[-1][:-len(".index")] if indexes else None


class Tensors(dict):
    """The variables of a TF checkpoint ({name: torch tensor}), remembering which ones the conversion took."""

    def __init__(self, items):
        super().__init__(items)
        self.taken = set()

    def __getitem__(self, name):
        self.taken.add(name)
        return super().__getitem__(name)

    def check_all_taken(self, prefix, unused=()):
        """Every variable went into a layer (but the names in `unused`): else the file is another architecture."""
        left = sorted(name for name in set(self) - self.taken if not name.endswith(unused))
        if left:
            raise common.UserError(f"{prefix} holds variables that no layer of the converted networks takes "
                                   f"({', '.join(left[:5])}{' ...' if len(left) > 5 else ''}): it is not the "
                                   f"official code's architecture.")


def read_tf(prefix, select):
    """The variables of a TF checkpoint that `select(name)` accepts, as torch tensors (a damaged file: exit 2)."""
    try:
        tensors = read_tf_checkpoint(prefix, select)
    except ValueError as e:
        raise common.UserError(f"{e} {prefix} is not a readable TensorFlow checkpoint.") from None
    return Tensors({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in tensors.items()})


def tf_step(prefix):
    found = re.search(r"-(\d+)$", prefix)
    return int(found[1]) if found else 0


def tf_conv(kernel):
    """A conv kernel (TF [kh, kw, in, out]), or a transposed conv's (TF [kh, kw, out, in]), in torch's layout."""
    return kernel.permute(3, 2, 0, 1).contiguous()


# The TF generator's layers -> ours (Generator(tf=True)): (our prefix, kind, TF scope); <i> is a residual block
UGATIT_TF_LAYERS = [("encoder.1", "conv", "conv"), ("encoder.2", "in", "ins_norm"),
                    ("encoder.5", "conv", "conv_0"), ("encoder.6", "in", "ins_norm_0"),
                    ("encoder.9", "conv", "conv_1"), ("encoder.10", "in", "ins_norm_1"),
                    ("conv1x1", "conv", "conv_1x1"), ("mlp.2", "dense", "MLP/linear_1"),
                    ("gamma", "dense", "MLP/gamma"), ("beta", "dense", "MLP/beta"),
                    ("upsample.2", "conv", "up_conv_0"), ("upsample.3", "iln", "layer_ins_norm_0"),
                    ("upsample.7", "conv", "up_conv_1"), ("upsample.8", "iln", "layer_ins_norm_1"),
                    ("upsample.11", "conv", "G_logit")]
UGATIT_TF_BLOCK_LAYERS = [("encoder.<12+i>.block.1", "conv", "resblock_<i>/res1/conv_0"),
                          ("encoder.<12+i>.block.2", "in", "resblock_<i>/res1/instance_norm"),
                          ("encoder.<12+i>.block.5", "conv", "resblock_<i>/res2/conv_0"),
                          ("encoder.<12+i>.block.6", "in", "resblock_<i>/res2/instance_norm"),
                          ("res_blocks.<i>.conv1", "conv", "adaptive_resblock<i>/res1/conv_0"),
                          ("res_blocks.<i>.norm1", "rho", "adaptive_resblock<i>/res1/instance_layer_norm"),
                          ("res_blocks.<i>.conv2", "conv", "adaptive_resblock<i>/res2/conv_0"),
                          ("res_blocks.<i>.norm2", "rho", "adaptive_resblock<i>/res2/instance_layer_norm")]


def ugatit_tf_generator(t, n_res, smoothing):
    """Our Generator(tf=True)'s state dict from one TF generator's variables `t` (names without the scope). Exact:
    AdaLIN's smoothed rho, clip(rho - 0.1, 0, 1), is stored as rho; the full MLP's input rows go from TF's (H, W, C)
    flatten order to torch's (C, H, W)."""
    layers = list(UGATIT_TF_LAYERS)
    for i in range(n_res):
        layers += [(ours.replace("<12+i>", str(12 + i)).replace("<i>", str(i)), kind, theirs.replace("<i>", str(i)))
                   for ours, kind, theirs in UGATIT_TF_BLOCK_LAYERS]
    state = {}
    for ours, kind, theirs in layers:
        if kind == "conv":
            state[f"{ours}.weight"] = tf_conv(t[f"{theirs}/conv2d/kernel"])
            state[f"{ours}.bias"] = t[f"{theirs}/conv2d/bias"]
        elif kind == "dense":
            state[f"{ours}.weight"] = t[f"{theirs}/dense/kernel"].T.contiguous()
            state[f"{ours}.bias"] = t[f"{theirs}/dense/bias"]
        elif kind == "in":  # affine instance norm: gamma, beta
            state[f"{ours}.weight"] = t[f"{theirs}/gamma"]
            state[f"{ours}.bias"] = t[f"{theirs}/beta"]
        elif kind == "rho":  # AdaLIN: rho only (gamma and beta come from the MLP)
            rho = t[f"{theirs}/rho"].clamp(0, 1)
            state[f"{ours}.rho"] = ((rho - 0.1).clamp(0, 1) if smoothing else rho).view(1, -1, 1, 1)
        else:  # ILN: rho, gamma, beta per channel
            for name in ("rho", "gamma", "beta"):
                state[f"{ours}.{name}"] = t[f"{theirs}/{name}"].view(1, -1, 1, 1)
    state["gap_fc.weight"] = t["CAM_logit/kernel"].T.contiguous()
    state["gap_fc.bias"] = t["CAM_logit/bias"]
    first = t["MLP/linear_0/dense/kernel"]  # [in, out]; the full model's input is the NHWC map flattened
    ch = state["conv1x1.bias"].shape[0]
    side = round((first.shape[0] / ch) ** 0.5)
    if side > 1:
        first = first.view(side, side, ch, -1).permute(2, 0, 1, 3).reshape(first.shape[0], -1)
    state["mlp.0.weight"] = first.T.contiguous()
    state["mlp.0.bias"] = t["MLP/linear_0/dense/bias"]
    return state


def ugatit_tf_release(prefix):
    """-> (flags, states, step) of a checkpoint of the TF code (e.g. the selfie2anime release): its two generators,
    generator_B (A -> B: our gen_a2b) and generator_A, for ugatit.py --tf_release. Its discriminators pad and
    normalise otherwise than ours, so they are not converted: the run tests, evaluates and exports, and does not
    train on. The TF code's --smoothing (default on), which the variables do not record, is read from the name of
    the checkpoint's folder (UGATIT_<data>_..._sn_smoothing: on; the same name without _smoothing: off)."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(prefix)))
    smoothing = not re.search(r"_\d+resblock_\d+dis_", folder) or folder.endswith("_smoothing")
    t = read_tf(prefix, lambda name: name.startswith(("generator_A/", "generator_B/")) and "Adam" not in name)
    gen = {k[len("generator_B/"):]: v for k, v in t.items() if k.startswith("generator_B/")}
    if not gen:
        raise common.UserError(f"{prefix} holds no generator_A/ and generator_B/ variables: it is not a checkpoint of "
                               f"the U-GAT-IT TensorFlow code (taki0112/UGATIT).")
    ch = gen["conv/conv2d/kernel"].shape[3]
    mlp_in = gen["MLP/linear_0/dense/kernel"].shape[0]
    n_res = len({k.split("/")[0] for k in gen if k.startswith("resblock_")})
    flags = {"ch": ch, "n_res": n_res, "light": mlp_in == 4 * ch, "tf_release": True, "no_cam": False,
             "no_gcam": False, "no_dcam": False, "norm": "adalin"}
    if not flags["light"]:
        flags["img_size"] = 4 * round((mlp_in / (4 * ch)) ** 0.5)
    states = {}
    for scope, ours in (("generator_B/", "gen_a2b"), ("generator_A/", "gen_b2a")):
        variables = Tensors({k[len(scope):]: v for k, v in t.items() if k.startswith(scope)})
        states[ours] = ugatit_tf_generator(variables, n_res, smoothing)
        variables.check_all_taken(prefix)
    return flags, states, tf_step(prefix)


def uag_tf_state(t, n_res, attention):
    """Our Generator(tf=True) (or AttentionNet(tf=True)) state dict from one TF network's variables `t` (names without
    the scope). c6's instance norm is in the checkpoint but unused (the code's tf.cond builds both branches)."""
    n = n_res
    if attention:  # TF layer -> (our conv, our instance norm): c1, c2, the residual block r1, c4, c5, c6
        places = {"c1": ("1", "2"), "c2": ("5", "6"), "r1/c1": ("8.block.1", "8.block.2"),
                  "r1/c2": ("8.block.5", "8.block.6"), "c4": ("10", "11"), "c5": ("14", "15"), "c6": ("17", None)}
    else:  # c1, c2, c3, r1..r<n_res>, the transposed convs c4 and c5 (each followed by a crop), c6
        places = {"c1": ("0", "1"), "c2": ("4", "5"), "c3": ("8", "9"), "c4": (f"{11 + n}", f"{13 + n}"),
                  "c5": (f"{15 + n}", f"{17 + n}"), "c6": (f"{19 + n}", None)}
        for k in range(n_res):
            places[f"r{k + 1}/c1"] = (f"{11 + k}.block.1", f"{11 + k}.block.2")
            places[f"r{k + 1}/c2"] = (f"{11 + k}.block.5", f"{11 + k}.block.6")
    state = {}
    for theirs, (conv, norm) in places.items():
        kind = "Conv2d_transpose" if theirs in ("c4", "c5") and not attention else "Conv"
        state[f"model.{conv}.weight"] = tf_conv(t[f"{theirs}/{kind}/weights"])
        state[f"model.{conv}.bias"] = t[f"{theirs}/{kind}/biases"]
        if norm is not None:
            state[f"model.{norm}.weight"] = t[f"{theirs}/instance_norm/scale"]
            state[f"model.{norm}.bias"] = t[f"{theirs}/instance_norm/offset"]
    return state


def uag_tf_release(prefix):
    """-> (flags, states, step) of a checkpoint of UAG's TF code (its trained models): the generators g_A (A -> B: our
    gen_a2b) and g_B and the attention nets g_A_ae (att_a) and g_B_ae, for uag.py --tf_release (with the 1x1 kernels
    the code runs, --att_kernels official, when the file has them). The discriminators differ from ours (padding,
    norm in the first layer), so they are not converted: the run tests, evaluates and exports."""
    t = read_tf(prefix, lambda name: name.startswith("Model/g_") and "Adam" not in name)
    if "Model/g_A/c1/Conv/weights" not in t:
        raise common.UserError(f"{prefix} holds no Model/g_A/ variables: it is not a checkpoint of UAG's TensorFlow "
                               f"code (AlamiMejjati/Unsupervised-Attention-guided-Image-to-Image-Translation).")
    n_res = len({k.split("/")[2] for k in t if re.match(r"Model/g_A/r\d+/", k)})
    flags = {"ngf": t["Model/g_A/c1/Conv/weights"].shape[3], "n_res": n_res, "no_attention": False,
             "att_kernels": "official" if t["Model/g_A_ae/c4/Conv/weights"].shape[0] == 1 else "intended",
             "tf_release": True}
    states = {}
    for scope, ours in (("g_A", "gen_a2b"), ("g_B", "gen_b2a"), ("g_A_ae", "att_a"), ("g_B_ae", "att_b")):
        start = f"Model/{scope}/"
        variables = Tensors({k[len(start):]: v for k, v in t.items() if k.startswith(start)})
        states[ours] = uag_tf_state(variables, n_res, scope.endswith("_ae"))
        variables.check_all_taken(prefix, unused=("c6/instance_norm/scale", "c6/instance_norm/offset"))
    return flags, states, tf_step(prefix)


def read_release(script, path):
    """-> (flags, states, step): the release of `script` at `path`, a TensorFlow checkpoint or a PyTorch file."""
    prefix = tf_prefix(path)
    if script == "uag":
        if prefix is None:
            raise common.UserError(f"{path} is no TensorFlow checkpoint (prefix, .index file or folder): uag.py's "
                                   f"release is the TF code's (Trained_models/README.md of its repository).")
        return uag_tf_release(prefix)
    if script == "ugatit" and prefix is not None:
        return ugatit_tf_release(prefix)
    return RELEASES[script](path)


RELEASES = {"ugatit": ugatit_release, "attentiongan": attentiongan_release, "camconsistency": stargan_release,
            "uag": uag_tf_release}


def flag_tokens(flags):
    """{'ch': 64, 'light': True, 'no_cam': False} -> ['--ch', '64', '--light'] (a False store_true is left out)."""
    tokens = []
    for k, v in flags.items():
        if v is True:
            tokens.append(f"--{k}")
        elif v is False:
            tokens += [f"--no-{k}"] if k == "light" else []
        else:
            tokens += [f"--{k}", str(v)]
    return tokens


def convert(script, path, argv):
    """Read the release at `path`, build the script's networks with the flags its shapes give (and `argv`'s), load
    them, and save the run: <out>/ckpt.pt and args.json -> the checkpoint's path."""
    if script not in RELEASES:
        raise common.UserError(f"tools/official.py converts the releases of {', '.join(s + '.py' for s in RELEASES)}; "
                               f"{script}.py has none.")
    for flag in ("--phase", "--resume"):
        if any(t.split("=")[0] == flag for t in argv):
            raise common.UserError(f"tools/official.py writes a new run: drop {flag}, then test, evaluate or continue "
                                   f"the run with {script}.py.")
    if not any(t.split("=")[0] == "--out" for t in argv):
        raise common.UserError("give the new run's folder: --out RUN.")
    module = importlib.import_module(script)
    try:
        flags, states, step = read_release(script, path)
    except (KeyError, IndexError, ValueError) as e:  # not even the layers the shapes are read from
        raise common.UserError(f"{path} does not have the official layout of {script}.py's release (no {e}).") \
            from None
    c_dim = flags.pop("c_dim", None)
    args = module.parse_flags(flag_tokens(flags) + list(argv))  # the flags given last win
    contradicted = [k for k, v in flags.items() if getattr(args, k) != v]
    if contradicted:
        wanted = [" ".join(flag_tokens({k: flags[k]})) or f"no --{k}" for k in contradicted]
        raise common.UserError(f"{path} holds networks made with {', '.join(wanted)}, and the command line says "
                               f"otherwise: drop {', '.join('--' + k for k in contradicted)} (the architecture comes "
                               f"from the file).")
    common.seed_everything(args.seed)
    extra = {"converted_from": os.path.abspath(path)}
    if c_dim is None:
        nets = module.build_networks(args)
    else:
        attrs = stargan_attributes(args, c_dim)
        extra["attributes"] = attrs.state
        nets = module.build_networks(args, attrs)
    try:
        for name, state in states.items():
            nets[name].load_state_dict(state)
    except RuntimeError as e:
        keys = " ".join(str(e).split())  # torch names the missing, unexpected and misshapen keys
        raise common.UserError(f"{path} does not fit {script}.py's networks ({keys[:300]}"
                               f"{' ...' if len(keys) > 300 else ''}): its layout is not the official one.") from None
    fresh = [name for name in nets if name not in states]
    if script != "attentiongan":  # the run holds what the release gave (no untrained D: meaningless maps, training)
        nets = {name: net for name, net in nets.items() if name in states}
    elif fresh:
        print(f"{', '.join(fresh)}: no file for them, they start from random weights (only training uses them)")
    common.prepare_out(args.out, args.ckpt, vars(args), resume=False)
    common.save_checkpoint(args.ckpt, script, vars(args), step, nets, {}, extra)
    print(f"{path} -> {args.ckpt} ({', '.join(nets)} at step {step}). Next: python {script}.py --out {args.out} "
          f"--phase test --input YOUR_IMAGES (or --phase eval, or --resume to train on)")
    return args.ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="the paper script: ugatit.py, attentiongan.py or camconsistency.py")
    parser.add_argument("weights", help="the released file (or AttentionGAN's folder)")
    known, rest = parser.parse_known_args(argv)
    script = os.path.splitext(os.path.basename(known.script))[0]
    convert(script, known.weights, rest)


if __name__ == "__main__":
    common.cli(main)
