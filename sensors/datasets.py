"""Dataset registry: one ``load_dataset`` call turns any supported source into ``list[Recording]``.

Where data lives: ``data_dir`` if given (either the dataset folder itself or a root holding
``<name>/``), else ``$FEDMEKT_DATA_DIR/<name>``, else ``../shared/data/<name>`` next to a source
checkout (an installed package has no default folder).
``demo`` is the small HAPT subset bundled in ``sensors/demo/`` (no download needed).

A dataset of your own (the generic format, docs/sensors.md) is known by the ``name`` in its
``dataset.toml``: ``--dataset NAME`` finds the folder whose descriptor says NAME, ``generic`` takes
whichever descriptor is there, and a ``--data-dir`` holding a descriptor needs no name at all.
Its facts (modalities, rate, labels) come from that descriptor, so they reach every run record.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sensors.errors import UserError
from sensors.recording import Recording

if TYPE_CHECKING:  # the generic reader is imported only when a dataset of your own is used
    from sensors.readers.generic import Descriptor

BUILTIN = ("ur_fall", "hapt", "hapt_uci", "mhealth", "opportunity", "demo")
DATASETS = (*BUILTIN, "generic")  # what --dataset takes, besides the name of a dataset of your own
DEMO_DIR = Path(__file__).resolve().parent / "demo"
_REPO = Path(__file__).resolve().parents[1]


def default_data_root() -> Path | None:
    """``$FEDMEKT_DATA_DIR``, else ``../shared/data`` beside a source checkout; None for an installed package
    (next to site-packages there is no data folder: installed, pass --data-dir or set FEDMEKT_DATA_DIR)."""
    if os.environ.get("FEDMEKT_DATA_DIR"):
        return Path(os.environ["FEDMEKT_DATA_DIR"]).expanduser()
    return _REPO.parent / "shared" / "data" if (_REPO / "pyproject.toml").is_file() else None


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: what a split/model needs before any file is read."""

    name: str
    modalities: dict[str, tuple[str, ...]]   # modality -> channel names (rgb: width set by the user's features)
    rate_hz: float
    label_names: tuple[str, ...]
    default_pair: tuple[str, str]
    unit_kind: str                            # what one Recording is: "run" or "subject"
    split_by: str                             # what the splits are disjoint by: "run" or "subject"
    n_div: int                                # divisions of the paper's client_idxs (spec §2.4)
    rep_sizes: dict[str, int] = field(default_factory=dict)  # paper rep size by modality present ("*" = default)
    download: str = ""

    @property
    def channels(self) -> dict[str, int]:
        """Channel counts of the fixed-width modalities (UR Fall's optional rgb width comes from your files)."""
        return {m: len(c) for m, c in self.modalities.items() if c}

    def paper_rep_size(self, pair: tuple[str, str] | None = None) -> int:
        """The paper's representation size r (``S.py:87-97``): UR Fall 2 when acce is in the pair, else 4."""
        for m in pair or self.default_pair:
            if m in self.rep_sizes:
                return self.rep_sizes[m]
        return self.rep_sizes["*"]


def _info() -> dict[str, DatasetInfo]:
    from sensors.readers import hapt, mhealth, opportunity, ur_fall

    hapt_kw = dict(
        modalities=dict(hapt.CHANNELS), rate_hz=hapt.RATE_HZ, label_names=hapt.LABEL_NAMES,
        default_pair=("acce", "gyro"), unit_kind="run", split_by="subject", n_div=100, rep_sizes={"*": 4},
    )
    return {
        "ur_fall": DatasetInfo(
            "ur_fall", {"acce": ur_fall.ACCE_CHANNELS, "depth": ur_fall.DEPTH_CHANNELS, "rgb": ()}, ur_fall.RATE_HZ,
            ur_fall.LABEL_NAMES, ("acce", "depth"), "run", "run", 10, {"acce": 2, "*": 4},
            "http://fenix.univ.rzeszow.pl/~mkepski/ds/uf.html (research use only)",
        ),
        "hapt": DatasetInfo("hapt", **hapt_kw, download="shared/data/hapt/hapt_raw.npz (CC BY 4.0)"),
        "hapt_uci": DatasetInfo(
            "hapt_uci", **hapt_kw,
            download="https://archive.ics.uci.edu/dataset/341 (RawData/ folder, CC BY 4.0)",
        ),
        "demo": DatasetInfo("demo", **hapt_kw, download="bundled: sensors/demo/ (HAPT subset, CC BY 4.0)"),
        "mhealth": DatasetInfo(
            "mhealth", dict(mhealth.CHANNELS), mhealth.RATE_HZ, mhealth.LABEL_NAMES, ("acce", "gyro"),
            "subject", "subject", 100, {"*": 4}, "https://archive.ics.uci.edu/dataset/319 (MHEALTHDATASET/*.log)",
        ),
        "opportunity": DatasetInfo(
            "opportunity", dict(opportunity.CHANNELS), opportunity.RATE_HZ, opportunity.LABEL_NAMES,
            ("acce", "gyro"), "run", "run", 100, {"*": 10},
            "https://archive.ics.uci.edu/dataset/226 (challenge release S{s}-ADL{r}.dat)",
        ),
    }


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'ur_fall'?)`` for a near miss of one of ``choices``, else ``""``: typos are the usual cause."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def builtin_info(name: str) -> DatasetInfo | None:
    """Static facts of a built-in dataset; None for ``generic`` and datasets of your own."""
    return _info().get(name)


def _descriptor_dirs(name: str, data_dir: Path | str | None) -> list[Path]:
    """Folders that may hold the descriptor of dataset ``name``, in the order they are tried."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / name] if name != "generic" else [root]
    base = default_data_root()
    return [base / name] if base is not None else []


def find_generic(name: str, data_dir: Path | str | None) -> tuple[Path, Descriptor]:
    """The folder and descriptor of a dataset in the generic format: ``generic`` takes the descriptor in
    ``data_dir``; any other name takes the first folder whose descriptor carries that name."""
    from sensors.readers.generic import DOCS, Descriptor, find_descriptor

    tried, other, names = [], None, list(DATASETS)
    for folder in _descriptor_dirs(name, data_dir):
        file = find_descriptor(folder)
        tried.append(str(folder))
        if file is None:
            continue
        d = Descriptor.load(file, reserved=BUILTIN)
        if name in ("generic", d.name):
            return folder, d
        other = other or f"; {file} names dataset {d.name!r}"
        names.append(d.name)
    what = ("dataset 'generic' not found" if name == "generic"
            else f"unknown dataset {name!r}{did_you_mean(name, names)}")
    where = " or ".join(tried) or "no folder"
    raise UserError(f"{what}: no dataset.toml or dataset.json naming it in {where}{other or ''} "
                    f"(built-in: {', '.join(BUILTIN)}; for your own data {DOCS}; pass --data-dir or set "
                    "FEDMEKT_DATA_DIR)")


def resolve_name(name: str | None, data_dir: Path | str | None, default: str | None = None) -> str:
    """The dataset a command works on: a built-in name as given; ``generic`` or a name of your own as its
    descriptor says; no name: the dataset whose descriptor lies in ``data_dir``, else ``default``."""
    if name is None:
        from sensors.readers.generic import DOCS, find_descriptor

        if data_dir is None or find_descriptor(Path(data_dir).expanduser()) is None:
            if data_dir is not None and not Path(data_dir).expanduser().is_dir():
                raise UserError(f"data folder {data_dir} does not exist")
            if default is None:
                where = "" if data_dir is None else f", and {data_dir} holds no dataset.toml or dataset.json"
                raise UserError(f"no dataset named{where}: name one ({', '.join(BUILTIN)}) or pass the --data-dir "
                                f"of your own dataset ({DOCS})")
            return default
        name = "generic"
    return name if name in BUILTIN else find_generic(name, data_dir)[1].name


def dataset_info(name: str, data_dir: Path | str | None = None) -> DatasetInfo:
    """What a split/model needs to know of ``name`` before reading its files (channels, rate, labels, rep size);
    for a dataset of your own it comes from its descriptor."""
    info = builtin_info(name)
    if info is not None:
        return info
    folder, d = find_generic(name, data_dir)
    mods = list(d.modalities)
    return DatasetInfo(
        d.name, dict(d.modalities), d.run_rate_hz, d.label_names, (mods[0], mods[1] if len(mods) > 1 else ""),
        "run", "subject", 100, {"*": 4}, f"your own files in {folder}",
    )


def resolve_dir(name: str, data_dir: Path | str | None) -> Path:
    """Where ``name`` lives; raises UserError with the path tried when it does not exist."""
    if name == "demo":
        return Path(data_dir) if data_dir is not None else DEMO_DIR
    if name not in BUILTIN:
        return find_generic(name, data_dir)[0]
    folder = {"hapt_uci": "hapt_uci"}.get(name, name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        candidates = [root / folder, root]
    elif default_data_root() is not None:
        candidates = [default_data_root() / folder]
    else:
        raise UserError(f"dataset {name!r}: pass --data-dir or set FEDMEKT_DATA_DIR (an installed fedmekt has no "
                        "default data folder)")
    for c in candidates:
        if c.exists():
            return c
    raise UserError(f"dataset {name!r} not found at {candidates[-1]} (pass --data-dir or set FEDMEKT_DATA_DIR)")


# name -> (reader module, function) — imported lazily so one broken optional path never blocks the rest.
_READERS = {
    "ur_fall": ("ur_fall", "read"),
    "hapt": ("hapt", "read_npz"),
    "demo": ("hapt", "read_npz"),
    "hapt_uci": ("hapt", "read_uci_raw"),
    "mhealth": ("mhealth", "read"),
    "opportunity": ("opportunity", "read"),
    "generic": ("generic", "read"),
}


def load_dataset(name: str, data_dir: Path | str | None = None, **opts) -> list[Recording]:
    """Read every recording of ``name`` (one per run or subject); ``opts`` go to the reader.

    Reader options: ur_fall ``rgb_dir``; opportunity ``faithful`` (paper's duplicated gyro columns).
    Any name that is not built in is read in the generic format (``find_generic``).
    """
    path = resolve_dir(name, data_dir)
    module, func = _READERS[name if name in BUILTIN else "generic"]
    reader = getattr(importlib.import_module(f"sensors.readers.{module}"), func)
    unknown = set(opts) - set(inspect.signature(reader).parameters)
    if unknown:
        raise UserError(f"dataset {name!r} does not take option(s) {sorted(unknown)}")
    try:
        return reader(path, dataset=name, **opts)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # corrupt or truncated files
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(f"dataset {name!r} in {path} cannot be read ({exc.__class__.__name__}: {reason})") from None
