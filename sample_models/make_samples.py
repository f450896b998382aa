"""Build the committed sample models and data used by optc's tests and docs.

Trains two small models with plain numpy + HIPS autograd (no torch needed),
writes them as ONNX graphs shaped the way a PyTorch exporter emits them, and
saves matching calibration / test data:

    digits_cnn.onnx      CNN on scikit-learn's 8x8 digits (BatchNorm NOT folded)
    digits_calib.npz     calibration inputs  (key: input)
    digits_test.npz      held-out test set   (keys: input, labels)
    tiny_bert.onnx       2-layer BERT-like encoder on a toy counting task
    tiny_bert_calib.npz  calibration inputs  (keys: input_ids, attention_mask)
    tiny_bert_data.npz   held-out test set   (keys: input_ids, attention_mask, labels)

Requirements:
    pip install scikit-learn autograd onnx onnxruntime numpy

Usage (from the repo root):
    python sample_models/make_samples.py

Everything is seeded, so repeated runs on the same machine/library versions
produce byte-identical files. The script asserts that onnxruntime reproduces
the numpy forward pass (max |logit diff| < 1e-4) and prints fp32 test top-1.
"""

import hashlib
import time
from pathlib import Path

import autograd.numpy as anp
import numpy as np
import onnx
import onnxruntime as ort
from autograd import grad
from autograd.scipy.special import erf
from autograd.tracer import getval
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT_DIR = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8  # pinned so older onnxruntime builds accept the files too
PARITY_TOL = 1e-4

# ---------------------------------------------------------------------------
# Shared training / export helpers
# ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy; works on autograd boxes and plain arrays."""
    shifted = logits - anp.max(logits, axis=1, keepdims=True)
    log_probs = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
    return -anp.mean(log_probs[np.arange(len(labels)), labels])


class AdamW:
    """Minimal AdamW over a dict of float32 arrays (updated in place)."""

    def __init__(self, params, weight_decay, decay_keys, betas=(0.9, 0.999), eps=1e-8):
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.b1, self.b2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.decay_keys = set(decay_keys)  # only weight matrices, not norms/biases
        self.t = 0

    def step(self, params, grads, lr):
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            update = (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)
            if k in self.decay_keys:
                update = update + self.wd * params[k]
            params[k] = (params[k] - lr * update).astype(np.float32)


def clip_by_global_norm(grads, max_norm):
    """Keeps early post-LayerNorm transformer steps from blowing up."""
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    if norm > max_norm:
        grads = {k: g * (max_norm / norm) for k, g in grads.items()}
    return grads


def lr_schedule(step, total, peak, warmup):
    """Linear warmup then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + np.cos(np.pi * progress))


def const(name, array):
    """Initializer from a numpy array (dtype preserved)."""
    return numpy_helper.from_array(np.asarray(array), name=name)


def finish_model(graph, doc):
    """Wrap a graph with opset 17 / IR 8 and validate it strictly."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="optc-make_samples",
        producer_version="1.0",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_logits(sess, feeds, batch_size):
    """Run feeds through onnxruntime in chunks of batch_size."""
    n = len(next(iter(feeds.values())))
    outs = []
    for start in range(0, n, batch_size):
        chunk = {k: v[start : start + batch_size] for k, v in feeds.items()}
        outs.append(sess.run(["logits"], chunk)[0])
    return np.concatenate(outs)


def check_parity(name, sess, feeds, reference):
    """Batch 1 (first 16 samples) and batch 32 (all) must match numpy."""
    n1 = 16
    small = {k: v[:n1] for k, v in feeds.items()}
    diff1 = np.max(np.abs(ort_logits(sess, small, 1) - reference[:n1]))
    logits32 = ort_logits(sess, feeds, 32)
    diff32 = np.max(np.abs(logits32 - reference))
    print(f"[{name}] max |onnxruntime - numpy| logits: batch1={diff1:.2e} batch32={diff32:.2e}")
    assert diff1 < PARITY_TOL and diff32 < PARITY_TOL, f"{name}: onnxruntime/numpy mismatch"
    assert np.array_equal(logits32.argmax(1), reference.argmax(1)), f"{name}: prediction mismatch"
    return logits32


# ---------------------------------------------------------------------------
# Model 1: digits CNN
# ---------------------------------------------------------------------------

CNN_SEED = 0
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1-m)*running + m*batch
CNN_EPOCHS = 30
CNN_BATCH = 32
CNN_LR = 3e-3
CNN_CHANNELS = (16, 32, 64)


def split_digits(seed):
    """Stratified split of the 1797 digits into train 1237 / calib 200 / test 360."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # [N,1,8,8] in [0,1]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=360, stratify=y, random_state=seed
    )
    x_train, x_calib, y_train, _ = train_test_split(
        x_rest, y_rest, test_size=200, stratify=y_rest, random_state=seed
    )
    return (x_train, y_train), x_calib, (x_test, y_test)


def init_cnn(rng):
    """He-normal convs/FCs, identity BN, running stats at PyTorch defaults."""
    c1, c2, c3 = CNN_CHANNELS

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    params = {
        "conv1.weight": he((c1, 1, 3, 3), 9),
        "conv2.weight": he((c2, c1, 3, 3), c1 * 9),
        "conv3.weight": he((c3, c2, 3, 3), c2 * 9),
        "fc1.weight": he((64, c3 * 4 * 4), c3 * 16),  # [out, in] like torch Linear
        "fc1.bias": np.zeros(64, np.float32),
        "fc2.weight": he((10, 64), 64),
        "fc2.bias": np.zeros(10, np.float32),
    }
    running = {}
    for i, c in enumerate(CNN_CHANNELS, start=1):
        params[f"bn{i}.weight"] = np.ones(c, np.float32)
        params[f"bn{i}.bias"] = np.zeros(c, np.float32)
        running[f"bn{i}.running_mean"] = np.zeros(c, np.float32)
        running[f"bn{i}.running_var"] = np.ones(c, np.float32)
    return params, running


def conv3x3(x, w):
    """3x3 conv, stride 1, pad 1, no bias, via im2col + one matmul.

    ONNX Conv is cross-correlation, which is exactly what this computes.
    """
    n, c, h, wd = x.shape
    xp = anp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), "constant")
    patches = [xp[:, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)]
    cols = anp.stack(patches, axis=2)  # [n, c, 9, h, w]; 9 = (kh, kw) row-major
    cols = anp.reshape(anp.transpose(cols, (0, 3, 4, 1, 2)), (n * h * wd, c * 9))
    out = anp.dot(cols, anp.transpose(anp.reshape(w, (w.shape[0], c * 9))))
    return anp.transpose(anp.reshape(out, (n, h, wd, w.shape[0])), (0, 3, 1, 2))


def batchnorm(x, gamma, beta, mean, var):
    def ch(v):
        return anp.reshape(v, (1, -1, 1, 1))

    return (x - ch(mean)) / anp.sqrt(ch(var) + BN_EPS) * ch(gamma) + ch(beta)


def maxpool2x2(x):
    """2x2/stride-2 max pool as max over the four strided sub-grids."""
    top = anp.maximum(x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2])
    bottom = anp.maximum(x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2])
    return anp.maximum(top, bottom)


def cnn_forward(p, x, running, batch_stats=None):
    """Forward pass mirroring the ONNX graph node by node.

    batch_stats=None -> inference (BN uses running stats).
    batch_stats=list -> training (BN uses batch stats; they are appended to the
    list as plain arrays so the caller can update the running averages).
    """

    def conv_bn_relu(h, i):
        h = conv3x3(h, p[f"conv{i}.weight"])
        if batch_stats is None:
            mean, var = running[f"bn{i}.running_mean"], running[f"bn{i}.running_var"]
        else:
            mean = anp.mean(h, axis=(0, 2, 3))
            var = anp.mean((h - anp.reshape(mean, (1, -1, 1, 1))) ** 2, axis=(0, 2, 3))
            batch_stats.append((getval(mean), getval(var), h.shape[0] * h.shape[2] * h.shape[3]))
        h = batchnorm(h, p[f"bn{i}.weight"], p[f"bn{i}.bias"], mean, var)
        return anp.maximum(h, 0.0)

    h = conv_bn_relu(x, 1)
    h = conv_bn_relu(h, 2)
    h = maxpool2x2(h)
    h = conv_bn_relu(h, 3)
    h = anp.reshape(h, (h.shape[0], -1))  # Flatten(axis=1): C,H,W order
    h = anp.maximum(anp.dot(h, anp.transpose(p["fc1.weight"])) + p["fc1.bias"], 0.0)
    return anp.dot(h, anp.transpose(p["fc2.weight"])) + p["fc2.bias"]


def update_running_stats(running, batch_stats):
    """EMA of batch stats; variance stored unbiased like PyTorch does."""
    for i, (mean, var, count) in enumerate(batch_stats, start=1):
        unbiased = var * count / (count - 1)
        for key, value in (("running_mean", mean), ("running_var", unbiased)):
            name = f"bn{i}.{key}"
            running[name] = ((1 - BN_MOMENTUM) * running[name] + BN_MOMENTUM * value).astype(
                np.float32
            )


def train_cnn(x_train, y_train):
    rng = np.random.default_rng(CNN_SEED)
    params, running = init_cnn(rng)
    decay = [k for k in params if k.endswith("weight") and not k.startswith("bn")]
    opt = AdamW(params, weight_decay=1e-4, decay_keys=decay)
    steps_per_epoch = int(np.ceil(len(x_train) / CNN_BATCH))
    total = CNN_EPOCHS * steps_per_epoch

    def loss_fn(p, xb, yb, stats):
        return cross_entropy(cnn_forward(p, xb, running, stats), yb)

    grad_fn = grad(loss_fn)
    step = 0
    for _ in range(CNN_EPOCHS):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), CNN_BATCH):
            idx = order[start : start + CNN_BATCH]
            if len(idx) < 2:  # BN batch stats need at least 2 samples
                continue
            stats = []
            grads = grad_fn(params, x_train[idx], y_train[idx], stats)
            update_running_stats(running, stats)
            opt.step(params, grads, lr_schedule(step, total, CNN_LR, warmup=steps_per_epoch))
            step += 1
    return params, running


def build_cnn_onnx(p, running):
    """Exporter-style graph: Conv(no bias) -> BatchNormalization (unfolded) -> Relu ..."""
    inits = [const(k, v) for k, v in p.items()] + [const(k, v) for k, v in running.items()]
    nodes = []
    h = "input"
    for i in (1, 2, 3):
        nodes.append(
            helper.make_node(
                "Conv", [h, f"conv{i}.weight"], [f"conv{i}_out"], name=f"conv{i}",
                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1,
            )
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [f"conv{i}_out", f"bn{i}.weight", f"bn{i}.bias",
                 f"bn{i}.running_mean", f"bn{i}.running_var"],
                [f"bn{i}_out"], name=f"bn{i}", epsilon=BN_EPS, momentum=1 - BN_MOMENTUM,
            )
        )
        nodes.append(helper.make_node("Relu", [f"bn{i}_out"], [f"relu{i}_out"], name=f"relu{i}"))
        h = f"relu{i}_out"
        if i == 2:
            nodes.append(
                helper.make_node(
                    "MaxPool", [h], ["pool_out"], name="pool",
                    kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0],
                )
            )
            h = "pool_out"
    nodes += [
        helper.make_node("Flatten", [h], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", "fc1.weight", "fc1.bias"], ["fc1_out"],
                         name="fc1", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu4_out"], name="relu4"),
        helper.make_node("Gemm", ["relu4_out", "fc2.weight", "fc2.bias"], ["logits"],
                         name="fc2", alpha=1.0, beta=1.0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    return finish_model(graph, "8x8 digits CNN (sklearn load_digits, pixels/16). BN unfolded.")


def make_digits_cnn():
    (x_train, y_train), x_calib, (x_test, y_test) = split_digits(CNN_SEED)
    t0 = time.time()
    params, running = train_cnn(x_train, y_train)
    print(f"[digits_cnn] trained on {len(x_train)} samples in {time.time() - t0:.1f}s")

    model_path = OUT_DIR / "digits_cnn.onnx"
    onnx.save(build_cnn_onnx(params, running), str(model_path))
    np.savez(OUT_DIR / "digits_calib.npz", input=x_calib)
    np.savez(OUT_DIR / "digits_test.npz", input=x_test, labels=y_test)

    reference = cnn_forward(params, x_test, running)
    logits = check_parity("digits_cnn", ort_session(model_path), {"input": x_test}, reference)
    acc = float(np.mean(logits.argmax(1) == y_test))
    print(f"[digits_cnn] onnxruntime fp32 test top-1: {acc * 100:.2f}% ({len(y_test)} samples)")
    return acc


# ---------------------------------------------------------------------------
# Model 2: tiny BERT on a toy counting task
# ---------------------------------------------------------------------------

BERT_SEED = 1
SEQ_LEN = 16
VOCAB = 32
HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
FFN = 128
LAYERS = 2
NUM_CLASSES = 2
LN_EPS = 1e-12  # BERT's LayerNorm epsilon
MASK_VALUE = -10000.0  # BERT's additive attention-mask value
PAD_ID, CLS_ID, TOKEN_A, TOKEN_B = 0, 1, 2, 3  # ids 4..31 are filler tokens
N_TRAIN, N_TEST, N_CALIB = 8000, 256, 128
BERT_STEPS = 2500
BERT_BATCH = 64
BERT_LR = 1e-3


def make_count_task(rng, n):
    """Label = 1 iff token A occurs more often than token B.

    Sequences are [CLS] + 9..15 tokens, right-padded with PAD (mask 0) to 16,
    so the attention mask really matters. Counts differ by design (no ties);
    the answer depends on tokens anywhere in the sequence, so the [CLS]
    position must aggregate them through attention.
    """
    ids = np.full((n, SEQ_LEN), PAD_ID, np.int64)
    mask = np.zeros((n, SEQ_LEN), np.int64)
    labels = np.zeros(n, np.int64)
    for i in range(n):
        length = int(rng.integers(10, SEQ_LEN + 1))  # includes [CLS]
        while True:
            n_a, n_b = (int(v) for v in rng.integers(0, 6, size=2))
            if n_a != n_b and n_a + n_b <= length - 1:
                break
        body = rng.integers(4, VOCAB, size=length - 1)
        slots = rng.permutation(length - 1)
        body[slots[:n_a]] = TOKEN_A
        body[slots[n_a : n_a + n_b]] = TOKEN_B
        ids[i, 0] = CLS_ID
        ids[i, 1:length] = body
        mask[i, :length] = 1
        labels[i] = int(n_a > n_b)
    return ids, mask, labels


def init_bert(rng):
    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def dense(name, fan_in, fan_out):
        # [in, out] layout, as torch exports Linear weights feeding MatMul
        return {f"{name}.weight": normal((fan_in, fan_out), 1.0 / np.sqrt(fan_in)),
                f"{name}.bias": np.zeros(fan_out, np.float32)}

    def layernorm_params(name, dim):
        return {f"{name}.weight": np.ones(dim, np.float32),
                f"{name}.bias": np.zeros(dim, np.float32)}

    p = {"embeddings.word_embeddings": normal((VOCAB, HIDDEN), 0.5),
         "embeddings.position_embeddings": normal((SEQ_LEN, HIDDEN), 0.5)}
    p.update(layernorm_params("embeddings.LayerNorm", HIDDEN))
    for l in range(LAYERS):
        pre = f"layer{l}"
        for sub in ("query", "key", "value", "attn_output"):
            p.update(dense(f"{pre}.{sub}", HIDDEN, HIDDEN))
        p.update(layernorm_params(f"{pre}.attn_LayerNorm", HIDDEN))
        p.update(dense(f"{pre}.intermediate", HIDDEN, FFN))
        p.update(dense(f"{pre}.output", FFN, HIDDEN))
        p.update(layernorm_params(f"{pre}.output_LayerNorm", HIDDEN))
    p.update(dense("pooler", HIDDEN, HIDDEN))
    p.update(dense("classifier", HIDDEN, NUM_CLASSES))
    return p


def layernorm(x, gamma, beta):
    mean = anp.mean(x, axis=-1, keepdims=True)
    var = anp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / anp.sqrt(var + LN_EPS) * gamma + beta


def linear(p, name, x):
    return anp.matmul(x, p[f"{name}.weight"]) + p[f"{name}.bias"]


def gelu(x):
    """Exact (erf) GELU, in the same op order as the exported graph."""
    return x * (1.0 + erf(x / np.float32(np.sqrt(2.0)))) * 0.5


def encoder_layer(p, l, x, ext_mask):
    pre = f"layer{l}"
    b = x.shape[0]

    def heads(t, perm):  # [b, s, hidden] -> [b, heads, ...]
        return anp.transpose(anp.reshape(t, (b, SEQ_LEN, HEADS, HEAD_DIM)), perm)

    q = heads(linear(p, f"{pre}.query", x), (0, 2, 1, 3))  # [b,h,s,d]
    k_t = heads(linear(p, f"{pre}.key", x), (0, 2, 3, 1))  # [b,h,d,s]
    v = heads(linear(p, f"{pre}.value", x), (0, 2, 1, 3))  # [b,h,s,d]
    scores = anp.matmul(q, k_t) / np.float32(np.sqrt(HEAD_DIM)) + ext_mask
    scores = scores - anp.max(scores, axis=-1, keepdims=True)  # stable softmax
    probs = anp.exp(scores)
    probs = probs / anp.sum(probs, axis=-1, keepdims=True)
    ctx = anp.reshape(anp.transpose(anp.matmul(probs, v), (0, 2, 1, 3)), (b, SEQ_LEN, HIDDEN))
    x = layernorm(linear(p, f"{pre}.attn_output", ctx) + x,
                  p[f"{pre}.attn_LayerNorm.weight"], p[f"{pre}.attn_LayerNorm.bias"])
    ffn = linear(p, f"{pre}.output", gelu(linear(p, f"{pre}.intermediate", x)))
    return layernorm(ffn + x, p[f"{pre}.output_LayerNorm.weight"],
                     p[f"{pre}.output_LayerNorm.bias"])


def bert_forward(p, ids, mask):
    x = p["embeddings.word_embeddings"][ids] + p["embeddings.position_embeddings"]
    x = layernorm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"])
    ext_mask = (1.0 - mask[:, None, None, :].astype(np.float32)) * np.float32(MASK_VALUE)
    for l in range(LAYERS):
        x = encoder_layer(p, l, x, ext_mask)
    pooled = anp.tanh(linear(p, "pooler", x[:, 0]))  # BERT pooler on [CLS]
    return linear(p, "classifier", pooled)


def train_bert(rng, ids, mask, labels):
    params = init_bert(rng)
    decay = [k for k in params if k.endswith(".weight") and "LayerNorm" not in k]
    opt = AdamW(params, weight_decay=1e-2, decay_keys=decay)
    grad_fn = grad(lambda p, i, m, y: cross_entropy(bert_forward(p, i, m), y))
    for step in range(BERT_STEPS):
        idx = rng.integers(0, len(ids), size=BERT_BATCH)
        grads = clip_by_global_norm(grad_fn(params, ids[idx], mask[idx], labels[idx]), 1.0)
        opt.step(params, grads, lr_schedule(step, BERT_STEPS, BERT_LR, warmup=200))
    return params


class GraphBuilder:
    """Tiny helper: adds a node with a readable unique name, returns its output."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def init(self, name, array):
        self.inits.append(const(name, array))
        return name

    def op(self, op_type, inputs, name, out=None, **attrs):
        out = out or f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


def export_layernorm(g, x, name):
    return g.op("LayerNormalization", [x, f"{name}.weight", f"{name}.bias"], name,
                axis=-1, epsilon=LN_EPS)


def export_linear(g, x, name, out=None):
    h = g.op("MatMul", [x, f"{name}.weight"], f"{name}/MatMul")
    return g.op("Add", [h, f"{name}.bias"], f"{name}/Add", out=out)


def export_encoder_layer(g, x, l, ext_mask):
    pre = f"layer{l}"

    def heads(t, name, perm):
        r = g.op("Reshape", [t, "shape_bshd"], f"{name}/Reshape")
        return g.op("Transpose", [r], f"{name}/Transpose", perm=perm)

    q = heads(export_linear(g, x, f"{pre}.query"), f"{pre}.query", [0, 2, 1, 3])
    k_t = heads(export_linear(g, x, f"{pre}.key"), f"{pre}.key", [0, 2, 3, 1])
    v = heads(export_linear(g, x, f"{pre}.value"), f"{pre}.value", [0, 2, 1, 3])
    s = g.op("MatMul", [q, k_t], f"{pre}.attn/MatMul_QK")
    s = g.op("Div", [s, "sqrt_head_dim"], f"{pre}.attn/Div")
    s = g.op("Add", [s, ext_mask], f"{pre}.attn/Add_mask")
    s = g.op("Softmax", [s], f"{pre}.attn/Softmax", axis=-1)
    ctx = g.op("MatMul", [s, v], f"{pre}.attn/MatMul_V")
    ctx = g.op("Transpose", [ctx], f"{pre}.attn/Transpose", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, "shape_bsh"], f"{pre}.attn/Reshape")
    h = export_linear(g, ctx, f"{pre}.attn_output")
    h = g.op("Add", [h, x], f"{pre}.attn/Add_residual")
    x = export_layernorm(g, h, f"{pre}.attn_LayerNorm")

    f = export_linear(g, x, f"{pre}.intermediate")
    # GELU(erf) in the Div -> Erf -> Add -> Mul -> Mul order torch exports
    e = g.op("Div", [f, "sqrt_2"], f"{pre}.gelu/Div")
    e = g.op("Erf", [e], f"{pre}.gelu/Erf")
    e = g.op("Add", [e, "one"], f"{pre}.gelu/Add")
    e = g.op("Mul", [f, e], f"{pre}.gelu/Mul")
    e = g.op("Mul", [e, "half"], f"{pre}.gelu/Mul_half")
    h = export_linear(g, e, f"{pre}.output")
    h = g.op("Add", [h, x], f"{pre}.output/Add_residual")
    return export_layernorm(g, h, f"{pre}.output_LayerNorm")


def build_bert_onnx(p):
    g = GraphBuilder()
    for k, v in p.items():
        g.init(k, v)
    # Shape/scalar constants. 0 in a Reshape shape copies that input dim, so the
    # batch dimension stays symbolic.
    g.init("shape_bshd", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    g.init("shape_bsh", np.array([0, 0, HIDDEN], np.int64))
    g.init("axis_1", np.array([1], np.int64))
    g.init("axis_2", np.array([2], np.int64))
    g.init("cls_index", np.array(0, np.int64))  # scalar -> Gather drops the seq axis
    g.init("sqrt_head_dim", np.array(np.sqrt(HEAD_DIM), np.float32))
    g.init("sqrt_2", np.array(np.sqrt(2.0), np.float32))
    g.init("one", np.array(1.0, np.float32))
    g.init("half", np.array(0.5, np.float32))
    g.init("mask_value", np.array(MASK_VALUE, np.float32))

    # Embeddings: word Gather + position table Add, then LayerNorm
    x = g.op("Gather", ["embeddings.word_embeddings", "input_ids"], "embeddings/word_Gather", axis=0)
    x = g.op("Add", [x, "embeddings.position_embeddings"], "embeddings/Add_position")
    x = export_layernorm(g, x, "embeddings.LayerNorm")

    # Extended attention mask (1 - float(mask)) * -10000 as [batch,1,1,seq], in
    # the node order HF BERT exports (mask[:, None, None, :] first, then Cast,
    # Sub, Mul). onnxruntime's transformer optimizer matches exactly this chain
    # when fusing Attention, so keep the Unsqueezes before the Cast.
    m = g.op("Unsqueeze", ["attention_mask", "axis_1"], "mask/Unsqueeze_1")
    m = g.op("Unsqueeze", [m, "axis_2"], "mask/Unsqueeze_2")
    m = g.op("Cast", [m], "mask/Cast", to=TensorProto.FLOAT)
    m = g.op("Sub", ["one", m], "mask/Sub")
    ext_mask = g.op("Mul", [m, "mask_value"], "mask/Mul")

    for l in range(LAYERS):
        x = export_encoder_layer(g, x, l, ext_mask)

    cls = g.op("Gather", [x, "cls_index"], "pooler/Gather_cls", axis=1)
    pooled = g.op("Tanh", [export_linear(g, cls, "pooler")], "pooler/Tanh")
    export_linear(g, pooled, "classifier", out="logits")

    graph = helper.make_graph(
        g.nodes, "tiny_bert",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", SEQ_LEN]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", SEQ_LEN]),
        ],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=g.inits,
    )
    return finish_model(graph, "2-layer BERT-like encoder; label = count(token 2) > count(token 3).")


def make_tiny_bert():
    rng = np.random.default_rng(BERT_SEED)
    train = make_count_task(rng, N_TRAIN)
    test_ids, test_mask, test_labels = make_count_task(rng, N_TEST)
    calib_ids, calib_mask, _ = make_count_task(rng, N_CALIB)

    t0 = time.time()
    params = train_bert(rng, *train)
    print(f"[tiny_bert] trained {BERT_STEPS} steps in {time.time() - t0:.1f}s")

    model_path = OUT_DIR / "tiny_bert.onnx"
    onnx.save(build_bert_onnx(params), str(model_path))
    np.savez(OUT_DIR / "tiny_bert_data.npz", input_ids=test_ids, attention_mask=test_mask,
             labels=test_labels)
    np.savez(OUT_DIR / "tiny_bert_calib.npz", input_ids=calib_ids, attention_mask=calib_mask)

    reference = bert_forward(params, test_ids, test_mask)
    feeds = {"input_ids": test_ids, "attention_mask": test_mask}
    logits = check_parity("tiny_bert", ort_session(model_path), feeds, reference)
    acc = float(np.mean(logits.argmax(1) == test_labels))
    print(f"[tiny_bert] onnxruntime fp32 test top-1: {acc * 100:.2f}% ({len(test_labels)} samples)")
    return acc


def main():
    t0 = time.time()
    cnn_acc = make_digits_cnn()
    bert_acc = make_tiny_bert()
    print(f"\nDone in {time.time() - t0:.1f}s. Files in {OUT_DIR}:")
    for path in sorted(OUT_DIR.glob("*.onnx")) + sorted(OUT_DIR.glob("*.npz")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"  {path.name:22s} {path.stat().st_size:>9,d} B  sha256:{digest}")
    assert cnn_acc >= 0.95, f"digits_cnn accuracy too low: {cnn_acc:.3f}"
    assert bert_acc >= 0.90, f"tiny_bert accuracy too low: {bert_acc:.3f}"


if __name__ == "__main__":
    main()
