"""The report's figures, drawn with matplotlib and returned as SVG text.

matplotlib is imported here, inside the functions, never by `import cascade_kd`. Figures are
`matplotlib.figure.Figure` objects (no pyplot: no global figure state, no GUI backend); SVG text
is drawn as paths (no font files needed to view it) with a fixed hash salt and no date, so the
same data gives the same file.
"""

from __future__ import annotations

import io
import math

ROLE_STYLE = {  # marker, colour, label
    "teacher": ("*", "#7b3294", "teacher"),
    "assistant": ("o", "#1f78b4", "assistant"),
    "student": ("D", "#33a02c", "cascade student"),
    "direct": ("s", "#e66101", "direct"),
}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig) -> str:
    """The figure as standalone SVG text (no XML prolog, so it can also be inlined)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "cascade-kd", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def retention_heatmap(models: list[str], languages: list[str], values: list[list[float | None]],
                      title: str, worst: list[int | None] | None = None, fmt=lambda v: f"{100 * v:.0f}") -> str:
    """models x languages, colour = value (retention: score / teacher score, 1 = the teacher's);
    each model's worst cell is outlined. Cells without a value are grey."""
    import numpy as np
    from matplotlib.patches import Rectangle

    data = np.array([[v if _finite(v) else np.nan for v in row] for row in values], dtype=float)
    finite = data[np.isfinite(data)]
    low = min(0.5, float(finite.min())) if finite.size else 0.5
    high = max(1.0, float(finite.max())) if finite.size else 1.0
    width = min(30.0, max(6.0, 1.6 + 0.55 * len(languages)))
    fig = _figure(width, max(2.2, 1.3 + 0.42 * len(models)))
    ax = fig.subplots()
    import matplotlib

    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(len(languages)), labels=languages, rotation=60 if len(languages) > 12 else 0,
                  ha="right" if len(languages) > 12 else "center")
    ax.set_yticks(range(len(models)), labels=models)
    if len(models) * len(languages) <= 600:
        size = 8 if len(languages) <= 20 else 6
        for i in range(len(models)):
            for j in range(len(languages)):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, fmt(data[i, j]), ha="center", va="center", fontsize=size, color="black")
    for i, j in enumerate(worst or []):
        if j is not None:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.2))
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
    bar.ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1.0, decimals=0))
    ax.set_title(title, fontsize=10)
    return to_svg(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x lower is better, y higher is
    better), sorted by x: the size (or latency) / score trade-off curve."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def tradeoff(points: list[dict], xlabel: str, ylabel: str, title: str, log_x: bool = True, x_unit: str = "count") -> str:
    """Score against cost (size, latency): one marker per model (by role), labelled; the Pareto
    front as a dashed step line. `points`: dicts with name, role, x, y and optional y_err; `x_unit`
    "count" labels the axis 40k, 1.2M; anything else plainly."""
    fig = _figure(7.0, 4.4)
    ax = fig.subplots()
    shown = set()
    for p in points:
        marker, colour, label = ROLE_STYLE.get(p["role"], ("o", "#555555", p["role"]))
        ax.errorbar([p["x"]], [p["y"]], yerr=[p["y_err"]] if p.get("y_err") else None, fmt=marker, color=colour,
                    markersize=13 if marker == "*" else 8, capsize=3, label=None if label in shown else label,
                    markeredgecolor="black", markeredgewidth=0.6)
        shown.add(label)
        ax.annotate(p["name"], (p["x"], p["y"]), textcoords="offset points", xytext=(7, 5), fontsize=8)
    front = pareto_front([(p["x"], p["y"]) for p in points])
    if len(front) > 1:
        xs, ys = [points[i]["x"] for i in front], [points[i]["y"] for i in front]
        ax.step(xs, ys, where="post", linestyle="--", color="#444444", linewidth=1, label="Pareto front", zorder=0)
    if log_x and all(p["x"] > 0 for p in points):
        ax.set_xscale("log")
    from matplotlib.ticker import EngFormatter, FuncFormatter

    # plain labels (40k, 1.2M; 0.3, 2) on the major and minor ticks of narrow log ranges, not 4x10^-2
    formatter = EngFormatter(sep="") if x_unit == "count" else FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(formatter)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return to_svg(fig)


def differences(languages: list[str], means: list[float | None], title: str, ylabel: str,
                sds: list[float | None] | None = None, per_seed: list[list[float]] | None = None) -> str:
    """A difference per language (e.g. cascade minus direct, in points): bars, error bars of one
    standard deviation over seeds where given, each seed's value as a dot; the mean over languages
    as a line."""
    fig = _figure(min(30.0, max(6.0, 1.5 + 0.5 * len(languages))), 3.8)
    ax = fig.subplots()
    xs = list(range(len(languages)))
    values = [m if _finite(m) else 0.0 for m in means]
    colours = ["#33a02c" if v > 0 else "#e66101" for v in values]
    errors = [s if _finite(s) else 0.0 for s in (sds or [])] or None
    ax.bar(xs, values, color=colours, yerr=errors, capsize=3, edgecolor="black", linewidth=0.5)
    for x, seeds in zip(xs, per_seed or []):
        if len(seeds) > 1:
            ax.scatter([x] * len(seeds), seeds, s=12, color="black", zorder=3)
    finite = [m for m in means if _finite(m)]
    if finite:
        mean = sum(finite) / len(finite)
        ax.axhline(mean, color="#444444", linestyle="--", linewidth=1, label=f"mean over languages {mean:+.2f}")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(xs, labels=languages, rotation=60 if len(languages) > 12 else 0,
                  ha="right" if len(languages) > 12 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return to_svg(fig)


def training_curves(models: list[dict], score_label: str) -> str:
    """One panel per trained model: each loss part and the total against the step (log scale when
    all are positive), and the dev score on a second axis. `models`: dicts with name, curve (the
    monitor's points: step, loss, parts) and history (the loop's evaluations: step, dev)."""
    columns = 2 if len(models) > 1 else 1
    rows = math.ceil(len(models) / columns)
    fig = _figure(6.2 * columns, 3.3 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, model in zip(axes.flat, models):
        curve = model.get("curve") or []
        steps = [p["step"] for p in curve]
        series = {"total": [p["loss"] for p in curve]}
        for part in dict.fromkeys(k for p in curve for k in p.get("parts", {})):
            if len(curve[0].get("parts", {})) > 1:  # one part is the total itself
                series[part] = [p.get("parts", {}).get(part, math.nan) for p in curve]
        for name, ys in series.items():
            ax.plot(steps, ys, linewidth=1.8 if name == "total" else 1.1, color="black" if name == "total" else None,
                    label=f"loss: {name}")
        positive = all(y > 0 for ys in series.values() for y in ys if _finite(y))
        if positive and curve:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        dev = [(h["step"], h["dev"]) for h in model.get("history") or [] if _finite(h.get("dev"))]
        handles, labels = ax.get_legend_handles_labels()
        if dev:
            twin = ax.twinx()
            twin.plot([s for s, _ in dev], [100 * d for _, d in dev], "o-", color="#1f78b4", linewidth=1.2,
                      markersize=4, label=f"dev {score_label}")
            twin.set_ylabel(f"dev {score_label}", color="#1f78b4")
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="upper right")
        ax.set_title(model["name"], fontsize=10)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    return to_svg(fig)


def grouped_scores(models: list[str], means: list[float], sds: list[float | None], per_seed: list[list[float]],
                   roles: list[str], title: str, ylabel: str) -> str:
    """One bar per model (mean over seeds), error bars of one sd, each seed's value as a dot."""
    fig = _figure(min(24.0, max(6.0, 1.5 + 0.8 * len(models))), 3.8)
    ax = fig.subplots()
    xs = list(range(len(models)))
    colours = [ROLE_STYLE.get(r, ("o", "#888888", r))[1] for r in roles]
    ax.bar(xs, means, yerr=[s if _finite(s) else 0.0 for s in sds], color=colours, capsize=3, edgecolor="black",
           linewidth=0.5)
    for x, seeds in zip(xs, per_seed):
        ax.scatter([x] * len(seeds), seeds, s=12, color="black", zorder=3)
    low = min([v for s in per_seed for v in s] + means)
    ax.set_ylim(max(0.0, low - 5), None)
    ax.set_xticks(xs, labels=models, rotation=30 if len(models) > 5 else 0, ha="right" if len(models) > 5 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return to_svg(fig)
