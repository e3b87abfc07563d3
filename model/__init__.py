"""FASeg model: backbones, pixel decoder, transformer decoder, heads, presets."""

from .checkpoint import from_pretrained, load_serving_module, save_pretrained
from .config import ModelConfig, apply_overrides
from .faseg import FASeg, build_model
from .inference import ServingHead, labels_and_confidence, pad_to_multiple, semantic_inference
from .presets import get_preset, preset_names
from .transformer_decoder import DecoderOutput

__all__ = [
    "DecoderOutput",
    "FASeg",
    "ModelConfig",
    "ServingHead",
    "apply_overrides",
    "build_model",
    "from_pretrained",
    "get_preset",
    "labels_and_confidence",
    "load_serving_module",
    "pad_to_multiple",
    "preset_names",
    "save_pretrained",
    "semantic_inference",
]
