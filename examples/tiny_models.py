"""Tiny configurations of ``transformers`` models: random init, no download.

The one place the examples, the tests, the benchmarks and the docs gallery
build GPT-2, LLaMA, BERT, ViT, ResNet and the rest from a config. Every
builder takes the same size keywords (``SIZES``: ``layers``, ``width``,
``heads``, ``ffn``, the feed-forward width, 2 * width unless given, ``vocab``,
``positions`` and ``attn``, the attention implementation), renames them to
what its config calls them, and passes any other keyword to the config as
it is. A size the model has no use for is a TypeError. The weights come
from torch's global generator: seed it first for the same weights.
``transformers`` is imported only when a model is built, so this module
imports without it. Not part of gradgraph's API.

Example:
    >>> from gradgraph.examples.tiny_models import gpt2
    >>> model = gpt2(layers=1, bos_token_id=0)  # doctest: +SKIP
    >>> model.config.n_layer, model.config.bos_token_id  # doctest: +SKIP
    (1, 0)
"""

from __future__ import annotations

import warnings

SIZES = {
    "layers": 2,
    "width": 32,
    "heads": 2,
    "ffn": None,
    "vocab": 64,
    "positions": 32,
    "attn": "eager",
}
# what BERT, LLaMA, ViT, ALBERT and GPT-NeoX configs call the sizes
STANDARD = {
    "layers": "num_hidden_layers",
    "width": "hidden_size",
    "heads": "num_attention_heads",
    "ffn": "intermediate_size",
    "vocab": "vocab_size",
    "positions": "max_position_embeddings",
    "attn": "attn_implementation",
}
# ViT has no tokens: its input is image x image pictures of patch x patch patches
IMAGE = {"image": "image_size", "patch": "patch_size", "channels": "num_channels"}


def _build(model_class, config_class, names, sizes, options=None, **fixed):
    """``transformers.<model_class>(<config_class>(...), **options)``, quietly.

    The config gets ``fixed``, then ``sizes`` over ``SIZES`` renamed by
    ``names`` (size -> config keyword; the sizes it leaves out are not the
    model's), then the other keywords of ``sizes`` as they are.
    """
    unused = set(sizes) & (set(SIZES) - set(names))
    if unused:
        raise TypeError(f"{config_class} has no size {sorted(unused)}")
    given = {**SIZES, **sizes}
    if given["ffn"] is None:
        given["ffn"] = 2 * given["width"]
    config = {**fixed}
    for key, value in given.items():
        if key in names or key not in SIZES:
            config[names.get(key, key)] = value

    import transformers
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its notices about a config made from scratch
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = getattr(transformers, config_class)(**config)
            return getattr(transformers, model_class)(config, **(options or {}))
    finally:
        logging.set_verbosity(verbosity)


def _names(**renamed) -> dict:
    """``STANDARD`` with some sizes renamed (None: the model has no such size)."""
    names = {**STANDARD, **renamed}
    return {size: name for size, name in names.items() if name is not None}


def gpt2(**sizes):
    """GPT-2 with its language-model head (tied to the token embedding) and
    its own feed-forward width (4 * width)."""
    names = _names(layers="n_layer", width="n_embd", heads="n_head", ffn=None)
    names["positions"] = "n_positions"
    return _build("GPT2LMHeadModel", "GPT2Config", names, sizes)


def llama(**sizes):
    """LLaMA with its language-model head: RMS norm, rotary embeddings, SiLU
    gate; ``kv_heads`` key/value heads (as many as ``heads`` unless given)."""
    names = _names(kv_heads="num_key_value_heads")
    return _build("LlamaForCausalLM", "LlamaConfig", names, sizes)


def gpt_neox(**sizes):
    """GPT-NeoX with its language-model head: rotary embeddings on a quarter of
    each head, parallel residual."""
    return _build("GPTNeoXForCausalLM", "GPTNeoXConfig", STANDARD, sizes)


def bloom(**sizes):
    """BLOOM with its language-model head: ALiBi position bias (no
    ``positions``), its own GeLU autograd.Function, feed-forward 4 * width."""
    names = _names(layers="n_layer", heads="n_head", ffn=None, positions=None)
    return _build("BloomForCausalLM", "BloomConfig", names, sizes)


def t5(**sizes):
    """T5 encoder-decoder, ``layers`` each, 8-wide heads, no dropout: relative
    position buckets (8) up to distance ``positions``, RMS norm,
    cross-attention."""
    names = _names(layers="num_layers", width="d_model", heads="num_heads")
    names.update(ffn="d_ff", positions="relative_attention_max_distance")
    fixed = {"d_kv": 8, "relative_attention_num_buckets": 8, "dropout_rate": 0.0}
    fixed["decoder_start_token_id"] = 0
    return _build("T5ForConditionalGeneration", "T5Config", names, sizes, **fixed)


def bert(pooling=True, **sizes):
    """BERT's encoder (``BertModel``), with its pooler unless ``pooling=False``."""
    options = {"add_pooling_layer": pooling}
    return _build("BertModel", "BertConfig", STANDARD, sizes, options)


def albert(**sizes):
    """ALBERT's encoder, no pooler, no dropout: 8-wide token embeddings
    (``embedding_size``), one layer's weights shared by all ``layers``."""
    fixed = {"embedding_size": 8, "hidden_dropout_prob": 0.0}
    fixed["attention_probs_dropout_prob"] = 0.0
    options = {"add_pooling_layer": False}
    return _build("AlbertModel", "AlbertConfig", STANDARD, sizes, options, **fixed)


def vit(pooling=True, **sizes):
    """The vision transformer's encoder (``ViTModel``) on ``image`` x ``image``
    pictures (8, 3 ``channels``) cut into ``patch`` x ``patch`` patches (4);
    with its pooler unless ``pooling=False``."""
    names = _names(vocab=None, positions=None, **IMAGE)
    options = {"add_pooling_layer": pooling}
    fixed = {"image_size": 8, "patch_size": 4}
    return _build("ViTModel", "ViTConfig", names, sizes, options, **fixed)


def resnet(widths=(8, 16), depths=(1, 1)):
    """transformers' ResNet of basic blocks: stage ``i`` has ``depths[i]`` blocks
    ``widths[i]`` channels wide (the stem as wide as the first stage)."""
    return _build(
        "ResNetModel",
        "ResNetConfig",
        {},
        {},
        num_channels=3,
        embedding_size=widths[0],
        hidden_sizes=list(widths),
        depths=list(depths),
        layer_type="basic",
    )
