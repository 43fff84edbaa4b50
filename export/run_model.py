"""Read and write the model of a run folder (``final_model.safetensors`` + ``run.json``).

Keys are ``autoencoder.<state-dict key>`` and ``head.<state-dict key>`` (the federation's model, fedmekt/artifacts.py)
and ``deployed.encoders.*`` / ``deployed.head.*`` (the deployed model, fedmekt/learn/deploy.py): a package ships
the deployed model when the folder holds one, else (a folder written before issue 19 §3) the federation's. A mixed
fleet's folder also keeps each narrower device class's model (``class.<class>.*``, fedmekt/learn/class_models.py);
the widest class ships the deployed one.
Loading goes through safetensors only: no pickle on files that may come from elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from fedmekt import device_classes
from fedmekt.artifacts import FINAL_MODEL, RUN_INFO, RunInfo, atomic_write_bytes, read_run_info, write_run_info
from fedmekt.errors import UserError
from fedmekt.learn.class_models import class_prefix
from fedmekt.learn.deploy import DeployedModel, load_deployed
from fedmekt.learn.model import EncoderClassifier, LinearHead, SplitAutoencoder
from sensors.datasets import did_you_mean


@dataclass
class RunModel:
    """The model a run's packages ship (its encoders and head), rebuilt without the training data."""

    info: RunInfo
    autoencoder: SplitAutoencoder
    head: nn.Module

    @classmethod
    def of(cls, info: RunInfo, deployed: DeployedModel) -> RunModel:
        """The deployed model of a live server (``ServerEngine.deployed``)."""
        return cls(info, deployed.model, deployed.head)

    def classifier(self, modality: str) -> EncoderClassifier:
        """A CPU copy of ``modality``'s encoder followed by the generalized head (what gateways run).

        A copy, so exporting from a live aggregator never moves its model off the GPU or
        changes its train/eval mode.
        """
        encoder, head = (copy.deepcopy(m).cpu() for m in (self.autoencoder.encoders[modality], self.head))
        return EncoderClassifier(encoder, head).eval()


def save_run_model(run_dir: Path, info: RunInfo, autoencoder: SplitAutoencoder, head: LinearHead,
                   deployed: DeployedModel | None = None) -> None:
    """Write ``run.json`` and ``final_model.safetensors`` atomically (each file is old or new after a crash);
    with ``deployed``, the model its packages ship beside the federation's."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"autoencoder.{k}": v.detach().cpu().contiguous() for k, v in autoencoder.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    if deployed is not None:
        tensors.update({k: torch.from_numpy(v).contiguous() for k, v in deployed.state().items()})
    atomic_write_bytes(run_dir / FINAL_MODEL, safetensors.torch.save(tensors))
    write_run_info(run_dir, info)


def resolve_run_dir(path: Path) -> Path:
    """The run whose model ``path`` names: a run (``run.json``), or a run folder of ``fedmekt runs`` that holds
    exactly one (``runs/<variant>-seedK/``); with several, UserError naming them."""
    path = Path(path)
    if (path / RUN_INFO).is_file():
        return path
    inner = sorted(p.parent for p in path.glob(f"runs/*/{RUN_INFO}"))
    if len(inner) == 1:
        return inner[0]
    if inner:
        raise UserError(f"{path} holds {len(inner)} runs; export one of them: "
                        + ", ".join(str(p) for p in inner[:6]) + (" …" if len(inner) > 6 else ""))
    return path


def load_run_model(run_dir: Path, device_class: str | None = None) -> RunModel:
    """Rebuild the split autoencoder and head of a run (or of the one run in a run folder, ``resolve_run_dir``);
    with ``device_class``, the model that class's gateways deploy (:func:`run_classes`). One-line UserError if it
    is not one."""
    run_dir = resolve_run_dir(run_dir)
    for name in (RUN_INFO, FINAL_MODEL):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} is not a finished run folder: {name} is missing")
    try:
        info = read_run_info(run_dir)
        tensors = safetensors.torch.load_file(run_dir / FINAL_MODEL, device="cpu")
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise UserError(f"cannot read run folder {run_dir}: {exc}") from exc
    autoencoder = SplitAutoencoder(dict(info.channels), info.rep_size, info.hidden)
    head = LinearHead(info.rep_size, len(info.label_names))
    for prefix, module in (("autoencoder.", autoencoder), ("head.", head)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{run_dir / FINAL_MODEL} does not match run.json ({prefix[:-1]}): {first}") from exc
    autoencoder.eval()
    head.eval()
    if device_class is not None and device_class != _global_class(run_dir, info, tensors, device_class):
        return _class_model(run_dir, info, tensors, device_class)
    try:
        deployed = load_deployed(tensors, autoencoder, len(info.label_names))
    except ValueError as exc:
        raise UserError(f"{run_dir / FINAL_MODEL} does not match run.json (deployed model): {exc}") from None
    if deployed is not None:
        return RunModel.of(info, deployed)
    return RunModel(info, autoencoder, head)


def run_classes(info: RunInfo, tensors: dict) -> tuple[str, ...]:
    """The device classes a run produced a model for, narrow to wide: the global model's (the widest its fleet
    accepts: run.json's config) and each narrower one its model state keeps (``class.<class>.*``)."""
    fleet = info.extra.get("config", {}).get("fleet", device_classes.DEFAULT)
    try:
        accepted = device_classes.parse_fleet(fleet)
    except ValueError as exc:
        raise UserError(f"run.json's fleet cannot be read: {exc}") from None
    kept = {c for c in accepted if any(k.startswith(class_prefix(c)) for k in tensors)}
    return tuple(c for c in accepted if c == accepted[-1] or c in kept)


def _global_class(run_dir: Path, info: RunInfo, tensors: dict, wanted: str) -> str:
    """The class of the run's global model; UserError when ``wanted`` is a class the run has no model for."""
    have = run_classes(info, tensors)
    if wanted not in have:
        raise UserError(f"{run_dir} has no model of device class {wanted!r}{did_you_mean(wanted, have)}; "
                        f"it has: {', '.join(have)}")
    return have[-1]


def _class_model(run_dir: Path, info: RunInfo, tensors: dict, device_class: str) -> RunModel:
    """A narrower class's model: encoders of its width (run.json's standard ``hidden`` scaled) and its head."""
    hidden = device_classes.hidden_for(int(info.extra["config"]["hidden"]), device_class)
    student = SplitAutoencoder(dict(info.channels), info.rep_size, hidden)
    try:
        model = load_deployed(tensors, student, len(info.label_names), prefix=class_prefix(device_class))
    except ValueError as exc:
        raise UserError(f"{run_dir / FINAL_MODEL} does not match run.json (device class {device_class}): "
                        f"{exc}") from None
    return RunModel.of(dataclasses.replace(info, hidden=hidden), model)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run tiny LSTMs single-threaded: on a busy small machine extra intra-op threads make them ~10× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torch_classify(classifier: EncoderClassifier, x) -> tuple:
    """PyTorch reference output as numpy (embedding, logits) for a float32 array [B, T, C]."""
    with torch.inference_mode(), one_torch_thread():
        z, logits = classifier(torch.as_tensor(x, dtype=torch.float32))
    return z.numpy(), logits.numpy()
