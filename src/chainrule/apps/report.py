"""One self-contained HTML page for a training run, or a comparison of several runs.

:func:`write_report` reads what :func:`chainrule.apps.pipeline.train_run` leaves in a run
directory — ``best/config.json`` (or ``last/config.json`` while a run is still training),
``results.json``, ``log.csv``, ``config.toml``, ``samples.png`` / ``samples.txt`` — and writes an
HTML file that needs nothing else: the CSS is inline and every picture (the sample grid, one
matplotlib figure of all runs' training and validation curves) is a base64 ``data:`` URI, so the
page can be mailed or archived as one file. No weights are loaded. Pieces a run does not have yet
(no ``results.json`` while it trains) are shown as "—".
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chainrule._version import __version__
from chainrule.apps.rundir import holds_run
from chainrule.apps.plotting import finite_float, read_training_log
from chainrule.errors import CheckpointError, InputError
from chainrule.io.checkpoint import CONFIG_FILE, read_config
from chainrule.io.outputs import check_output, output_file

#: What is shown for a value a run does not (yet) have.
MISSING = "—"
#: At most this many characters of ``samples.txt`` go into the page.
MAX_TEXT_CHARS = 20_000


@dataclass
class RunInfo:
    """What the report shows of one run directory (``None`` / empty: not there)."""

    path: Path
    name: str
    model: str | None = None
    parameters: int | None = None
    dataset: str | None = None
    test: dict[str, Any] | None = None
    best_val_nll_nats: float | None = None
    epochs: int | None = None
    finished: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    config_source: str | None = None
    epochs_logged: list[int] = field(default_factory=list)
    train_nll: list[float | None] = field(default_factory=list)
    val_nll: list[float | None] = field(default_factory=list)
    samples_png: bytes | None = None
    samples_text: str | None = None
    data_kind: str | None = None  # "text", "audio", or None (images, vectors): which options mean something
    bound: dict[str, Any] | None = None  # a latent run's test bound and its terms (never an exact NLL)
    reconstruction: dict[str, Any] | None = None  # a VQ-VAE run's test reconstruction NLL and codebook usage


#: Options that only mean something for text runs (``level``) or for text and audio runs (the window);
#: the configuration table of other runs leaves them out.
TEXT_OPTIONS = frozenset({"level"})
SEQUENCE_OPTIONS = frozenset({"block-size", "block_size"})


def _shown_options(config: dict[str, Any], data_kind: str | None) -> list[tuple[str, Any]]:
    """The configuration rows of a run: without the text options on image or vector runs."""
    hidden = set() if data_kind == "text" else TEXT_OPTIONS | (set() if data_kind == "audio" else SEQUENCE_OPTIONS)
    return [(k, v) for k, v in _flatten(config) if k not in hidden]


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a run directory: it holds ``best/``, ``last/``, ``log.csv`` or ``results.json``."""
    path = Path(path)
    return path.is_dir() and (holds_run(path) or (path / "results.json").is_file())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _checkpoint_config(run: Path) -> dict[str, Any] | None:
    for sub in ("best", "last"):
        if (run / sub / CONFIG_FILE).is_file():
            try:
                return read_config(run / sub)
            except CheckpointError:
                continue
    return None


def _count_parameters(cfg: dict[str, Any]) -> int | None:
    """The model's parameter count, built from its config on the ``meta`` device (no memory, no weights)."""
    try:
        import torch

        from chainrule.models.registry import create_model, upgrade_hyperparameters

        with torch.device("meta"):
            model = create_model(cfg["model"], tuple(cfg["shape"]), cfg.get("num_values"),
                                 **upgrade_hyperparameters(cfg["model"], cfg.get("hyperparameters", {})))
        return int(model.num_parameters())
    except Exception:  # an unknown model or a config this version cannot build: shown as missing
        return None


def read_run(path: str | Path, name: str | None = None) -> RunInfo:
    """Everything the report shows of the run directory ``path``; an InputError when it is not one."""
    path = Path(path)
    if not is_run_dir(path):
        raise InputError(f"{path} is not a run directory (expected best/, last/, log.csv or results.json in it)")
    info = RunInfo(path=path, name=name or path.resolve().name)
    results = _read_json(path / "results.json")
    cfg = _checkpoint_config(path)
    extra = (cfg or {}).get("extra", {}) if isinstance((cfg or {}).get("extra", {}), dict) else {}
    if results is not None:
        info.finished = True
        info.model = results.get("model")
        info.dataset = results.get("dataset")
        info.parameters = results.get("parameters") if isinstance(results.get("parameters"), int) else None
        info.test = results.get("test") if isinstance(results.get("test"), dict) else None
        info.best_val_nll_nats = finite_float(results.get("best_val_nll_nats"))
        info.epochs = results.get("epochs_run") if isinstance(results.get("epochs_run"), int) else None
        info.bound = results.get("test_bound") if isinstance(results.get("test_bound"), dict) else None
        info.reconstruction = results.get("test_reconstruction") if isinstance(results.get("test_reconstruction"),
                                                                               dict) else None
    info.data_kind = ("text" if extra.get("tokenizer") is not None else
                      "audio" if extra.get("sample_rate") is not None else None)
    if cfg is not None:
        info.model = info.model or cfg.get("model")
        info.dataset = info.dataset or extra.get("dataset")
        if info.parameters is None:
            info.parameters = _count_parameters(cfg)
    info.epochs_logged, info.train_nll, info.val_nll = read_training_log(path / "log.csv")
    vals = [v for v in info.val_nll if v is not None]
    if info.best_val_nll_nats is None:
        info.best_val_nll_nats = min(vals) if vals else finite_float(extra.get("best_val_nll_nats"))
    if info.epochs is None and info.epochs_logged:
        info.epochs = len(info.epochs_logged)
    if (path / "config.toml").is_file():
        try:
            info.config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
            info.config_source = "config.toml"
        except (OSError, ValueError):
            pass
    if not info.config:
        for key in ("run_config", "train_config"):
            if isinstance(extra.get(key), dict) and extra[key]:
                info.config, info.config_source = extra[key], f"checkpoint extra.{key}"
                break
    if (path / "samples.png").is_file():
        info.samples_png = (path / "samples.png").read_bytes()
    elif (path / "samples.txt").is_file():
        text = (path / "samples.txt").read_text(encoding="utf-8", errors="replace")
        info.samples_text = text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "\n…"
    return info


# ---------------------------------------------------------------------- rendering
def _fmt(value: Any, digits: int = 4) -> str:
    """A number or text for the page (escaped); ``None`` as :data:`MISSING`. A float gets ``digits``
    decimals, or (``digits < 0``) ``-digits`` significant digits."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return html.escape(str(value))
        return f"{value:.{-digits}g}" if digits < 0 else f"{value:.{digits}f}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _test(info: RunInfo, key: str) -> float | None:
    return finite_float(info.test.get(key)) if info.test else None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def curves_png(runs: list[RunInfo]) -> bytes | None:
    """One PNG: every run's validation NLL (solid) and training NLL (dashed) per epoch; ``None``
    when no run has logged an epoch yet."""
    if not any(r.epochs_logged for r in runs):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for i, r in enumerate(runs):
        colour = f"C{i % 10}"
        for values, style, what in ((r.val_nll, "-", "validation"), (r.train_nll, "--", "train")):
            pts = [(e, v) for e, v in zip(r.epochs_logged, values) if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, marker="o" if style == "-" else None,
                        markersize=3, label=f"{r.name} {what}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per example)")
    ax.set_title("validation (solid) and training (dashed) NLL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:1.05em;margin:16px 0 6px}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:6px 0 12px;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}th{background:#f4f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;image-rendering:pixelated;border:1px solid #eee}
pre{background:#f7f7f9;border:1px solid #e3e3e8;padding:8px;overflow:auto;max-height:420px;white-space:pre-wrap}
.run{margin-bottom:24px}.cols{display:flex;gap:32px;flex-wrap:wrap}.cols>div{flex:1 1 320px}
.missing{color:#999}
"""


def _cell(value: Any, digits: int = 4) -> str:
    text = _fmt(value, digits)
    cls = "num" if isinstance(value, (int, float)) and not isinstance(value, bool) else ("missing" if value is None else "")
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def render_html(runs: list[RunInfo], title: str | None = None) -> str:
    """The report page for ``runs`` as one HTML string (every text escaped, every image inline)."""
    if not runs:
        raise InputError("a report needs at least one run directory")
    title = title or (f"chainrule report: {runs[0].name}" if len(runs) == 1 else f"chainrule report: {len(runs)} runs")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f'<p class="meta">written {html.escape(time.strftime("%Y-%m-%d %H:%M"))} by chainrule '
           f"{html.escape(__version__)}</p>"]
    if len(runs) > 1:
        out.append('<h2>Comparison</h2><table id="comparison"><tr><th>run</th><th>model</th><th>dataset</th>'
                   "<th>parameters</th><th>best val NLL (nats/example)</th><th>test NLL (nats/example)</th>"
                   "<th>test bits/dim</th><th>epochs</th></tr>")
        for r in runs:  # the dataset's file name (its folder is in each run's own section)
            data = Path(r.dataset).name if r.dataset and ("/" in r.dataset or "\\" in r.dataset) else r.dataset
            out.append(f"<tr><td>{html.escape(r.name)}</td>{_cell(r.model)}{_cell(data)}{_cell(r.parameters)}"
                       f"{_cell(r.best_val_nll_nats)}{_cell(_test(r, 'nll_nats'))}{_cell(_test(r, 'bits_per_dim'))}"
                       f"{_cell(r.epochs)}</tr>")
        out.append("</table>")
    curves = curves_png(runs)
    out.append("<h2>Training curves</h2>")
    if curves is not None:
        out.append(f'<img id="curves" alt="training and validation NLL per epoch" src="{_data_uri(curves)}">')
    else:
        out.append(f'<p class="missing">{MISSING} (no epoch logged yet)</p>')
    for i, r in enumerate(runs):
        status = "finished" if r.finished else "no results.json yet (still training, or stopped)"
        out.append(f'<div class="run" id="run-{i}"><h2>{html.escape(r.name)}</h2>'
                   f'<p class="meta">{html.escape(str(r.path))} — {html.escape(status)}</p>')
        out.append('<div class="cols"><div><h3>Run</h3><table>'
                   f"<tr><th>model</th>{_cell(r.model)}</tr><tr><th>parameters</th>{_cell(r.parameters)}</tr>"
                   f"<tr><th>dataset</th>{_cell(r.dataset)}</tr><tr><th>epochs</th>{_cell(r.epochs)}</tr>"
                   f"<tr><th>best val NLL (nats/example)</th>{_cell(r.best_val_nll_nats)}</tr></table>")
        unit = r.test.get("unit") if r.test and isinstance(r.test.get("unit"), str) else None
        # text runs lead with their unit (char, byte, token), as `chainrule eval` prints them
        per_unit = (f"<tr><th>NLL (nats/{html.escape(unit)})</th>{_cell(_test(r, 'nats_per_token'))}</tr>"
                    f"<tr><th>bits/{html.escape(unit)}</th>{_cell(_test(r, 'bits_per_token'))}</tr>") if unit else ""
        out.append("<h3>Test evaluation</h3><table class=\"eval\">" + per_unit +
                   f"<tr><th>NLL (nats/example)</th>{_cell(_test(r, 'nll_nats'))}</tr>"
                   + ("" if unit else f"<tr><th>bits/dim</th>{_cell(_test(r, 'bits_per_dim'))}</tr>") +
                   f"<tr><th>perplexity (per {html.escape(unit or 'variable')})</th>{_cell(_test(r, 'perplexity'))}</tr>"
                   f"<tr><th>examples</th>{_cell(r.test.get('num_examples') if r.test else None)}</tr></table></div>")
        if r.bound is not None:  # a latent run: its numbers are bounds, and say so
            b = r.bound
            out.append('<h3>Test upper bound</h3><table class="bound">'
                       "<tr><th>NLL upper bound -log p(z*) - log p(x|z*) (nats/example; not the exact NLL)</th>"
                       f"{_cell(b.get('nll_upper_bound_nats'))}</tr><tr><th>bits/dim upper bound</th>"
                       f"{_cell(b.get('bits_per_dim_upper_bound'))}</tr><tr><th>codes under the prior -log p(z*) "
                       f"(nats/example)</th>{_cell(b.get('prior_nll_nats'))}</tr><tr><th>pixels given the codes "
                       f"-log p(x|z*) (nats/example)</th>{_cell(b.get('reconstruction_nll_nats'))}</tr></table>")
        if r.reconstruction is not None:
            c = r.reconstruction
            out.append('<h3>Test reconstruction (VQ-VAE)</h3><table class="reconstruction">'
                       f"<tr><th>-log p(x|z*) (nats/example)</th>{_cell(c.get('nll_nats'))}</tr>"
                       f"<tr><th>codebook perplexity</th>{_cell(c.get('codebook_perplexity'))}</tr>"
                       f"<tr><th>share of codes used</th>{_cell(c.get('codebook_used'))}</tr></table>")
        out.append("<div><h3>Samples</h3>")
        if r.samples_png is not None:
            out.append(f'<img class="samples" alt="samples of {html.escape(r.name)}" src="{_data_uri(r.samples_png)}">')
        elif r.samples_text is not None:
            out.append(f'<pre class="samples">{html.escape(r.samples_text)}</pre>')
        else:
            out.append(f'<p class="missing">{MISSING}</p>')
        out.append("</div></div>")
        source = f" ({html.escape(r.config_source)})" if r.config_source else ""
        out.append(f"<h3>Configuration{source}</h3>")
        if r.config:
            out.append('<table class="config">' + "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v, -6)}</tr>"
                                                         for k, v in _shown_options(r.config, r.data_kind))
                       + "</table>")
        else:
            out.append(f'<p class="missing">{MISSING}</p>')
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def default_report_path(runs: list[str | Path]) -> Path:
    """``RUN/report.html`` for one run, ``report.html`` in the current directory for several."""
    return Path(runs[0]) / "report.html" if len(runs) == 1 else Path("report.html")


def write_report(runs: list[str | Path], out: str | Path | None = None, title: str | None = None, *,
                 overwrite: bool | None = None) -> Path:
    """Write the report of the run directories ``runs`` to ``out`` (default :func:`default_report_path`).

    Runs with the same folder name are told apart by their parent folder. Returns the path written.
    The file follows :mod:`chainrule.io.outputs`; an existing one is replaced with ``overwrite``
    (default: only the one-run default ``RUN/report.html``, the run's own file).
    """
    if not runs:
        raise InputError("give at least one run directory")
    paths = [Path(r) for r in runs]
    target = Path(out) if out is not None else default_report_path(paths)
    if overwrite is None:
        overwrite = out is None and len(paths) == 1
    check_output(target, force=overwrite, inputs=paths, option="--out")
    names = [p.resolve().name for p in paths]
    labels = [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    infos = [read_run(p, label) for p, label in zip(paths, labels)]
    page = render_html(infos, title)
    with output_file(target, force=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
