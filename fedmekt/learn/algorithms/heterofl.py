"""HeteroFL (Diao et al., arXiv 2010.01264): width-sliced parameter averaging, baseline (b) of issue 22.

The parameter-averaging answer to a mixed fleet. The server keeps the widest accepted class's model and sends
it whole (one broadcast, as mmFedAvg's); a client of a narrower class takes the slice its width covers
(fedmekt/learn/slicing.py), trains it with mmFedAvg's client step unchanged, and uploads the slice. The server
averages each element over the clients whose slice covers it, weighted as mmFedAvg weights clients (``mm_weight``
for A+B clients), and keeps its old value where none did. Uploads are accumulated per width (``param/<key>@<h>``),
so the robust aggregation modes work within a width, where every upload has one shape; the widths are then
combined by their total weights. With one class this is mmFedAvg bit for bit (tests/test_heterofl.py).
"""

from __future__ import annotations

import numpy as np

from fedmekt.learn import slicing
from fedmekt.learn.algorithms.base import Party, ProxyWindows, Tensors, check_tensors, to_numpy
from fedmekt.learn.algorithms.mmfl import MultimodalFedAvg
from fedmekt.learn.robust import RoundUploads
from fedmekt.learn.streaming import StreamingMean
from sensors.partition import Partition

_PARAM = "param/"


class HeteroFL(MultimodalFedAvg):
    """mmFedAvg on width slices of the widest class's model."""

    width_sliced = True

    def __init__(self) -> None:
        super().__init__("")
        self.name = "heterofl"

    def class_spec(self, spec: dict[str, tuple[int, ...]], hidden: int) -> dict[str, tuple[int, ...]]:
        return {k: slicing.shape_at(k[len(_PARAM):], shape, hidden) for k, shape in spec.items()}

    def client_train(self, client: Party, down: Tensors, private: Partition, proxy: ProxyWindows | None,
                     rng: np.random.Generator) -> Tensors:
        """The wide model received, checked against this client's shapes at the wide width, sliced to its own."""
        own = self.upload_spec(client, client.modalities, 0)
        wide = slicing.width_of(down)
        if wide < client.model.hidden:
            raise ValueError(f"downstream: width {wide} is narrower than this client's {client.model.hidden}")
        check_tensors(down, self.class_spec(own, wide), "downstream")
        view = {k: slicing.sliced(k[len(_PARAM):], v, client.model.hidden) for k, v in down.items()}
        return super().client_train(client, view, private, proxy, rng)

    def teacher_view(self, server: Party, upload: Tensors, knowledge: Tensors) -> Tensors:
        """Each key tagged with the upload's width: the server's mean is per width (a validated upload)."""
        hidden = slicing.width_of(upload)
        return {f"{k}@{hidden}": v for k, v in upload.items()}

    def aggregate(self, server: Party, acc: StreamingMean | RoundUploads) -> Tensors:
        """Per parameter, the weighted mean of every element over the widths covering it; the server's value
        where none did. One width covering a parameter: its mean as it is (mmFedAvg's, bit for bit)."""
        state = server.model.state_dict()
        means = acc.mean()
        parts: dict[str, list[tuple[int, np.ndarray, float]]] = {}
        for k in sorted(means):
            name, hidden = k.rsplit("@", 1)
            parts.setdefault(name, []).append((int(hidden), means[k], acc.count(k)))
        out = {}
        for name, got in parts.items():
            key = name[len(_PARAM):]
            old = to_numpy(state[key])
            if len(got) == 1:
                new = old.copy()
                new[slicing.index(key, old.shape, got[0][0])] = got[0][1]
            else:
                total, weight = np.zeros(old.shape), np.zeros(old.shape)
                for hidden, mean, w in got:
                    idx = slicing.index(key, old.shape, hidden)
                    total[idx] += w * mean.astype(np.float64)
                    weight[idx] += w
                new = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), old).astype(np.float32)
            out[name] = new
        return out
