"""Univariate forecasting windows from embedded series, long-term forecasting CSVs or the gluonts repository.

Series (`Config.dataset`):
- embedded, no download: `co2` (statsmodels, Mauna Loa weekly CO2 1958-2001, 2,284 weeks; its 59 missing weeks
  are filled by linear interpolation), `sunspots` (statsmodels, yearly 1700-2008), `taylor` (pmdarima,
  half-hourly electricity demand of England and Wales, 5 June - 27 August 2000, 4,032 points);
- the long-term forecasting CSVs of the Informer/Autoformer line of work, read from `<data root>/ltsf/`
  (`ETTh1`, `ETTh2`, `ETTm1`, `ETTm2`, `ECL`, `Weather`, `ILI`, `Traffic`; a `date` column, the target column
  `Config.target`, "OT" by default: the univariate "S" setting);
- the gluonts repository (`gluonts:<name>`, e.g. `gluonts:electricity`), through `get_dataset` with its files
  under `<data root>/gluonts/`, downloaded there when the network allows.

Splits, per series, with gluonts' split utilities: the last `test_windows` forecast windows (starts
`window_distance` apart) are the test split, the `val_windows` before them the validation split
(`split(..., offset=-span).generate_instances(...)`), and the training windows slide with stride
`train_stride` over what comes before, targets included. So no training target is in a validation or test
window's label, and no validation target in a test label.

Each window is normalised by its own context: x = (context - shift) / scale, y = (label - shift) / scale with
shift the context mean and scale its standard deviation (floored at `min_scale` times the standard deviation of
the series' training part, so flat contexts stay finite). Methods see normalised windows; the evaluator maps the
predictive back with the split's `Windows` and scores in series units. `Windows.train_std` carries that training
part's standard deviation (numpy's, ddof = 0, as the LTSF line's `StandardScaler`) for the z-scored metrics
`mse_std` and `mae_std`; the training part is everything before the validation and test spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnnbench.data import LoadedData
from bnnbench.errors import UsageError, error_line, unknown_choice
from bnnbench.types import DataBundle, Split, Windows

__all__ = ["EMBEDDED", "LTSF_FILES", "Config", "Series", "load", "read_series", "shapes", "window_splits"]

EMBEDDED = ("co2", "sunspots", "taylor")
LTSF_FILES = {"ETTh1": "ETTh1.csv", "ETTh2": "ETTh2.csv", "ETTm1": "ETTm1.csv", "ETTm2": "ETTm2.csv",
              "ECL": "electricity.csv", "Weather": "weather.csv", "ILI": "national_illness.csv",
              "Traffic": "traffic.csv"}
GLUONTS_PREFIX = "gluonts:"


@dataclass(frozen=True)
class Config:
    dataset: str
    context_length: int
    prediction_length: int
    test_windows: int = 1
    val_windows: int = 1
    window_distance: int | None = None  # between window starts in val and test; default prediction_length
    seasonality: int | None = None  # MASE's season; default gluonts' for the series' frequency
    target: str = "OT"  # the column of a long-term forecasting CSV
    max_series: int | None = None  # the first series of a multi-series data set
    train_stride: int = 1
    min_scale: float = 0.01

    def __post_init__(self) -> None:
        if not (self.dataset in EMBEDDED or self.dataset in LTSF_FILES or self.dataset.startswith(GLUONTS_PREFIX)):
            choices = [*EMBEDDED, *LTSF_FILES, f"{GLUONTS_PREFIX}<name>"]
            raise ValueError(f"unknown dataset '{self.dataset}'; valid choices: {', '.join(choices)}")
        for name in ("context_length", "prediction_length", "test_windows", "train_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_windows < 0 or (self.window_distance is not None and self.window_distance < 1):
            raise ValueError("val_windows must be >= 0 and window_distance >= 1")
        if self.min_scale <= 0:
            raise ValueError(f"min_scale must be positive, got {self.min_scale}")

    @property
    def distance(self) -> int:
        return self.window_distance or self.prediction_length


@dataclass(frozen=True)
class Series:
    """One univariate series: its start period (which carries the frequency) and its values."""

    start: object  # pd.Period
    values: np.ndarray


def _embedded(name: str) -> list[Series]:
    import pandas as pd

    if name == "co2":
        from statsmodels.datasets import co2  # not statsmodels.api: its import costs seconds

        frame = co2.load_pandas().data["co2"].interpolate(method="linear")
        return [Series(pd.Period(frame.index[0], freq="W-SAT"), frame.to_numpy(np.float64))]
    if name == "sunspots":
        from statsmodels.datasets import sunspots

        frame = sunspots.load_pandas().data
        return [Series(pd.Period(str(int(frame["YEAR"].iloc[0])), freq="Y"),
                       frame["SUNACTIVITY"].to_numpy(np.float64))]
    from pmdarima.datasets import load_taylor

    return [Series(pd.Period("2000-06-05 00:00", freq="30min"), load_taylor().astype(np.float64))]


def _ltsf(name: str, target: str, root: Path) -> list[Series]:
    import pandas as pd

    from bnnbench.data.files import ROOT_HINT

    path = root / "ltsf" / LTSF_FILES[name]
    if not path.is_file():
        raise UsageError(f"{path} not found; put the {name} CSV of the Autoformer/Informer long-term forecasting "
                         f"data release there as {LTSF_FILES[name]} ({ROOT_HINT})")
    try:  # dates as text: read_csv would leave a column with one bad date as text, or take integers for epochs
        frame = pd.read_csv(path, dtype={"date": str})
    except (ValueError, OSError) as error:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        raise UsageError(f"{path}: not a long-term forecasting CSV: {error_line(error)}") from None
    if "date" not in frame.columns:
        raise UsageError(f"{path}: no 'date' column; the header names {', '.join(map(str, frame.columns))}")
    if target not in frame.columns:
        columns = [c for c in frame.columns if c != "date"]
        raise unknown_choice(f"target column of {path.name}", target, columns, "data.target")
    dates = _dates(frame["date"], path)
    return [Series(_start_period(dates, path), _finite_column(frame, target, path))]


def _dates(column, path: Path):
    """The 'date' column as datetimes, each a date in the first row's format and later than the row before."""
    import warnings

    import pandas as pd

    if len(column) < 3:
        raise UsageError(f"{path}: {len(column)} data row(s); a series needs at least 3 dated rows to show its "
                         "frequency")
    with warnings.catch_warnings():  # pandas warns when it must parse the dates one by one; the check below decides
        warnings.simplefilter("ignore")
        dates = pd.to_datetime(column, errors="coerce")
    if dates.dtype.kind != "M":  # tz-aware dates with several offsets stay objects
        raise UsageError(f"{path}: column 'date' mixes time zones; write every date in one")
    bad = np.flatnonzero(dates.isna())
    if bad.size:
        cell = column.iloc[int(bad[0])]
        shown = repr(cell) if isinstance(cell, str) else "nothing"
        raise UsageError(f"{path}: column 'date' must hold dates in the format of its first row, but data row "
                         f"{int(bad[0]) + 1} holds {shown} (rows with a bad date: {bad.size})")
    backwards = np.flatnonzero(dates.diff().iloc[1:] <= pd.Timedelta(0))
    if backwards.size:
        row = int(backwards[0]) + 2
        raise UsageError(f"{path}: column 'date' must increase row by row, but data row {row} ({column.iloc[row - 1]}) "
                         f"is not after the row before ({column.iloc[row - 2]})")
    return dates


def _start_period(dates, path: Path):
    """The first date as a period of the frequency the first 100 dates follow."""
    import pandas as pd

    first = dates.iloc[:100]
    freq = pd.infer_freq(first)
    if freq is None:
        raise UsageError(f"{path}: cannot infer a regular frequency from the first dates of the 'date' column")
    try:  # through the index: it maps month-end "ME" or quarter-start "QS-OCT" to a period's "M" or "Q-DEC"
        return pd.DatetimeIndex(first, freq=freq).to_period()[0]
    except ValueError as error:  # business hours, "WOM-1MON": frequencies that have no period
        raise UsageError(f"{path}: the dates' frequency '{freq}' has no pandas period type: {error}") from None


def _finite_column(frame, column: str, path: Path) -> np.ndarray:
    """The column as float64, every value a finite number. A NaN, inf or text cell would otherwise pass into the
    windows and only show after training, as a diverged loss or a NaN metric that blames the learning rate."""
    import pandas as pd

    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)  # text -> NaN
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row, cell = int(bad[0]), frame[column].iloc[int(bad[0])]
        shown = repr(cell) if isinstance(cell, str) else str(cell)  # text quoted; a number as the file writes it
        raise UsageError(f"{path}: column '{column}' must hold finite numbers, but data row {row + 1} (date "
                         f"{frame['date'].iloc[row]}) holds {shown} (rows with a bad value: {bad.size})")
    return values


def _gluonts(name: str, root: Path) -> list[Series]:
    from gluonts.dataset.repository import get_dataset

    folder = root / "gluonts"
    try:
        dataset = get_dataset(name, path=folder)
    except Exception as error:  # gluonts raises whatever its downloader does (URLError, HTTPError, ...)
        raise UsageError(f"gluonts dataset '{name}' is not under {folder} and could not be downloaded "
                         f"({type(error).__name__}: {error}); run bnnbench once with network access, or copy "
                         f"the gluonts repository folder '{name}' there") from None
    longest: dict[object, Series] = {}  # a repository test set repeats each series once per rolling window
    for index, entry in enumerate(dataset.test):
        key = entry.get("item_id", index)
        values = np.asarray(entry["target"], dtype=np.float64)
        if values.ndim == 1 and (key not in longest or len(values) > len(longest[key].values)):
            longest[key] = Series(entry["start"], values)
    return list(longest.values())


def source_files(config: Config, root: Path) -> list[Path]:
    """Every file `read_series` reads, for the data's fingerprint (none for the embedded series)."""
    if config.dataset in EMBEDDED:
        return []
    if config.dataset in LTSF_FILES:
        return [root / "ltsf" / LTSF_FILES[config.dataset]]
    folder = root / "gluonts" / config.dataset.removeprefix(GLUONTS_PREFIX)
    return sorted(path for path in folder.rglob("*") if path.is_file())


def read_series(config: Config, root: Path) -> list[Series]:
    """The data set's series, at most `max_series` of them."""
    if config.dataset in EMBEDDED:
        series = _embedded(config.dataset)
    elif config.dataset in LTSF_FILES:
        series = _ltsf(config.dataset, config.target, root)
    else:
        series = _gluonts(config.dataset.removeprefix(GLUONTS_PREFIX), root)
    return series[:config.max_series]


def _seasonality(config: Config, series: Series) -> int:
    if config.seasonality is not None:
        return config.seasonality
    from gluonts.time_feature import get_seasonality

    return get_seasonality(series.start.freqstr)


def _windows(inputs: list[np.ndarray], labels: list[np.ndarray], config: Config, train_std: list[float],
             seasonality: list[int] | None) -> Split:
    """Normalised (context, label) windows with their `Windows`; inputs are whole histories, `train_std` each
    window's series' training-part standard deviation. Without `seasonality` (training windows, never scored)
    the seasonal errors are NaN."""
    from gluonts.ev.ts_stats import seasonal_error

    contexts = np.stack([history[-config.context_length:] for history in inputs])
    shift = contexts.mean(axis=1)
    floor = config.min_scale * np.maximum(np.asarray(train_std), np.finfo(np.float64).tiny)
    scale = np.maximum(contexts.std(axis=1), floor)
    errors = (np.full(len(inputs), np.nan) if seasonality is None else
              [seasonal_error(history, season).item() for history, season in zip(inputs, seasonality, strict=True)])

    def tensor(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)

    x = (contexts - shift[:, None]) / scale[:, None]
    y = (np.stack(labels) - shift[:, None]) / scale[:, None]
    return Split(tensor(x), tensor(y), Windows(tensor(shift), tensor(scale), tensor(errors), tensor(train_std)))


def _empty(config: Config) -> Split:
    zeros = torch.zeros(0)
    return Split(torch.zeros(0, config.context_length), torch.zeros(0, config.prediction_length),
                 Windows(zeros, zeros, zeros, zeros))


def window_splits(series: list[Series], config: Config) -> tuple[Split, Split, Split]:
    """Train, validation and test windows of every series (see the module docstring)."""
    from gluonts.dataset.split import split

    span = {"test": config.prediction_length + (config.test_windows - 1) * config.distance,
            "val": config.prediction_length + (config.val_windows - 1) * config.distance if config.val_windows else 0}
    needed = span["test"] + span["val"] + config.context_length + config.prediction_length
    for index, item in enumerate(series):
        if len(item.values) < needed:
            raise UsageError(f"series {index} of {config.dataset} has {len(item.values)} points; the task's windows "
                             f"need at least {needed} (context, one training window, validation and test)")
    entries = [{"start": item.start, "target": item.values, "item_id": index} for index, item in enumerate(series)]
    train_part = [item.values[:len(item.values) - span["test"] - span["val"]] for item in series]
    train_std = [float(part.std()) for part in train_part]  # ddof = 0
    seasons = [_seasonality(config, item) for item in series]

    def evaluation_windows(dataset: list[dict], offset: int, windows: int) -> Split:
        _, template = split(dataset, offset=-offset)
        pairs = list(template.generate_instances(config.prediction_length, windows=windows,
                                                 distance=config.distance))
        per_window = [p // windows for p in range(len(pairs))]  # pairs come series by series
        return _windows([p[0]["target"] for p in pairs], [p[1]["target"] for p in pairs], config,
                        [train_std[i] for i in per_window], [seasons[i] for i in per_window])

    test = evaluation_windows(entries, span["test"], config.test_windows)
    without_test = [dict(entry, target=entry["target"][:-span["test"]]) for entry in entries]
    val = evaluation_windows(without_test, span["val"], config.val_windows) if config.val_windows else _empty(config)

    inputs, labels, owners = [], [], []
    length = config.context_length + config.prediction_length
    for index, part in enumerate(train_part):
        for end in range(length, len(part) + 1, config.train_stride):
            inputs.append(part[:end - config.prediction_length])
            labels.append(part[end - config.prediction_length:end])
            owners.append(index)
    train = _windows(inputs, labels, config, [train_std[i] for i in owners], None)
    return train, val, test


def shapes(config: Config) -> tuple[tuple[int, ...], int]:
    """The bundle's input shape and outputs, known without reading the series: one window's context and horizon."""
    return (config.context_length,), config.prediction_length


def load(config: Config, root: Path) -> LoadedData:
    """Windows of the configured series: x (N, context_length), y (N, prediction_length), normalised."""
    series = read_series(config, root)
    train, val, test = window_splits(series, config)
    input_shape, num_outputs = shapes(config)
    bundle = DataBundle(train=train, val=val, num_outputs=num_outputs, input_shape=input_shape)
    info = {"n_series": len(series), "n_windows": {"train": len(train), "val": len(val), "test": len(test)}}
    return LoadedData(bundle=bundle, test=test, info=info)
