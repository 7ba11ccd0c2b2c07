"""Vision Transformer ViT-B/16 (Dosovitskiy et al., 2020), as torchvision builds it.

``vit_b_16``: a 16x16 stride-16 patch embedding (``conv_proj``), the patch
grid flattened row by row (height, then width) in either data format, a
learned class token put in front, a learned position embedding added, twelve
pre-norm encoder blocks (LayerNorm, 12-head self-attention, residual;
LayerNorm, MLP 768 -> 3072 -> 768 with exact GELU, residual), a final
LayerNorm, and the head's Linear layer on the class token. LayerNorm
epsilon 1e-6 everywhere; dropout (0 in torchvision's model) is left out.

Layer names follow torchvision's modules with '_' for '.', the blocks'
``encoder.layers.`` prefix left out (``conv_proj``,
``class_token``, ``encoder_pos_embedding``, ``encoder_layer_0_ln_1``,
``encoder_layer_0_self_attention`` with q, k and v in one kernel as
torchvision's ``in_proj_weight``, ``encoder_layer_0_self_attention_out_proj``,
``encoder_layer_0_mlp_0``, ``encoder_layer_0_mlp_3``, ``encoder_ln``,
``heads_head``).

Input sizes: any height and width that are multiples of 16 (the position
embedding has one entry per patch, so the size is fixed when the model is
built; 224 unless given, ``include_top=False`` included). A torchvision
checkpoint for another grid (224: 14x14) is loaded with its position
embedding resized as torchvision's ``interpolate_embeddings`` does (bicubic,
``align_corners=True``, the class token's entry kept).

``include_top=False`` returns a vector per image, not a feature map:
``pooling=None`` gives the class token after the final LayerNorm (what the
head reads, 768 values); ``pooling="avg"`` / ``"max"`` the mean / maximum
of the patch tokens after the final LayerNorm (timm's ``global_pool``
"avg" / "max"), the class token left out.
"""

from __future__ import annotations

import functools
import math

import keras
from keras import ops

from multinet import layers
from multinet.models.base import build_model, make_constructor, resolve_input_shape
from multinet.registry import Family, ModelSpec, register_model, torchvision_weights

_PACKAGE = "multinet"
# (patch size, layers, heads, hidden size, MLP size), torchvision's vit_b_16.
CONFIGS = {"vit_b_16": (16, 12, 12, 768, 3072)}
DEFAULT_SIZE = 224
LN_EPSILON = 1e-6
# Keras' count_params() with the 1000-class top: torchvision's num_params
# (a ViT has no BatchNorm statistics, so both count the same tensors).
PARAMS = {"vit_b_16": 86_567_656}
_TORCH_FILES = {"vit_b_16": "vit_b_16-c867db91.pth"}
TOKEN_POOLINGS = {None: "token", "avg": "avg", "max": "max"}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Puts a learned token (torchvision's ``class_token``, shape (1, 1,
    hidden)) in front of a batch of token sequences (batch, tokens, hidden)."""

    def build(self, input_shape):
        self.token = self.add_weight(name="class_token", shape=(1, 1, int(input_shape[-1])),
                                     initializer="zeros")

    def call(self, inputs):
        token = ops.broadcast_to(ops.cast(self.token, inputs.dtype),
                                 (ops.shape(inputs)[0], 1, ops.shape(inputs)[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[2])

    def from_torchvision(self, params):
        if set(params) != {"class_token"}:
            raise ValueError(f"expected class_token, found {', '.join(sorted(params))}")
        return [params["class_token"]]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding (torchvision's
    ``encoder.pos_embedding``, shape (1, 1 + height * width, hidden)) to the
    class token and the ``grid`` (height, width) of patch tokens.

    ``from_torchvision`` resizes an embedding made for another square grid
    as torchvision's ``interpolate_embeddings`` does: the patch entries as a
    grid, bicubic with ``align_corners=True``; the class token's entry as is.
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)

    def build(self, input_shape):
        tokens = 1 + self.grid[0] * self.grid[1]
        if input_shape[1] is not None and input_shape[1] != tokens:
            raise ValueError(f"{self.name}: a {self.grid[0]}x{self.grid[1]} grid needs "
                             f"{tokens} tokens, got {input_shape[1]}")
        self.embedding = self.add_weight(
            name="pos_embedding", shape=(1, tokens, int(input_shape[-1])),
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + ops.cast(self.embedding, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "grid": list(self.grid)}

    def from_torchvision(self, params):
        import numpy as np

        from multinet.weights.torchvision import interpolate_bicubic

        if set(params) != {"pos_embedding"}:
            raise ValueError(f"expected pos_embedding, found {', '.join(sorted(params))}")
        embedding = np.asarray(params["pos_embedding"])
        expected = tuple(self.embedding.shape)
        if embedding.shape == expected or embedding.ndim != 3 or embedding.shape[0] != 1 \
                or embedding.shape[2] != expected[2]:
            return [embedding]  # as is (a wrong shape is reported as a mismatch)
        patches = embedding.shape[1] - 1
        side = math.isqrt(max(patches, 0))
        if side * side != patches or side == 0:
            raise ValueError(
                f"pos_embedding has {embedding.shape[1]} tokens: {patches} patches are not a "
                f"square grid to resize to {self.grid[0]}x{self.grid[1]}")
        grid = embedding[0, 1:].reshape(side, side, embedding.shape[2])
        resized = interpolate_bicubic(grid, self.grid).reshape(1, -1, embedding.shape[2])
        return [np.concatenate([embedding[:, :1], resized], axis=1)]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention's input side and attention, as torchvision's
    ``nn.MultiheadAttention`` computes it: one kernel (hidden, 3 * hidden)
    and bias project the tokens to queries, keys and values (in that order,
    torchvision's ``in_proj_weight`` transposed and ``in_proj_bias``), each
    split into ``num_heads`` heads; softmax(q k^T / sqrt(head size)) v, the
    heads concatenated. The output projection (``out_proj``) is the Dense
    layer that follows."""

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def build(self, input_shape):
        hidden = int(input_shape[-1])
        if hidden % self.num_heads:
            raise ValueError(f"{self.name}: {hidden} features do not split into "
                             f"{self.num_heads} heads")
        self.kernel = self.add_weight(name="kernel", shape=(hidden, 3 * hidden),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(3 * hidden,), initializer="zeros")

    def call(self, inputs):
        hidden = inputs.shape[-1]
        head_size = hidden // self.num_heads
        qkv = ops.matmul(inputs, ops.cast(self.kernel, inputs.dtype))
        qkv = qkv + ops.cast(self.bias, inputs.dtype)
        qkv = ops.reshape(qkv, (-1, ops.shape(inputs)[1], 3, self.num_heads, head_size))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = ops.dot_product_attention(query, key, value, scale=1.0 / math.sqrt(head_size))
        return ops.reshape(out, (-1, ops.shape(inputs)[1], hidden))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}

    def from_torchvision(self, params):
        if set(params) != {"in_proj_weight", "in_proj_bias"}:
            raise ValueError(f"expected in_proj_weight, in_proj_bias, found "
                             f"{', '.join(sorted(params))}")
        weight = params["in_proj_weight"]
        if weight.ndim != 2:
            raise ValueError(f"a {weight.ndim}D in_proj_weight")
        return [weight.T.copy(), params["in_proj_bias"]]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPooling(keras.layers.Layer):
    """A vector per sequence (batch, tokens, hidden) -> (batch, hidden): the
    first (class) token (``mode="token"``), or the mean or maximum of the
    others (``"avg"``, ``"max"``)."""

    def __init__(self, mode="token", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("token", "avg", "max"):
            raise ValueError(f"{self.name}: mode must be 'token', 'avg' or 'max', got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "token":
            return inputs[:, 0]
        reduce = ops.mean if self.mode == "avg" else ops.max
        return reduce(inputs[:, 1:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _layer_norm(name):
    return layers.LayerNormalization(epsilon=LN_EPSILON, name=name)


def encoder_block(x, num_heads, mlp_size, name):
    """torchvision's ``EncoderBlock`` (pre-norm) at inference."""
    hidden = x.shape[-1]
    y = _layer_norm(name + "_ln_1")(x)
    y = SelfAttention(num_heads, name=name + "_self_attention")(y)
    y = keras.layers.Dense(hidden, name=name + "_self_attention_out_proj")(y)
    x = keras.layers.Add(name=name + "_add_1")([y, x])
    y = _layer_norm(name + "_ln_2")(x)
    y = keras.layers.Dense(mlp_size, name=name + "_mlp_0")(y)
    y = layers.GELU(name=name + "_mlp_1")(y)  # exact, as nn.GELU()
    y = keras.layers.Dense(hidden, name=name + "_mlp_3")(y)
    return keras.layers.Add(name=name + "_add_2")([x, y])


def _features(x, fmt, model_name):
    patch, depth, heads, hidden, mlp_size = CONFIGS[model_name]
    x = layers.Conv2D(hidden, patch, strides=patch, data_format=fmt, name="conv_proj")(x)
    if fmt == "channels_last":
        _, grid_h, grid_w, _ = x.shape
        x = keras.layers.Reshape((grid_h * grid_w, hidden), name="patch_tokens")(x)
    else:  # (hidden, h, w) -> (hidden, h * w) -> (h * w, hidden): the same row-major order
        _, _, grid_h, grid_w = x.shape
        x = keras.layers.Reshape((hidden, grid_h * grid_w), name="patch_tokens_chw")(x)
        x = keras.layers.Permute((2, 1), name="patch_tokens")(x)
    x = ClassToken(name="class_token")(x)
    x = PositionEmbedding((grid_h, grid_w), name="encoder_pos_embedding")(x)
    for index in range(depth):
        x = encoder_block(x, heads, mlp_size, f"encoder_layer_{index}")
    return _layer_norm("encoder_ln")(x)


def _classifier(x, fmt, classes, activation):
    x = TokenPooling("token", name="class_token_output")(x)
    return keras.layers.Dense(classes, activation=activation, name="heads_head")(x)


def _pool(x, fmt, pooling):
    return TokenPooling(TOKEN_POOLINGS[pooling], name="pool")(x)


def _build(model_name, *, include_top, input_tensor, input_shape, pooling, classes,
           classifier_activation, data_format, has_weights=False, compute_format=None,
           default_size=DEFAULT_SIZE, name=None):
    patch = CONFIGS[model_name][0]
    data_format = layers.standardize_data_format(data_format)
    if input_shape is None and input_tensor is None:
        input_shape = layers.image_shape(default_size, data_format)
    shape = resolve_input_shape(
        model_name, input_shape, input_tensor, data_format=data_format,
        default_size=default_size, min_size=patch, include_top=include_top,
        fixed_top_size=None, has_weights=has_weights)
    size = shape[1:] if data_format == "channels_first" else shape[:2]
    shown = "(" + ", ".join(str(d) for d in shape) + ")"
    if None in size:
        raise ValueError(
            f"{model_name}: the input height and width must be known (the position embedding "
            f"has one entry per {patch}x{patch} patch), got input_shape {shown} ({data_format})")
    if size[0] % patch or size[1] % patch:
        raise ValueError(
            f"{model_name}: input height and width must be multiples of the patch size "
            f"{patch}, got input_shape {shown} ({data_format})")
    return build_model(
        model_name,
        features=functools.partial(_features, model_name=model_name),
        classifier=_classifier, pool=_pool,
        include_top=include_top, input_tensor=input_tensor, input_shape=shape,
        pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        data_format=data_format, compute_format=compute_format,
        default_size=default_size, min_size=patch, fixed_top_size=None,
        has_weights=has_weights, name=name, options={},
    )


def torchvision_names(model_name: str, options) -> dict[str, str]:
    """torchvision's modules: ``class_token`` (a parameter of the model
    itself, module ''), ``conv_proj``, ``encoder.pos_embedding`` (module
    ``encoder``), ``encoder.layers.encoder_layer_{i}.{ln_1, self_attention,
    self_attention.out_proj, ln_2, mlp.0, mlp.3}``, ``encoder.ln``,
    ``heads.head``. Checkpoints saved before torchvision 0.14 name the MLP's
    Linear layers ``mlp.linear_1`` and ``mlp.linear_2``; both load."""
    depth = CONFIGS[model_name][1]
    names = {"": "class_token", "conv_proj": "conv_proj", "encoder": "encoder_pos_embedding",
             "encoder.ln": "encoder_ln", "heads.head": "heads_head"}
    for index in range(depth):
        module, layer = f"encoder.layers.encoder_layer_{index}.", f"encoder_layer_{index}_"
        for part in ("ln_1", "self_attention", "self_attention.out_proj", "ln_2", "mlp.0",
                     "mlp.3"):
            names[module + part] = layer + part.replace(".", "_")
        names[module + "mlp.linear_1"] = layer + "mlp_0"
        names[module + "mlp.linear_2"] = layer + "mlp_3"
    return names


FAMILY = Family(
    name="vit",
    head_layers=("heads_head",),
    torchvision_names=torchvision_names,
    preprocessing={"torchvision": "torch"},
    description="Vision Transformer ViT-B/16 (torchvision)",
)

for _model_name in CONFIGS:
    register_model(ModelSpec(
        name=_model_name,
        family=FAMILY,
        builder=functools.partial(_build, _model_name),
        default_size=DEFAULT_SIZE,
        min_size=CONFIGS[_model_name][0],
        num_params=PARAMS[_model_name],
        weights=(torchvision_weights(_TORCH_FILES[_model_name]),),
        default_weights="torchvision",
        description=("ViT-B/16: 16x16 patches, 12 pre-norm encoder blocks, 12 heads, width "
                     "768; any input size that is a multiple of 16"),
    ))

ViTB16 = make_constructor(
    "vit_b_16", "ViTB16",
    "Vision Transformer ViT-B/16 (torchvision's vit_b_16); input sizes are multiples of 16, "
    "``include_top=False`` gives the class token (``pooling=None``) or the mean / maximum of "
    "the patch tokens (``'avg'`` / ``'max'``).")
