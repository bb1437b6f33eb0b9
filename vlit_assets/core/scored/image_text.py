"""Optional image-text relevance: the scorer interface and a CLIP scorer from a local directory.

Off by default. No PyPI package ships CLIP weights and model hubs are unreachable, so the scorer
only exists when configuration names a local model directory; without one, the pipeline reports
"not configured" and scores nothing. A missing or incomplete directory is an error that names the
path and the missing files, never a made-up score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

# Files transformers needs to build CLIPModel + CLIPProcessor offline. Weights may be either
# format; the tokenizer may be the fast (tokenizer.json) or the slow (vocab.json + merges.txt) one.
_REQUIRED = ("config.json", "preprocessor_config.json")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TOKENIZERS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class ImageTextModelMissing(FileNotFoundError):
    """The configured image-text model directory is absent or lacks files needed to load it."""


@runtime_checkable
class ImageTextScorer(Protocol):
    """Scores how well each text describes the image at the same position."""

    @property
    def model_name(self) -> str: ...

    def score(self, image_paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray: ...


def missing_model_files(model_path: Path) -> list[str]:
    """Files (or alternatives, joined by ' or ') the directory lacks; empty when loadable."""
    if not model_path.is_dir():
        return ["the directory itself"]
    present = {p.name for p in model_path.iterdir()}
    missing = [name for name in _REQUIRED if name not in present]
    if not any(name in present for name in _WEIGHTS):
        missing.append(" or ".join(_WEIGHTS))
    if not any(all(name in present for name in group) for group in _TOKENIZERS):
        missing.append(" or ".join("+".join(group) for group in _TOKENIZERS))
    return missing


def require_model_dir(model_path: Path) -> Path:
    missing = missing_model_files(model_path)
    if missing:
        raise ImageTextModelMissing(
            f"CLIP model directory {model_path} is unusable: missing {', '.join(missing)}. "
            "Point the image-text scorer at a local copy of a CLIP checkpoint "
            "(save_pretrained output of CLIPModel and CLIPProcessor), or leave it unset."
        )
    return model_path


class ClipScorer:
    """Cosine similarity of CLIP image and text embeddings, in [-1, 1].

    The directory is checked on construction; the model loads on the first ``score`` call.
    Texts longer than CLIP's 77-token window are truncated, which is CLIP's own limit.
    """

    def __init__(
        self, model_path: Path | str, *, batch_size: int = 16, device: str = "cpu"
    ) -> None:
        self.model_path = require_model_dir(Path(model_path).expanduser().resolve())
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._processor: Any = None

    @property
    def model_name(self) -> str:
        return f"clip:{self.model_path.name}"

    def _load(self) -> None:
        if self._model is not None:
            return
        from torch import nn
        from transformers import CLIPModel, CLIPProcessor

        path = str(self.model_path)
        try:
            self._processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
            model = CLIPModel.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # any failure here means the directory is not a usable CLIP
            message = f"CLIP model directory {path} failed to load: {exc}"
            raise ImageTextModelMissing(message) from exc
        # transformers wraps PreTrainedModel.to with functools.wraps, and typeshed's wrapper type
        # does not bind self, so mypy would read the device as the model; torch's Module.to is
        # the signature that applies (the call still runs transformers' override).
        self._model = cast(nn.Module, model).to(self.device).eval()

    def score(self, image_paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray:
        if len(image_paths) != len(texts):
            raise ValueError(f"{len(image_paths)} images but {len(texts)} texts")
        self._load()
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self._score_batch(image_paths[start:stop], texts[start:stop])
        return out

    def _score_batch(self, image_paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray:
        import torch
        from PIL import Image

        images = []
        for path in image_paths:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        inputs = self._processor(
            text=list(texts), images=images, return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        with torch.inference_mode():
            image_emb = _features(self._model.get_image_features(pixel_values=inputs.pixel_values))
            text_emb = _features(
                self._model.get_text_features(
                    input_ids=inputs.input_ids, attention_mask=inputs.attention_mask
                )
            )
        image_emb = torch.nn.functional.normalize(image_emb, dim=-1)
        text_emb = torch.nn.functional.normalize(text_emb, dim=-1)
        return (image_emb * text_emb).sum(dim=-1).float().cpu().numpy()


def _features(output: Any) -> Any:
    # transformers 5 returns a model output whose pooler_output holds the projected embedding;
    # earlier releases returned the tensor itself.
    return getattr(output, "pooler_output", output)


@dataclass(frozen=True)
class ImageTextConfig:
    """Where the optional CLIP model lives; ``None`` leaves image-text scoring off."""

    clip_model_path: str | None = None


def _configured_path(config: ImageTextConfig | Mapping[str, Any] | None) -> str | None:
    if config is None:
        return None
    value = config.get("clip_model_path") if isinstance(config, Mapping) else config.clip_model_path
    return str(value) if value else None


def describe_image_text_scorer(config: ImageTextConfig | Mapping[str, Any] | None) -> dict:
    """What the pipeline will do about image-text scoring, for run metadata and the docs."""
    path = _configured_path(config)
    if path is None:
        return {"status": "not configured", "model_path": None, "missing_files": []}
    resolved = Path(path).expanduser().resolve()
    return {
        "status": f"configured: {resolved}",
        "model_path": str(resolved),
        "missing_files": missing_model_files(resolved),
    }


def build_image_text_scorer(
    config: ImageTextConfig | Mapping[str, Any] | None,
) -> ClipScorer | None:
    """The configured scorer, ``None`` when not configured, an error when configured but broken."""
    path = _configured_path(config)
    return None if path is None else ClipScorer(path)
