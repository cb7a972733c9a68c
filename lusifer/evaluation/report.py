"""Reports of evaluation runs: a console table per run, a Markdown comparison table, a PNG bar chart."""

from __future__ import annotations

import os
from pathlib import Path

from lusifer.atomic import atomic_path
from lusifer.evaluation.runner import ENGLISH
from lusifer.extras import require

MISSING = "–"
LEGEND = (
    "Scores x100. **bitext xx**: MTEB BitextMining F1 (nearest English neighbour by cosine of each xx sentence); "
    "**STS xx**: Spearman correlation of cosine similarity with gold scores. **English** = STS en; "
    "**Bitext avg** = mean over non-English bitext languages; **STS avg** = mean over non-English STS languages."
)


def _fmt(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def languages_of(runs: list[dict], key: str) -> list[str]:
    """Languages having ``key`` (``bitext_f1`` / ``sts_spearman``) in any run; English first, then sorted."""
    langs = {lang for run in runs for lang, v in run["languages"].items() if key in v}
    return sorted(langs, key=lambda lang: (lang != ENGLISH, lang))


def console_table(run: dict) -> str:
    """A plain-text per-language table of one run (bitext accuracy and F1, STS Spearman)."""
    langs = sorted(run["languages"], key=lambda lang: (lang != ENGLISH, lang))
    rows = [("lang", "bitext acc", "bitext F1", "STS rho")]
    for lang in langs:
        v = run["languages"][lang]
        rows.append((lang, _fmt(v.get("bitext_accuracy")), _fmt(v.get("bitext_f1")), _fmt(v.get("sts_spearman"))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{run['name']}  [{run['model']['kind']}: {run['model']['path']}]"]
    for i, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    a = run["averages"]
    lines.append(
        f"English (STS en): {_fmt(a['english'])}   Bitext avg (non-en): {_fmt(a['bitext'])}   "
        f"STS avg (non-en): {_fmt(a['sts'])}   [{run['timings']['eval_seconds']:.1f}s]"
    )
    return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown_table(runs: list[dict], details: bool = True) -> str:
    """One Markdown table comparing runs: averages, then one column per language and task type.

    Args:
        runs: Runs (from one or several results files), one table row each, in order.
        details: Append a collapsible per-task table with bitext accuracy, F1 and STS Spearman.
    """
    bitext_langs = languages_of(runs, "bitext_f1")
    sts_langs = languages_of(runs, "sts_spearman")
    header = ["model", "English", "Bitext avg", "STS avg"]
    header += [f"bitext {lang}" for lang in bitext_langs] + [f"STS {lang}" for lang in sts_langs]
    lines = [_md_row(header), "|" + "---|" + "---:|" * (len(header) - 1)]
    for run in runs:
        a = run["averages"]
        cells = [run["name"], _fmt(a["english"]), _fmt(a["bitext"]), _fmt(a["sts"])]
        cells += [_fmt(run["languages"].get(lang, {}).get("bitext_f1")) for lang in bitext_langs]
        cells += [_fmt(run["languages"].get(lang, {}).get("sts_spearman")) for lang in sts_langs]
        lines.append(_md_row(cells))
    lines += ["", LEGEND]
    limits = {run["settings"].get("limit") for run in runs}
    if limits != {None}:
        lines += ["", f"Quick run: at most {', '.join(str(x) for x in sorted(limits, key=str))} rows per task."]
    if details:
        lines += ["", "<details><summary>Per task</summary>", ""]
        lines.append(_md_row(["model", "task", "type", "lang", "rows", "accuracy", "F1", "Spearman"]))
        lines.append("|---|---|---|---|---:|---:|---:|---:|")
        for run in runs:
            for t in run["tasks"]:
                s = t["scores"]
                lines.append(_md_row([run["name"], t["name"], t["type"], t["lang"], str(t["rows"]),
                                      _fmt(s.get("accuracy")), _fmt(s.get("f1")), _fmt(s.get("spearman"))]))
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _bar_panel(ax, runs: list[dict], langs: list[str], key: str, avg_key: str, avg_label: str, title: str) -> None:
    import numpy as np

    groups = langs + [avg_label]
    x = np.arange(len(groups), dtype=float)
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        values = [run["languages"].get(lang, {}).get(key) for lang in langs] + [run["averages"].get(avg_key)]
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=run["name"])
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_title(title)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def write_chart(runs: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Grouped bars per language, one series per run: bitext F1 on top, STS Spearman below (PNG, Agg).

    The file is written beside ``path`` and moved into place.
    """
    require("matplotlib", extra="eval", purpose="draw the chart")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    bitext_langs = [lang for lang in languages_of(runs, "bitext_f1") if lang != ENGLISH]
    sts_langs = languages_of(runs, "sts_spearman")
    if bitext_langs:
        panels.append((bitext_langs, "bitext_f1", "bitext", "avg", "Bitext mining F1 (x100), xx -> en"))
    if sts_langs:
        panels.append((sts_langs, "sts_spearman", "sts", "avg\n(non-en)", "STS Spearman (x100)"))
    if not panels:
        raise ValueError("nothing to chart: the runs hold no bitext or STS scores")
    widest = max(len(p[0]) + 1 for p in panels)
    width = min(max(6.0, 0.22 * widest * max(len(runs), 2) + 2.5), 30.0)
    fig = Figure(figsize=(width, 3.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (langs, key, avg_key, avg_label, panel_title) in zip(axes, panels):
        _bar_panel(ax, runs, langs, key, avg_key, avg_label, panel_title)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)
