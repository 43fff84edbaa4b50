"""Federation configuration: one dataclass that every party (reproduce, aggregator, client) builds identically.

Defaults follow the authors' ``Setting.py`` (spec §6.1). Things the paper left implicit are explicit
fields here: how many proxy windows are exchanged per round (``proxy_windows`` × ``window`` rows),
which embedding layers cross the wire (``layers``: the representation only by default, chosen so that
FedMEKT sends a fraction of mmFedAvg's bytes; docs/fedmekt-c-selection.md), the wire dtype, the distillation term (``hyper.kd``:
the paper's softmax KL by default, embedding MSE as an option; compared on validation data in
docs/fedmekt-c-selection.md), whether the FedMEKT server also reconstructs over its whole proxy set
(``server_proxy_walk``, on by default since the same validation), how the proxy windows reach the clients
(``proxy_delivery``: the set once, or Π_t with each round, by bytes), optional privacy noise
on uploads (``embedding_noise``), and the ``faithful`` switch that keeps the authors' loss oddities O1–O3
(softmax KL over time) for comparison.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedmekt import device_classes
from fedmekt.errors import UserError
from fedmekt.wire.dtypes import ITEMSIZE as WIRE_ITEMSIZE
from fedmekt.wire.dtypes import WIRE_DTYPES
from sensors.datasets import did_you_mean

ALGORITHMS = ("fedmekt-c", "fedmekt-s", "mmfedavg", "mmfedprox", "mmmoon", "heterofl")
WIDTH_SLICED = ("heterofl",)   # parameter averaging over width slices: runs a mixed fleet (issue 22 baseline (b))
LAYERS = ("rep", "rep+hidden")
KD_LOSSES = ("mse", "kl", "kl-time", "kl-std", "mse-std", "relational")
ALIGNMENTS = ("none", "mse", "cosine", "infonce")
PARTITIONS = ("paper", "subject")
DEVICES = ("auto", "cpu", "cuda")
FEDERATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ROBUST_AGGREGATIONS = ("none", "clip", "trimmed")
PROXY_DELIVERIES = ("auto", "once", "round")
UPLOAD_WEIGHTS = ("uniform", "rounds")
SERVER_TEACHERS = ("mean", "heads", "heads-trust")   # fedmekt/learn/teacher_heads.py
HEADS_FROM = ("rep", "hidden")   # the server layer the teacher heads read (Hyper.heads_from)
DEPLOY_HEADS = ("linear", "mlp", "mlp-pool")   # fedmekt.learn.model.HEADS


@dataclass
class Hyper:
    """Optimisation hyperparameters (spec §6.1; never tuned on test data)."""

    lr_local: float = 0.004          # client Adam
    lr_global: float = 0.002         # server autoencoder Adam (FedMEKT)
    lr_classifier: float = 0.006     # generalized classifier Adam
    local_epochs: int = 2            # = private batches per round (one pass of sub-windows each)
    global_epochs: int = 2           # R: server distillation passes over the round's proxy windows
    classifier_epochs: int = 5
    alpha: float = 0.1               # client KD weight, representation layer
    beta: float = 0.04               # client KD weight, hidden layer
    eta: float = 0.1                 # server KD weight, representation layer
    gamma: float = 0.04              # server KD weight, hidden layer
    temperature: float = 3.0          # softmax temperature of kd = "kl"
    kd: str = "kl"                    # distillation term: "kl" (softmax KD at T, the paper), "mse" (embeddings),
                                      # "kl-time" (softmax over time), "kl-std"/"mse-std" (standardised targets),
                                      # "relational" (the windows' similarity structure: the server averages
                                      # each client's, so clients' latent spaces need not be aligned)
    relation_tau: float = 0.1         # temperature of the relational KD's row softmax over cosine similarities
    server_teacher: str = "heads-trust"  # what the FedMEKT server distils from: "mean" (the clients' mean embedding
                                         # through hyper.kd at weights eta, gamma: the paper), "heads" (a linear head
                                         # per client predicts its embedding from the global one; fedmekt/learn/
                                         # teacher_heads.py) or "heads-trust" (the same, each client weighted by how
                                         # well its head fits; chosen on validation: docs/fedmekt-c-selection.md);
                                         # heads replace the server's KD term only (hyper.kd stays the clients'),
                                         # and faithful = true keeps the paper's mean
    heads_weight: float = 1.0         # weight of the heads' term (a fraction of variance) per exchanged layer
    heads_from: str = "rep"           # the server's layer the per-client heads predict the clients' embeddings from:
                                      # "rep" (z itself) or "hidden" (h, the encoder's 32-wide first layer: the
                                      # clients' knowledge then shapes the trunk through a projection of its own and
                                      # leaves z to the reconstruction; issue 19 §2); server-side, nothing sent
    server_rec_rounds: int = 0        # FedMEKT server: from this round on its steps drop the proxy reconstruction
                                      # and the proxy walk stops, so the global encoder learns from the clients'
                                      # knowledge (and hyper.align's term on Π_t, when set) alone (issue 19 §2d:
                                      # a warm-up); 0 = reconstruct in every round
    align: str = "none"               # cross-modal alignment of z_A(t), z_B(t) on aligned windows, FedMEKT-C and
                                      # the mm-baselines (FedMEKT-C's server: proxy; A+B clients: private):
                                      # "none", "mse", "cosine", "infonce"
    align_weight: float = 1.0         # weight of the alignment term
    align_tau: float = 0.1            # InfoNCE temperature
    mask_ratio: float = 0.0           # clients' masked reconstruction (issue 19 §2d): each private step zeroes this
                                      # fraction of its input time steps and reconstructs the whole window; every
                                      # algorithm, so the comparison stays fair; 0 = the reference's plain AE
    batch: tuple[int, int] = (0, 0)  # client/classifier crops per batch, U[lo, hi); (0, 0) = dataset default
    sub_window: tuple[int, int] = (16, 32)  # sub-window length U[lo, hi) walked along each crop
    mm_weight: float = 100.0         # weight of A+B clients in mm-FedAvg aggregation (ALPHA)
    upload_weight: str = "uniform"   # server mean: "uniform", or "rounds" = each upload weighted by the rounds
                                     # the server has absorbed from that client, this one included (a client's
                                     # model persists in FedMEKT, so a longer-trained one counts more)
    prox_mu: float = 0.001
    moon_mu: float = 0.001
    moon_tau: float = 0.5
    probe_max_iter: int = 500        # final linear probe: L-BFGS iterations (full batch)
    local_step_budget: int = 32      # most private sub-window steps a client takes per round (all local epochs),
                                     # 0 = the reference's walk of the whole partition; 32 leaves UR Fall and
                                     # the bundled demo unchanged, caps full HAPT and large stores
    server_walk_step_budget: int = 32  # the same for the FedMEKT server's proxy walk (all global epochs)
    classifier_step_budget: int = 320  # the same for the classifier's walk of the labelled set (all
                                       # classifier epochs, per label modality); 320 leaves UR Fall, HAPT
                                       # and the demo unchanged, caps large labelled sets
    deploy_head: str = "mlp"         # the deployed model's head (fedmekt/learn/deploy.py): "linear", "mlp"
                                     # or "mlp-pool" (z with its mean and std over the last 24 steps)
    deploy_rounds: int = 50          # rounds of the classifier's schedule that fine-tune a copy of the federation's
                                     # encoders and the head on the labelled set; 0 = the federation's head on its
                                     # frozen encoders (mlp + 50: docs/fedmekt-c-selection.md, issue 19 §3)
    lr_deploy: float = 0.006         # Adam learning rate of that fine-tuning
    deploy_tune_encoder: bool = True  # False: the fine-tuning trains the head alone on the frozen encoders
    class_distil_steps: int = 480    # mixed fleet: sub-window steps distilling each narrower class's encoder
                                     # from the global one on the server's inputs (fedmekt/learn/class_models.py;
                                     # at 96, seed 0's UR Fall acce student was 0.35 MSE from
                                     # the teacher's z of variance 0.53; docs/results.md)
    class_distil_warm_steps: int = 96  # the same for a package before the last round: the student starts from the
                                       # class's previous package and takes this many steps (the last round's,
                                       # final figures and package, is always distilled afresh: every process
                                       # agrees with the in-process run whatever the package cadence)


def default_batch(dataset: str) -> tuple[int, int]:
    """Client batch range of the reference code: U[16,32) for UR Fall, U[128,256) otherwise (``uC:44-49``)."""
    return (16, 32) if dataset == "ur_fall" else (128, 256)


@dataclass
class FederationConfig:
    """Everything that determines a federated run; the same object on server and clients gives the same result."""

    federation: str = "demo"
    dataset: str = "demo"
    pair: tuple[str, str] = ("acce", "gyro")
    algorithm: str = "fedmekt-c"
    clients: tuple[int, int, int] = (10, 10, 10)
    per_round: int = 9
    rounds: int = 100
    seed: int = 0
    partition: str = "paper"
    wire_dtype: str = "auto"          # "float32" | "float16" | "int8" (FedMEKT only) | "auto" = int8 for FedMEKT
                                      # (float32 when faithful), float32 for the parameter baselines (wire_format)
    device: str = "auto"              # server side; "auto" = cuda when present
    client_device: str = "cpu"        # tiny LSTMs train faster on CPU; keeps clients bit-reproducible
    threads: int = 1
    faithful: bool = False            # keep O1–O3: time-axis softmax KL (whatever hyper.kd says), C-server KL
                                      # direction, KD counted twice
    rep_size: int = 0                 # 0 = the paper's r for the dataset/pair
    hidden: int = 32
    window: int = 24                  # proxy window length (fixed, as the reference server)
    proxy_windows: int = 48           # |Π_t|: proxy windows exchanged per round
    proxy_batch: int = 24             # proxy windows per distillation step (reference server batch for UR Fall)
    proxy_delivery: str = "auto"      # FedMEKT: "once" = the whole proxy set to every client at the start,
                                      # "round" = only Π_t's raw windows, with each round's global knowledge;
                                      # "auto" = whichever sends fewer bytes over the run (proxy_delivery_for)
    layers: str = "rep"               # embedding layers exchanged: "rep" (z) or "rep+hidden" (z and h, the
                                      # paper's; 3.4× mmFedAvg's bytes on UR Fall against rep's 0.22×)
    server_proxy_walk: bool = True    # FedMEKT server: each distillation epoch also walks the WHOLE proxy set
                                      # (reconstruction only, as a client walks its partition); no bytes sent
    server_walk_labelled: bool = False  # the server's walk also covers the labelled set's INPUTS (labels dropped):
                                        # data it already holds, no bytes sent
    label_modality: str = "AB"        # which encoders feed the generalized classifier: "A", "B" or "AB"
    eval_chunk: int = 2000            # EVAL_WIN of the paper's per-round probe
    embedding_noise: float = 0.0      # σ of Gaussian noise clients add to uploaded embeddings (privacy), 0 = off
    robust_aggregation: str = "clip"  # server: "none" (plain mean), "clip" (uploads pulled to within 3x the round's
                                      # median distance from the coordinate-wise median, then the mean) or "trimmed"
                                      # (coordinate-wise trimmed mean, "clip" when too few to trim); fedmekt/learn/robust.py
    fleet: str = "standard"           # device classes the federation accepts (fedmekt/device_classes.py): one class,
                                      # "mixed" (small, standard, large) or a comma list; the global model is the
                                      # widest; in-process runs deal the sorted clients round-robin over them
    hyper: Hyper = field(default_factory=Hyper)

    def __post_init__(self) -> None:
        self.pair = tuple(self.pair)
        self.clients = tuple(int(c) for c in self.clients)
        if isinstance(self.hyper, dict):
            self.hyper = _hyper_from_dict(self.hyper)
        self.validate()

    def validate(self) -> None:
        """Raise UserError (one line) for values no party could run with."""
        checks = [
            (isinstance(self.federation, str) and FEDERATION_NAME.fullmatch(self.federation) is not None,
             f"federation must be a name of letters, digits, '.', '_' or '-' (it is an MQTT topic level), "
             f"got {self.federation!r}"),
            (self.algorithm in ALGORITHMS, f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"),
            (self.wire_dtype in ("auto", *WIRE_DTYPES),
             f"wire_dtype must be one of {('auto', *WIRE_DTYPES)}, got {self.wire_dtype!r}"),
            (self.wire_dtype != "int8" or self.is_embedding,
             f"wire_dtype int8 quantises embeddings; {self.algorithm} averages parameters: use float32 or float16"),
            (self.layers in LAYERS, f"layers must be one of {LAYERS}, got {self.layers!r}"),
            (self.partition in PARTITIONS, f"partition must be one of {PARTITIONS}, got {self.partition!r}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
            (self.client_device in DEVICES, f"client_device must be one of {DEVICES}, got {self.client_device!r}"),
            (len(self.pair) == 2 and self.pair[0] != self.pair[1], f"pair must name two modalities, got {self.pair}"),
            (len(self.clients) == 3 and min(self.clients) >= 0 and sum(self.clients) > 0,
             f"clients must be three counts A,B,AB with a positive sum, got {self.clients}"),
            (1 <= self.per_round, f"per_round must be >= 1, got {self.per_round}"),
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.rep_size >= 0, f"rep_size must be >= 0 (0 = the paper's r), got {self.rep_size}"),
            (self.window >= 2 and self.proxy_windows >= 1 and self.proxy_batch >= 1,
             "window >= 2, proxy_windows >= 1 and proxy_batch >= 1 required"),
            (self.label_modality in ("A", "B", "AB"), f"label_modality must be A, B or AB, got {self.label_modality!r}"),
            (self.eval_chunk >= 1, f"eval_chunk must be >= 1, got {self.eval_chunk}"),
            (len(self.hyper.sub_window) == 2 and 1 <= self.hyper.sub_window[0] < self.hyper.sub_window[1],
             f"hyper.sub_window must be [lo, hi) with 1 <= lo < hi, got {self.hyper.sub_window}"),
            (self.proxy_delivery in PROXY_DELIVERIES,
             f"proxy_delivery must be one of {PROXY_DELIVERIES}, got {self.proxy_delivery!r}"),
            (self.robust_aggregation in ROBUST_AGGREGATIONS,
             f"robust_aggregation must be one of {ROBUST_AGGREGATIONS}, got {self.robust_aggregation!r}"),
            (self.hyper.kd in KD_LOSSES, f"hyper.kd must be one of {KD_LOSSES}, got {self.hyper.kd!r}"),
            (self.hyper.upload_weight in UPLOAD_WEIGHTS,
             f"hyper.upload_weight must be one of {UPLOAD_WEIGHTS}, got {self.hyper.upload_weight!r}"),
            (self.hyper.server_teacher in SERVER_TEACHERS,
             f"hyper.server_teacher must be one of {SERVER_TEACHERS}, got {self.hyper.server_teacher!r}"),
            (self.hyper.heads_weight >= 0, f"hyper.heads_weight must be >= 0, got {self.hyper.heads_weight}"),
            (self.hyper.heads_from in HEADS_FROM,
             f"hyper.heads_from must be one of {HEADS_FROM}, got {self.hyper.heads_from!r}"),
            (self.hyper.server_rec_rounds >= 0,
             f"hyper.server_rec_rounds must be >= 0 (0 = always), got {self.hyper.server_rec_rounds}"),
            (self.hyper.align in ALIGNMENTS, f"hyper.align must be one of {ALIGNMENTS}, got {self.hyper.align!r}"),
            (self.hyper.align_weight >= 0 and self.hyper.align_tau > 0,
             "hyper.align_weight must be >= 0 and hyper.align_tau > 0"),
            (0.0 <= self.hyper.mask_ratio < 1.0, f"hyper.mask_ratio must be in [0, 1), got {self.hyper.mask_ratio}"),
            (self.server_proxy_walk or not self.server_walk_labelled,
             "server_walk_labelled needs server_proxy_walk (it extends the server's walk)"),
            (self.hyper.temperature > 0, f"hyper.temperature must be > 0, got {self.hyper.temperature}"),
            (self.hyper.deploy_head in DEPLOY_HEADS,
             f"hyper.deploy_head must be one of {DEPLOY_HEADS}, got {self.hyper.deploy_head!r}"),
            (self.hyper.deploy_rounds >= 1 or self.hyper.deploy_head == "linear",
             f"hyper.deploy_head {self.hyper.deploy_head!r} needs hyper.deploy_rounds >= 1 "
             "(a fresh head must be trained)"),
            (self.hyper.deploy_rounds >= 0 and self.hyper.lr_deploy > 0,
             f"hyper.deploy_rounds must be >= 0 and hyper.lr_deploy > 0, got {self.hyper.deploy_rounds}, "
             f"{self.hyper.lr_deploy}"),
            (isinstance(self.embedding_noise, (int, float)) and not isinstance(self.embedding_noise, bool)
             and 0.0 <= self.embedding_noise < float("inf"),
             f"embedding_noise must be a finite number >= 0, got {self.embedding_noise!r}"),
        ]
        checks += self._fleet_checks()
        h = self.hyper
        checks += [(budget == 0 or budget >= epochs >= 1,
                    f"hyper.{name}_step_budget must be 0 (unbounded) or at least {epochs_name} ({epochs}), got {budget}")
                   for name, budget, epochs_name, epochs in (
                       ("local", h.local_step_budget, "local_epochs", h.local_epochs),
                       ("classifier", h.classifier_step_budget, "classifier_epochs", h.classifier_epochs),
                       ("server_walk", h.server_walk_step_budget, "global_epochs", h.global_epochs))]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def _fleet_checks(self) -> list[tuple[bool, str]]:
        """A mixed fleet needs embeddings of one shape (FedMEKT, exchanging the representation only) or parameters
        averaged over width slices (HeteroFL)."""
        try:
            classes = device_classes.parse_fleet(self.fleet)
        except ValueError as exc:
            return [(False, str(exc))]
        mixed = len(classes) > 1
        return [
            (not mixed or self.is_embedding or self.algorithm in WIDTH_SLICED,
             f"{self.algorithm} averages parameters, which needs one shape: a fleet of {self.fleet!r} cannot run "
             f"it (baseline (a): fleet = 'small', every client at the smallest class; baseline (b): heterofl)"),
            (not mixed or self.layers == "rep",
             f"a fleet of {self.fleet!r} exchanges the representation only (layers = 'rep'): the hidden layer's "
             f"width differs between device classes"),
            (self.hyper.class_distil_steps >= 1, f"hyper.class_distil_steps must be >= 1, got "
                                                 f"{self.hyper.class_distil_steps}"),
            (self.hyper.class_distil_warm_steps >= 0, f"hyper.class_distil_warm_steps must be >= 0, got "
                                                      f"{self.hyper.class_distil_warm_steps}"),
        ]

    @property
    def device_classes(self) -> tuple[str, ...]:
        """The device classes this federation accepts, narrow to wide."""
        return device_classes.parse_fleet(self.fleet)

    @property
    def is_embedding(self) -> bool:
        """True for FedMEKT (embeddings on the wire), False for the parameter-exchange baselines."""
        return self.algorithm.startswith("fedmekt")

    @property
    def default_wire_format(self) -> str:
        """What ``wire_dtype = "auto"`` sends: int8 embeddings (chosen by the rule of docs/fedmekt-c-selection.md,
        a quarter of float32's bytes), the paper's float32 when faithful, float32 parameters for the baselines."""
        return "int8" if self.is_embedding and not self.faithful else "float32"

    @property
    def wire_format(self) -> str:
        """The dtype every upload and round's knowledge travels in (``fedmekt.wire.dtypes``)."""
        return self.default_wire_format if self.wire_dtype == "auto" else self.wire_dtype

    @property
    def server_teacher(self) -> str:
        """What the FedMEKT server distils from: ``hyper.server_teacher``, or the paper's "mean" when faithful."""
        return "mean" if self.faithful else self.hyper.server_teacher

    @property
    def label_modalities(self) -> tuple[str, ...]:
        return tuple(m for m, tag in zip(self.pair, "AB") if tag in self.label_modality)

    def resolved_rep_size(self) -> int:
        """``rep_size`` or the paper's r for the dataset and pair (UR Fall with acce 2, Opp 10, else 4)."""
        if self.rep_size:
            return self.rep_size
        from sensors.datasets import builtin_info  # sensors never imports torch

        info = builtin_info(self.dataset)  # a dataset of your own gets the paper's default r = 4, as generic did
        return info.paper_rep_size(self.pair) if info is not None else 4

    def proxy_delivery_for(self, proxy_rows: int) -> str:
        """"once" or "round" for a proxy set of ``proxy_rows`` rows ("none" for the parameter baselines).

        "auto" compares the bytes the run's reports count (fedmekt.experiment.accounting: a round's knowledge goes to its
        selected clients): every client gets the set once (float32, as fedmekt.wire sends it), against
        ``proxy_windows`` x ``window`` rows in the wire dtype for each of the ``rounds`` x ``per_round``
        selections. Over MQTT every online client receives each round's knowledge, selected or not, so a
        deployment's worst case under "round" is ``rounds`` x ``proxy_windows`` x ``window`` rows per client.
        """
        if not self.is_embedding:
            return "none"
        if self.proxy_delivery != "auto":
            return self.proxy_delivery
        n = sum(self.clients)
        selections = self.rounds * min(self.per_round, n)
        per_round = selections * self.proxy_windows * self.window * WIRE_ITEMSIZE[self.wire_format]
        return "round" if per_round < n * proxy_rows * WIRE_ITEMSIZE["float32"] else "once"

    def resolved_batch(self) -> tuple[int, int]:
        return tuple(self.hyper.batch) if self.hyper.batch[0] > 0 else default_batch(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pair"] = list(self.pair)
        d["clients"] = list(self.clients)
        d["hyper"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["hyper"].items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FederationConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"unknown config key(s): {_near_misses(unknown, known)}")
        data = dict(data)
        _check_types(cls, {k: v for k, v in data.items() if k != "hyper"}, "")
        if "hyper" in data:
            if not isinstance(data["hyper"], dict):
                raise UserError(f"config key hyper must be a table, got {data['hyper']!r}")
            data["hyper"] = _hyper_from_dict(data["hyper"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"bad config: {exc}") from None


def _check_types(cls, data: dict[str, Any], prefix: str) -> None:
    """One line naming the key whose value has the wrong type (the dataclass defaults say which type)."""
    for f in fields(cls):
        if f.name not in data or f.default is MISSING:
            continue
        value, default = data[f.name], f.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        elif isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(
                isinstance(v, type(d)) and not isinstance(v, bool) for v, d in zip(value, default))
            kind = f"a list of {len(default)} {type(default[0]).__name__}s"
        else:
            continue
        if not ok:
            raise UserError(f"config key {prefix}{f.name} must be {kind}, got {value!r}")


def _near_misses(unknown: set[str], known) -> str:
    """``round (did you mean 'rounds'?), foo``: each unknown key with its near miss, if any."""
    return ", ".join(f"{k}{did_you_mean(k, sorted(known))}" for k in sorted(unknown))


def _hyper_from_dict(data: dict[str, Any]) -> Hyper:
    known = {f.name: f for f in fields(Hyper)}
    unknown = set(data) - set(known)
    if unknown:
        raise UserError(f"unknown hyper key(s): {_near_misses(unknown, known)}")
    _check_types(Hyper, data, "hyper.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return Hyper(**values)


def load_config(path: Path) -> FederationConfig:
    """Read a TOML file: top-level keys of FederationConfig plus an optional ``[hyper]`` table."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    return FederationConfig.from_dict(data)
