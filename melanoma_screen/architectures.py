"""The architectures the project knows, one adapter each: what differs between a ViT and a LeViT lives here only.

An adapter says what to call the architecture (on the model card and in the
run tables), which feature tokens the input check measures and the heat-map
explains, how the logits follow from them, and which heat-map method applies.
The rest of the code asks `adapter_for(model)` instead of looking at the
model's attributes. A third architecture is one more entry in ADAPTERS; one
without feature tokens (`tokens=None`) is scored by pipeline() and PyTorch only,
for comparing recipes, and is not served by the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.model_type
    name: str  # the model card's first sentence
    short_name: str  # a column of the run tables
    card_tag: str  # the Hub tag
    # (model, pixel_values) -> (logits, (N, P, D) feature tokens) from one pass; None: no feature tokens.
    logits_and_tokens: Callable | None = None
    # The explain.HEATMAP_METHODS entry that maps this architecture's tokens back onto the picture.
    heatmap: str | None = None
    # The attention implementation the ONNX exporter needs (plain MatMul/Softmax ops every runtime has).
    export_attention: str | None = None
    # (config class, model class, settings) in transformers for train_vit.py --scratch-config MODEL_TYPE;
    # None: trained from random weights by its own recipe (ViT's sizes: modeling.SCRATCH_CONFIGS).
    scratch: tuple | None = None
    # Whether a trained model can be given another input size (train_vit.py --image-size): a LeViT's attention
    # biases are resized over the new grid of offsets (modeling.levit_at_resolution). A ViT's position embeddings
    # would need the same and have no code for it here.
    resizable: bool = False
    # (model) -> (its stem, its stages in order): what train_vit.py's --train-last-stages freezes and
    # --early-learning-rate-scale speeds up; None: neither option applies.
    stem_and_stages: Callable | None = None

    @property
    def servable(self) -> bool:
        """Whether the app serves it: the ONNX graph, the input check and the heat-map all need feature tokens."""
        return self.logits_and_tokens is not None


def levit_stem_and_stages(model):
    return model.levit.patch_embeddings, list(model.levit.encoder.stages)


def embedding_layer(config) -> int:
    return max(1, config.num_hidden_layers // 2)


def vit_logits_and_tokens(model, pixel_values):
    """The logits, and the patch tokens after the middle encoder layer.

    The input check measures their mean, and how far they spread around it,
    there rather than on the CLS token the classifier reads: trained to separate benign from malignant, the last CLS
    token maps much of what it has never seen onto one of the two classes,
    while the middle layer still describes texture and colour. With the model
    shipped in November 2026 and the same image statistics and validation
    acceptance (99%), the check accepted 98.4% of the test split and 99.6% of
    derm7pt with this layer, against 97.7% and 97.9% with the CLS token, and
    refused 95.1% of the generated non-lesions against 93.8%.
    """
    outputs = model.vit(pixel_values=pixel_values, output_hidden_states=True)
    logits = model.classifier(outputs.last_hidden_state[:, 0, :])
    return logits, outputs.hidden_states[embedding_layer(model.config)][:, 1:, :]


def _levit_first_stage_split(model) -> int:
    """Index of the first subsampling layer in LeViT's first stage: where the full patch grid ends."""
    from transformers.models.levit.modeling_levit import LevitAttentionSubsample

    layers = model.levit.encoder.stages[0].layers
    return next(i for i, layer in enumerate(layers) if isinstance(layer, LevitAttentionSubsample))


def levit_full_resolution_tokens(model, pixel_values):
    """LeViT's tokens at the end of its first stage, the last ones on the full patch grid: (N, P, D).

    For the reason given in vit_logits_and_tokens: after two attention and two MLP
    blocks and before the first subsampling, on the full 16-pixel patch grid, as
    ViT's are. Written out layer by layer, as LevitModel runs them, so that the
    tokens come from the same pass as the logits without a forward hook, which a
    second thread's pass would fire too.
    """
    hidden = model.levit.patch_embeddings(pixel_values)
    for layer in model.levit.encoder.stages[0].layers[:_levit_first_stage_split(model)]:
        hidden = layer(hidden)
    return hidden


def levit_logits_from_tokens(model, tokens):
    """The rest of LeViT's forward pass, from levit_full_resolution_tokens to the logits."""
    stages = model.levit.encoder.stages
    hidden = tokens
    for layer in stages[0].layers[_levit_first_stage_split(model):]:
        hidden = layer(hidden)
    for stage in stages[1:]:
        hidden = stage(hidden)
    # LevitForImageClassification: global average pooling, then the classifier.
    return model.classifier(hidden.mean(dim=1))


def levit_logits_and_tokens(model, pixel_values):
    tokens = levit_full_resolution_tokens(model, pixel_values)
    checked = getattr(model, "input_check_model", None)  # a site-adapted model: model_folder.attach_source_statistics
    return (levit_logits_from_tokens(model, tokens),
            tokens if checked is None else levit_full_resolution_tokens(checked, pixel_values))


# LeViT and MobileViTV2 have convolutional stems, said to train better from scratch on little data; both load
# through AutoModelForImageClassification and pipeline() without remote code. Sized to stay under the 25 MB the
# app's folder allows: LeViT-128S with one block fewer in its last stage (6.1 M parameters, 24.5 MB), MobileViTV2
# at width 0.5 (1.1 M, 4.5 MB).
ADAPTERS = {architecture.model_type: architecture for architecture in (
    Architecture("vit", "Vision Transformer (ViT)", "ViT", "vit", vit_logits_and_tokens, "attention_rollout",
                 export_attention="eager"),
    Architecture("levit", "LeViT (a vision transformer with a convolutional stem, Graham et al. 2021)", "LeViT-128S",
                 "levit", levit_logits_and_tokens, "token_attribution", resizable=True,
                 stem_and_stages=levit_stem_and_stages,
                 scratch=("LevitConfig", "LevitForImageClassification",
                          dict(hidden_sizes=[128, 256, 384], num_attention_heads=[4, 6, 8], depths=[2, 3, 3],
                               key_dim=[16, 16, 16]))),
    Architecture("mobilevitv2", "MobileViTV2 (a convolutional network with transformer blocks, Mehta & Rastegari 2022)",
                 "MobileViTV2-0.5", "mobilevitv2",
                 scratch=("MobileViTV2Config", "MobileViTV2ForImageClassification", dict(width_multiplier=0.5))),
)}


def adapter_for(model_or_config) -> Architecture | None:
    """The adapter of a model, a config or a config.json's model_type; None for an architecture not listed."""
    config = getattr(model_or_config, "config", model_or_config)
    return ADAPTERS.get(getattr(config, "model_type", config))


def servable(model_type) -> bool:
    adapter = adapter_for(model_type)
    return adapter is not None and adapter.servable


def resizable(model_type) -> bool:
    adapter = adapter_for(model_type)
    return adapter is not None and adapter.resizable


def display_name(model_type) -> str:
    adapter = adapter_for(model_type)
    return adapter.name if adapter is not None else str(model_type)


def logits_and_patch_tokens(model, pixel_values):
    """The classifier's logits, and the feature tokens the input check measures and the heat-map explains.

    An architecture without feature tokens gives its logits and no tokens, (N, 0, 1).
    """
    adapter = adapter_for(model)
    if adapter is not None and adapter.servable:
        return adapter.logits_and_tokens(model, pixel_values)
    logits = model(pixel_values=pixel_values).logits
    return logits, logits.new_zeros((logits.shape[0], 0, 1))
