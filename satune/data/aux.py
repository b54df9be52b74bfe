"""Auxiliary data for BiaMAT: one or more sources mixed into one stream drawn beside the primary set.

Every source is brought to the primary images' shape (channels converted, bilinear resize), its
labels are offset so the sources sit side by side in the auxiliary head, and each image remembers
its source (for per-source gate statistics). The stream cycles on its own, reshuffled every pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from satune.data.catalog import DataError, load_raw
from satune.data.sources import Batch, TensorSource
from satune.data.splits import reshape, restrict_classes, stratified_split
from satune.specs import AUX_CLASSES, AuxSpec, DataSpec

NOISE_IMAGES = 5000


@dataclass
class AuxData:
    source: TensorSource  # labels already offset into the shared auxiliary head
    labels: tuple[str, ...]  # one name per source, for metric keys
    source_of: torch.Tensor  # source index per auxiliary image
    n_classes: int

    def stream(self, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        """Endless batches: each pass over the mixed set is reshuffled by `gen`."""
        while True:
            yield from self.source.batches(batch_size, gen)


def load_aux(
    specs: list[AuxSpec],
    shape: tuple[int, int, int],
    augment: str,
    cache: Path,
    device: torch.device,
    default_root: str | None = None,
) -> AuxData:
    """Every source at the primary's `shape`; torchvision sources without a root use `default_root`."""
    xs, ys, sources = [], [], []
    offset = 0
    for i, spec in enumerate(specs):
        try:
            x, y = _noise(spec, shape) if spec.dataset == "noise" else _images(spec, cache, default_root)
        except DataError as exc:  # name the auxiliary source, not the primary data
            raise DataError(str(exc).replace("trial.data.", f"trial.method.aux[{i}].")) from None
        if spec.size is not None and spec.dataset != "noise" and spec.size < len(y):
            _, keep = stratified_split(y, spec.size / len(y), seed=i)
            x, y = x[keep], y[keep]
        xs.append(reshape(x, shape))
        ys.append(y + offset)
        sources.append(torch.full((len(y),), i, dtype=torch.int64))
        offset += spec.n_classes
    source = TensorSource(torch.cat(xs), torch.cat(ys), augment).to(device)
    return AuxData(source, tuple(s.label for s in specs), torch.cat(sources).to(device), offset)


def _images(spec: AuxSpec, cache: Path, default_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's training split (never its test split), restricted to its classes."""
    data = DataSpec.model_validate(
        {"dataset": spec.dataset, "root": spec.root or default_root, "download": spec.download}
    )
    raw = load_raw(data, cache)
    x, y = raw.train_x, raw.train_y
    if spec.classes is not None:
        x, y = restrict_classes(x, y, raw.classes, tuple(spec.classes))
    return x, y


def _noise(spec: AuxSpec, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = spec.size or NOISE_IMAGES
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, len(AUX_CLASSES["noise"]), (n,), generator=g)
